//! Decode JPEG, PNG (8/16-bit, gray, palette, alpha), WebP and BMP files to
//! upright RGB8, with EXIF orientation applied, alpha composited on a
//! background, and a pixel limit against decompression bombs. JPEGs can be
//! decoded at 1/8, 1/4, 3/8, ... 7/8 scale in the DCT domain (libjpeg-turbo's
//! scaled IDCT) when the caller only needs a smaller picture.
//!
//! The format is told from the magic bytes ([`crate::format::detect_format`]),
//! never from the file extension. JPEGs go through libjpeg-turbo
//! ([`jpeg`]); PNG, WebP and BMP through the `image` crate ([`raster`]).

#[cfg(test)]
mod error_tests;
mod jpeg;
mod pixels;
mod raster;
#[cfg(test)]
mod scale_tests;
#[cfg(test)]
pub(crate) mod testimg;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::path::Path;

use image::RgbImage;

use crate::error::{Error, Result};
use crate::format::{detect_format, Format, ImageInfo};

/// Pillow's `Image.MAX_IMAGE_PIXELS` (about 178 Mpx), our default bomb guard.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// How to decode.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeOptions {
    /// Refuse images whose header claims more pixels than this.
    pub max_pixels: u64,
    /// Colour that transparent pixels are composited onto.
    pub background: [u8; 3],
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
            background: [255, 255, 255],
        }
    }
}

/// Largest decoder buffer [`recycle`] keeps per thread (48 MiB: a 16 Mpx
/// picture); a bigger one goes back to the allocator rather than stay
/// pinned in every worker thread.
pub const MAX_RECYCLED_BYTES: usize = 48 << 20;

thread_local! {
    /// A decoded picture's buffer handed back by [`recycle`], for the next
    /// JPEG decoded on this thread.
    static RECYCLED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Hand a decoded picture's pixel buffer (`Decoded::image.into_raw()`) back
/// for the next JPEG decoded on this thread.
///
/// A batch decodes one picture after another on each worker thread, and a
/// fresh multi-megabyte buffer per picture costs a `memset` of all of it
/// (page faults too when the allocator maps it anew): at web sizes a few
/// percent of the whole batch (benches/data_feed.py). Reusing the last one
/// only zeroes what it has to grow by; every byte is overwritten by libjpeg.
pub fn recycle(buf: Vec<u8>) {
    if buf.capacity() <= MAX_RECYCLED_BYTES {
        RECYCLED.with(|cell| {
            if buf.capacity() > cell.borrow().capacity() {
                cell.replace(buf);
            }
        });
    }
}

/// A buffer of `len` bytes for a decoder to fill completely: the recycled
/// one when there is one (stale contents), else a fresh zeroed one.
pub(crate) fn take_buffer(len: usize) -> Vec<u8> {
    let mut buf = RECYCLED.with(|cell| cell.take());
    buf.resize(len, 0);
    buf
}

/// A decoded, upright RGB8 picture and the upright size of the full source.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// The pixels; smaller than the source when DCT scaling was used.
    pub image: RgbImage,
    /// Upright width of the full-size source (EXIF orientation applied).
    pub source_width: u32,
    /// Upright height of the full-size source.
    pub source_height: u32,
}

/// Decode a whole file at full size.
pub fn decode_file(path: &Path, opts: &DecodeOptions) -> Result<Decoded> {
    decode_file_scaled(path, opts, &|w, h| (w, h))
}

/// Decode a file, letting the decoder reduce the picture while the upright
/// result stays at least `min_size(source_width, source_height)`.
pub fn decode_file_scaled(
    path: &Path,
    opts: &DecodeOptions,
    min_size: &dyn Fn(u32, u32) -> (u32, u32),
) -> Result<Decoded> {
    let bytes = read_file(path)?;
    decode_bytes_scaled(&bytes, path, opts, min_size)
}

/// Like [`decode_file_scaled`] on bytes already in memory; `path` only names
/// the source in errors.
pub fn decode_bytes_scaled(
    bytes: &[u8],
    path: &Path,
    opts: &DecodeOptions,
    min_size: &dyn Fn(u32, u32) -> (u32, u32),
) -> Result<Decoded> {
    match detect_format(bytes, path)? {
        Format::Jpeg => jpeg::decode(bytes, path, opts, min_size),
        format => raster::decode(format, bytes, path, opts),
    }
}

/// Decode bytes already in memory at full size; `path` only names the source in errors.
pub fn decode_bytes(bytes: &[u8], path: &Path, opts: &DecodeOptions) -> Result<Decoded> {
    decode_bytes_scaled(bytes, path, opts, &|w, h| (w, h))
}

/// Read the header of bytes whose format is already known (used by `probe`).
pub(crate) fn probe_format(
    format: Format,
    bytes: &[u8],
    path: &Path,
    opts: &DecodeOptions,
) -> Result<ImageInfo> {
    match format {
        Format::Jpeg => jpeg::probe(bytes, path, opts),
        format => raster::probe(format, bytes, path, opts),
    }
}

/// Read a whole file, mapping failures to [`Error::Io`] and zero bytes to [`Error::Empty`].
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(Error::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// The decompression-bomb guard: refuse a header claiming more than `opts.max_pixels`.
pub(crate) fn check_pixels(path: &Path, width: u32, height: u32, opts: &DecodeOptions) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > opts.max_pixels {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            pixels,
            limit: opts.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(corrupt(
            path,
            format!("header gives a zero size {width}x{height}"),
        ));
    }
    Ok(())
}

/// Whether EXIF orientation `o` (1..8) turns the picture a quarter turn (5..8 swap the sides).
pub(crate) fn swaps_sides(orientation: u8) -> bool {
    (5..=8).contains(&orientation)
}

/// The upright size of a stored `width` x `height` picture with EXIF `orientation`.
pub(crate) fn upright_size(width: u32, height: u32, orientation: u8) -> (u32, u32) {
    if swaps_sides(orientation) {
        (height, width)
    } else {
        (width, height)
    }
}

pub(crate) fn corrupt(path: &Path, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

pub(crate) fn unsupported(path: &Path, detail: impl Into<String>) -> Error {
    Error::Unsupported {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}
