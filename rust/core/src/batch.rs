//! Batches for training: decode (with DCT scaling where it helps), cover-resize
//! into the bucket, crop, augment and normalise many pictures in parallel,
//! straight into one caller-owned buffer (the binding takes it from
//! [`pool`], so batches reuse pages instead of faulting in fresh ones), and
//! report per picture its original size and crop offset ([`Placement`]).
//!
//! Per picture and worker thread, one reused bucket-sized scratch picture
//! takes the resize; the writer normalises it into the batch and mirrors it
//! on the way when flipped, so the pixels are touched once after the resize.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use image::RgbImage;
use rayon::prelude::*;

use crate::augment::{self, AugmentConfig, AugmentDraw};
use crate::bucket::cover_size;
use crate::decode::{self, DecodeOptions};
use crate::error::{Error, Result};
use crate::resize::{self, Crop};

pub mod pool;

/// How the horizontal flip is chosen for each picture of a batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Flip {
    /// Never flip.
    #[default]
    Off,
    /// Flip every picture (e.g. to cache the flipped latent as well).
    All,
    /// Flip with probability 1/2, drawn from (seed, epoch, index).
    Random,
    /// One flag per picture.
    PerImage(Vec<bool>),
}

/// Everything that shapes one batch besides its paths and size.
#[derive(Clone, Debug, Default)]
pub struct BatchOptions {
    pub decode: DecodeOptions,
    pub flip: Flip,
    /// Random crop position (drawn per picture) instead of the centre.
    pub random_crop: bool,
    /// Rotation range in degrees (0 = off).
    pub rotation: f32,
    /// Colour jitter strength in [0, 1] (0 = off).
    pub color_jitter: f32,
    pub seed: u64,
    pub epoch: u64,
    /// Keys of the augmentation draws; defaults to 0..B.
    pub indices: Option<Vec<u64>>,
    /// Worker threads; `None` uses rayon's global pool (one per core).
    pub threads: Option<usize>,
}

/// The augmentation draw for picture `i` of a batch.
fn draw_for(opts: &BatchOptions, i: usize) -> AugmentDraw {
    let index = opts
        .indices
        .as_ref()
        .map_or(i as u64, |v| v.get(i).copied().unwrap_or(i as u64));
    let cfg = AugmentConfig {
        flip: matches!(opts.flip, Flip::Random),
        rotation: opts.rotation,
        color_jitter: opts.color_jitter,
        random_crop: opts.random_crop,
    };
    let mut d = augment::draw(&cfg, opts.seed, opts.epoch, index);
    d.flip = match &opts.flip {
        Flip::Off => false,
        Flip::All => true,
        Flip::Random => d.flip,
        Flip::PerImage(flags) => flags.get(i).copied().unwrap_or(false),
    };
    d
}

/// Where one picture of a batch came from and where its bucket window fell:
/// what SDXL's `add_time_ids` take as "original size" and "crop top-left".
///
/// The convention is that of diffusers' `train_text_to_image_sdxl.py` and
/// kohya-ss/sd-scripts (`BaseDataset.__getitem__`): the crop offset is in the
/// pixels of the picture resized to cover the bucket, and a flipped picture
/// reports the window as the flipped picture shows it (kohya's
/// `target_size - crop_right`; diffusers flips before it crops).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Upright (EXIF applied) size of the source file, (width, height),
    /// before any DCT scaling or resizing.
    pub original: (u32, u32),
    /// The cover size the picture was resized to, (width, height).
    pub resized: (u32, u32),
    /// Top-left corner of the bucket window in the resized picture,
    /// (left, top), mirrored when the picture was flipped.
    pub crop_left_top: (u32, u32),
}

