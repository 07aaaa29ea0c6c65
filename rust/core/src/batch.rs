//! Batches for training: decode (with DCT scaling where it helps), cover-resize
//! into the bucket, crop, augment and normalise many pictures in parallel,
//! straight into one caller-owned buffer.

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

/// Decode, resize, crop and augment one picture into a `bucket`-sized image.
pub fn load_one(
    path: &Path,
    bucket: (u32, u32),
    draw: &AugmentDraw,
    opts: &DecodeOptions,
) -> Result<RgbImage> {
    let decoded = decode::decode_file_scaled(path, opts, &|w, h| cover_size(bucket, w, h))?;
    let img = &decoded.image;
    let resized = cover_size(bucket, img.width(), img.height());
    let crop = if draw.crop == (0.5, 0.5) {
        Crop::Center
    } else {
        Crop::At(draw.crop.0, draw.crop.1)
    };
    let mut out = resize::resize_cover_crop(img, resized, bucket, crop)?;
    augment::apply(&mut out, draw);
    Ok(out)
}

/// Map 0..=255 to [-1, 1] exactly as `v / 127.5 - 1`.
fn normalise_lut() -> &'static [f32; 256] {
    static LUT: OnceLock<[f32; 256]> = OnceLock::new();
    LUT.get_or_init(|| std::array::from_fn(|v| v as f32 / 127.5 - 1.0))
}

/// Write an HWC RGB8 picture into a CHW float slice of the same size.
fn write_chw_f32(img: &RgbImage, out: &mut [f32]) {
    let lut = normalise_lut();
    let plane = (img.width() * img.height()) as usize;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = lut[px[0] as usize];
        g[i] = lut[px[1] as usize];
        b[i] = lut[px[2] as usize];
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
fn pool(n: usize) -> Result<Arc<rayon::ThreadPool>> {
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
        Some(n) => Ok(pool(n)?.install(f)),
    }
}

/// Load every picture of `paths` into its slot of `out` with `write`, in parallel.
fn fill<T: Send>(
    paths: &[PathBuf],
    width: u32,
    height: u32,
    opts: &BatchOptions,
    out: &mut [T],
    write: impl Fn(&RgbImage, &mut [T]) + Sync,
) -> Result<()> {
    check_batch(paths, width, height, out.len(), 3)?;
    let per = (3 * width * height) as usize;
    in_pool(opts.threads, || {
        out.par_chunks_mut(per)
            .zip(paths.par_iter())
            .enumerate()
            .try_for_each(|(i, (slot, path))| {
                let img = load_one(path, (width, height), &draw_for(opts, i), &opts.decode)?;
                write(&img, slot);
                Ok(())
            })
    })?
}

/// Fill `out` (float32, [B, 3, H, W], values in [-1, 1]) from `paths`.
pub fn load_batch_f32(
    paths: &[PathBuf],
    width: u32,
    height: u32,
    opts: &BatchOptions,
    out: &mut [f32],
) -> Result<()> {
    fill(paths, width, height, opts, out, write_chw_f32)
}

/// Fill `out` (uint8, [B, H, W, 3]) from `paths`.
pub fn load_batch_u8(
    paths: &[PathBuf],
    width: u32,
    height: u32,
    opts: &BatchOptions,
    out: &mut [u8],
) -> Result<()> {
    fill(paths, width, height, opts, out, |img, slot| {
        slot.copy_from_slice(img.as_raw())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_maps_ends_to_minus_one_and_one() {
        let lut = normalise_lut();
        assert_eq!(lut[0], -1.0);
        assert_eq!(lut[255], 1.0);
    }

    #[test]
    fn wrong_buffer_size_is_an_error() {
        let paths = vec![PathBuf::from("a.png")];
        let mut out = vec![0f32; 5];
        let err = load_batch_f32(&paths, 4, 4, &BatchOptions::default(), &mut out).unwrap_err();
        assert!(err.to_string().contains("needs 48"), "{err}");
    }

    fn write_png(dir: &Path, name: &str, w: u32, h: u32, seed: u32) -> PathBuf {
        let img = RgbImage::from_fn(w, h, |x, y| {
            let v = x
                .wrapping_mul(31)
                .wrapping_add(y.wrapping_mul(17))
                .wrapping_add(seed);
            image::Rgb([(v % 251) as u8, (v / 3 % 241) as u8, (v / 7 % 239) as u8])
        });
        let path = dir.join(name);
        img.save(&path).unwrap();
        path
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Any source size into any bucket: the right amount of data, flips mirror
        /// exactly, and the same draw gives the same bytes.
        #[test]
        fn any_size_into_any_bucket(sw in 1u32..200, sh in 1u32..200, bw in 1u32..96, bh in 1u32..96, seed in 0u32..1000) {
            let dir = std::env::temp_dir().join(format!("tsuika-batch-{}-{seed}-{sw}-{sh}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let paths = vec![write_png(&dir, "a.png", sw, sh, seed)];
            let n = (bw * bh * 3) as usize;
            let mut plain = vec![0u8; n];
            let mut flipped = vec![0u8; n];
            load_batch_u8(&paths, bw, bh, &BatchOptions::default(), &mut plain).unwrap();
            let opts = BatchOptions { flip: Flip::All, ..Default::default() };
            load_batch_u8(&paths, bw, bh, &opts, &mut flipped).unwrap();
            for row in 0..bh as usize {
                for x in 0..bw as usize {
                    let a = (row * bw as usize + x) * 3;
                    let b = (row * bw as usize + (bw as usize - 1 - x)) * 3;
                    proptest::prop_assert_eq!(&plain[a..a + 3], &flipped[b..b + 3]);
                }
            }
            let mut again = vec![0f32; n];
            let aug = BatchOptions { flip: Flip::Random, random_crop: true, rotation: 15.0, color_jitter: 0.4, seed: seed as u64, ..Default::default() };
            load_batch_f32(&paths, bw, bh, &aug, &mut again).unwrap();
            let mut twice = vec![0f32; n];
            load_batch_f32(&paths, bw, bh, &aug, &mut twice).unwrap();
            proptest::prop_assert_eq!(&again, &twice);
            proptest::prop_assert!(again.iter().all(|v| (-1.0..=1.0).contains(v)));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
