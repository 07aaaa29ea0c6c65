//! Decode JPEG, PNG (8/16-bit, gray, palette, alpha), WebP and BMP files to
//! upright RGB8, with EXIF orientation applied, alpha composited on a
//! background, and a pixel limit against decompression bombs. JPEGs can be
//! decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg-turbo's scaled
//! IDCT) when the caller only needs a smaller picture.

use std::path::Path;

use image::RgbImage;

use crate::error::Result;

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
    let _ = (path, opts, min_size);
    todo!("decode_file_scaled")
}

/// Like [`decode_file_scaled`] on bytes already in memory; `path` only names
/// the source in errors.
pub fn decode_bytes_scaled(
    bytes: &[u8],
    path: &Path,
    opts: &DecodeOptions,
    min_size: &dyn Fn(u32, u32) -> (u32, u32),
) -> Result<Decoded> {
    let _ = (bytes, path, opts, min_size);
    todo!("decode_bytes_scaled")
}