impl Placement {
    /// Where `bucket` falls in a source of `original` size with `crop`,
    /// mirrored when `flipped`. The cover size follows kohya's rounding
    /// ([`cover_size`]) on the full source size, as the resize does.
    pub fn new(original: (u32, u32), bucket: (u32, u32), crop: Crop, flipped: bool) -> Placement {
        let resized = cover_size(bucket, original.0, original.1);
        let free = (resized.0 - bucket.0, resized.1 - bucket.1);
        let (left, top) = crop.offsets(free);
        let left = if flipped { free.0 - left } else { left };
        Placement {
            original,
            resized,
            crop_left_top: (left, top),
        }
    }

    /// `(original_h, original_w, crop_top, crop_left)`: one row of the info
    /// array `load_batch(..., with_info=True)` returns (SDXL's order).
    pub fn row(&self) -> [i64; 4] {
        [
            self.original.1.into(),
            self.original.0.into(),
            self.crop_left_top.1.into(),
            self.crop_left_top.0.into(),
        ]
    }
}

/// The crop position a draw asks for.
fn crop_of(draw: &AugmentDraw) -> Crop {
    if draw.crop == (0.5, 0.5) {
        Crop::Center
    } else {
        Crop::At(draw.crop.0, draw.crop.1)
    }
}

thread_local! {
    /// One bucket-sized RGB8 picture per worker thread, reused across
    /// pictures and batches (no allocation or zeroing per picture).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on this thread's scratch picture, sized to `bucket` (stale contents).
fn with_scratch<R>(bucket: (u32, u32), f: impl FnOnce(&mut RgbImage) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.take();
        buf.resize(bucket.0 as usize * bucket.1 as usize * 3, 0);
        let mut img = RgbImage::from_raw(bucket.0, bucket.1, buf).expect("buffer sized to the bucket");
        let result = f(&mut img);
        cell.replace(img.into_raw());
        result
    })
}

/// Decode, resize and crop one picture into `out` (bucket-sized), apply its
/// rotation and colour jitter, and say where the crop fell and whether the
/// picture still has to be mirrored.
///
/// A flip with no rotation after it is left to the caller, whose writer
/// reads the rows backwards anyway; colour jitter commutes with it exactly
/// (per-pixel maps and an integer mean). The cover size comes from the
/// source's full size (kohya's rule), also when the JPEG was decoded smaller
/// in the DCT domain: the resize maps the window back into whatever the
/// decoder gave.
fn load_into(
    path: &Path,
    bucket: (u32, u32),
    draw: &AugmentDraw,
    opts: &DecodeOptions,
    out: &mut RgbImage,
) -> Result<(Placement, bool)> {
    let decoded = decode::decode_file_scaled(path, opts, &|w, h| cover_size(bucket, w, h))?;
    let placed = place_into(&decoded, bucket, draw, out);
    decode::recycle(decoded.image.into_raw());
    placed
}

/// The resize, crop and augmentation half of [`load_into`], on a decoded picture.
fn place_into(
    decoded: &decode::Decoded,
    bucket: (u32, u32),
    draw: &AugmentDraw,
    out: &mut RgbImage,
) -> Result<(Placement, bool)> {
    let original = (decoded.source_width, decoded.source_height);
    let crop = crop_of(draw);
    let placement = Placement::new(original, bucket, crop, draw.flip);
    resize::resize_cover_crop_into(&decoded.image, placement.resized, bucket, crop, out)?;
    if draw.angle != 0.0 && draw.angle.is_finite() {
        augment::apply(out, draw);
        return Ok((placement, false));
    }
    augment::color_jitter(out, draw);
    Ok((placement, draw.flip))
}

/// Decode, resize, crop and augment one picture into a `bucket`-sized image,
/// and say where the crop fell (see [`Placement`]).
pub fn load_one(
    path: &Path,
    bucket: (u32, u32),
    draw: &AugmentDraw,
    opts: &DecodeOptions,
) -> Result<(RgbImage, Placement)> {
    let mut img = RgbImage::new(bucket.0, bucket.1);
    let (placement, mirror) = load_into(path, bucket, draw, opts, &mut img)?;
    if mirror {
        augment::flip_horizontal(&mut img);
    }
    Ok((img, placement))
}

/// [`load_one`] on bytes already in memory; `path` only names the source in
/// errors. The fuzz harness (`fuzz/`) drives the whole pipeline through this.
pub fn load_one_bytes(
    bytes: &[u8],
    path: &Path,
    bucket: (u32, u32),
    draw: &AugmentDraw,
    opts: &DecodeOptions,
) -> Result<(RgbImage, Placement)> {
    let decoded = decode::decode_bytes_scaled(bytes, path, opts, &|w, h| cover_size(bucket, w, h))?;
    let mut img = RgbImage::new(bucket.0, bucket.1);
    let (placement, mirror) = place_into(&decoded, bucket, draw, &mut img)?;
    if mirror {
        augment::flip_horizontal(&mut img);
    }
    Ok((img, placement))
}

/// Map 0..=255 to [-1, 1] as `v / 127.5 - 1` (a true division: multiplying
/// by `1 / 127.5` differs in the last bit for 111 of the 256 values).
#[inline(always)]
fn normalise(v: u8) -> f32 {
    f32::from(v) / 127.5 - 1.0
}

/// Pixels per step of the float writer: fixed-size blocks that the compiler
/// turns into SIMD (de-interleave, convert, divide), where the per-pixel
/// table lookup it replaced stayed scalar (about 1.4x faster on a 576x448
/// picture, same bits).
const BLOCK: usize = 16;

/// Normalise one block of `BLOCK` pixels into the three plane rows,
/// reading the pixels backwards when `MIRROR`.
#[inline(always)]
fn write_block<const MIRROR: bool>(
    src: &[u8; 3 * BLOCK],
    r: &mut [f32; BLOCK],
    g: &mut [f32; BLOCK],
    b: &mut [f32; BLOCK],
) {
    for i in 0..BLOCK {
        let j = if MIRROR { BLOCK - 1 - i } else { i };
        r[i] = normalise(src[3 * j]);
        g[i] = normalise(src[3 * j + 1]);
        b[i] = normalise(src[3 * j + 2]);
    }
}

/// Normalise one row of RGB8 pixels (`src`, `3 * w` bytes) into its three
/// plane rows (`w` floats each), mirrored left-right when `MIRROR`.
fn write_row_f32<const MIRROR: bool>(src: &[u8], (r, g, b): (&mut [f32], &mut [f32], &mut [f32])) {
    let w = r.len();
    let (src_blocks, src_rest) = if MIRROR {
        let (rest, blocks) = src.as_rchunks::<{ 3 * BLOCK }>();
        (blocks, rest)
    } else {
        src.as_chunks::<{ 3 * BLOCK }>()
    };
    let (rb, _) = r.as_chunks_mut::<BLOCK>();
    let (gb, _) = g.as_chunks_mut::<BLOCK>();
    let (bb, _) = b.as_chunks_mut::<BLOCK>();
    let planes = rb.iter_mut().zip(gb.iter_mut()).zip(bb.iter_mut());
    if MIRROR {
        for (s, ((r, g), b)) in src_blocks.iter().rev().zip(planes) {
            write_block::<true>(s, r, g, b);
        }
    } else {
        for (s, ((r, g), b)) in src_blocks.iter().zip(planes) {
            write_block::<false>(s, r, g, b);
        }
    }
    // The last w % BLOCK outputs: the start of the row when mirrored, its end otherwise.
    let done = w - src_rest.len() / 3;
    let (rest, _) = src_rest.as_chunks::<3>();
    for (k, px) in rest.iter().enumerate() {
        let x = if MIRROR { w - 1 - k } else { done + k };
        r[x] = normalise(px[0]);
        g[x] = normalise(px[1]);
        b[x] = normalise(px[2]);
    }
}

/// Write an HWC RGB8 picture into a CHW float slice of the same size,
/// mirrored left-right when `mirror`.
fn write_chw_f32(img: &RgbImage, mirror: bool, out: &mut [f32]) {
    let w = img.width() as usize;
    if w == 0 {
        return;
    }
    let plane = w * img.height() as usize;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let planes = r
        .chunks_exact_mut(w)
        .zip(g.chunks_exact_mut(w))
        .zip(b.chunks_exact_mut(w));
    for (src, ((r, g), b)) in img.as_raw().chunks_exact(3 * w).zip(planes) {
        if mirror {
            write_row_f32::<true>(src, (r, g, b));
        } else {
            write_row_f32::<false>(src, (r, g, b));
        }
    }
}

/// Copy an HWC RGB8 picture into a slice of the same size, mirrored
/// left-right when `mirror`.
fn write_hwc_u8(img: &RgbImage, mirror: bool, out: &mut [u8]) {
    let row = img.width() as usize * 3;
    if !mirror || row == 0 {
        out.copy_from_slice(img.as_raw());
        return;
    }
    for (src, dst) in img.as_raw().chunks_exact(row).zip(out.chunks_exact_mut(row)) {
        let (src, _) = src.as_chunks::<3>();
        let (dst, _) = dst.as_chunks_mut::<3>();
        for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
            *d = *s;
        }
    }
}

fn check_batch(paths: &[PathBuf], width: u32, height: u32, out_len: usize, per_pixel: usize) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidArgument(format!(
            "batch size {width}x{height} must be positive"
        )));
    }
    let need = paths.len() * (width * height) as usize * per_pixel;
    if out_len != need {
        return Err(Error::InvalidArgument(format!(
            "output buffer holds {out_len} values, the batch needs {need}"
        )));
    }
    Ok(())
}

/// A rayon pool with `n` threads, built once per size and reused.
fn thread_pool(n: usize) -> Result<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&n) {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("tsuika-data-{i}"))
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot start {n} threads: {e}")))?;
    let p = Arc::new(p);
    pools.insert(n, p.clone());
    Ok(p)
}

/// Run `f` on the pool `threads` asks for (rayon's global pool for `None`).
pub fn in_pool<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match threads {
        None => Ok(f()),
        Some(0) => Err(Error::InvalidArgument("threads must be at least 1".into())),
        Some(n) => Ok(thread_pool(n)?.install(f)),
    }
}

/// Load every picture of `paths` into its slot of `out` with `write`, in
/// parallel; one [`Placement`] per picture, in order.
fn fill<T: Send>(
    paths: &[PathBuf],
    width: u32,
    height: u32,
    opts: &BatchOptions,
    out: &mut [T],
    write: impl Fn(&RgbImage, bool, &mut [T]) + Sync,
) -> Result<Vec<Placement>> {
    check_batch(paths, width, height, out.len(), 3)?;
    let bucket = (width, height);
    let per = (3 * width * height) as usize;
    in_pool(opts.threads, || {
        out.par_chunks_mut(per)
            .zip(paths.par_iter())
            .enumerate()
            .map(|(i, (slot, path))| {
                with_scratch(bucket, |img| {
                    let (placement, mirror) = load_into(path, bucket, &draw_for(opts, i), &opts.decode, img)?;
                    write(img, mirror, slot);
                    Ok(placement)
                })
            })
            .collect()
    })?
}

/// Fill `out` (float32, [B, 3, H, W], values in [-1, 1]) from `paths`.
pub fn load_batch_f32(
    paths: &[PathBuf],
    width: u32,
    height: u32,
    opts: &BatchOptions,
    out: &mut [f32],
) -> Result<Vec<Placement>> {
    fill(paths, width, height, opts, out, write_chw_f32)
}

/// Fill `out` (uint8, [B, H, W, 3]) from `paths`.
pub fn load_batch_u8(
    paths: &[PathBuf],
    width: u32,
    height: u32,
    opts: &BatchOptions,
    out: &mut [u8],
) -> Result<Vec<Placement>> {
    fill(paths, width, height, opts, out, write_hwc_u8)
}

#[cfg(test)]
mod tests;
