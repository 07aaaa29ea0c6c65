//! PNG, WebP and BMP (the formats that are not JPEG) through the `image` crate's decoders: header first (the
//! pixel limit is checked before any pixel buffer exists), then pixels.

use std::io::Cursor;
use std::path::Path;

use image::codecs::{bmp::BmpDecoder, jpeg::JpegDecoder, png::PngDecoder, webp::WebPDecoder};
use image::{DynamicImage, ImageDecoder, ImageError, ImageResult, Limits};

use super::pixels::{flatten, orient};
use super::{check_pixels, corrupt, unsupported, upright_size, DecodeOptions, Decoded};
use crate::error::{Error, Result};
use crate::probe::{Format, ImageInfo};

/// Memory the `image` decoders may use beside the output (ancillary chunks, line buffers).
const SIDE_ALLOC: u64 = 256 << 20;

/// Read the header of a PNG, WebP or BMP.
pub(super) fn probe(format: Format, bytes: &[u8], path: &Path, opts: &DecodeOptions) -> Result<ImageInfo> {
    let (decoder, orientation) = open(format, bytes, path, opts)?;
    let (w, h) = decoder.dimensions();
    let (width, height) = upright_size(w, h, orientation);
    Ok(ImageInfo {
        format,
        width,
        height,
        orientation,
        has_alpha: decoder.color_type().has_alpha(),
    })
}

/// Decode a PNG, WebP or BMP at full size to upright RGB8.
pub(super) fn decode(format: Format, bytes: &[u8], path: &Path, opts: &DecodeOptions) -> Result<Decoded> {
    let (decoder, orientation) = open(format, bytes, path, opts)?;
    let (w, h) = decoder.dimensions();
    let (source_width, source_height) = upright_size(w, h, orientation);
    let image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, e))?;
    let rgb = flatten(image, opts.background);
    Ok(Decoded {
        image: orient(rgb, orientation),
        source_width,
        source_height,
    })
}

/// Open a decoder, check the pixel limit, and read the EXIF orientation
/// (an unreadable EXIF block counts as upright rather than failing the picture).
fn open<'a>(
    format: Format,
    bytes: &'a [u8],
    path: &Path,
    opts: &DecodeOptions,
) -> Result<(Box<dyn ImageDecoder + 'a>, u8)> {
    if let Some((w, h)) = png_ihdr_size(format, bytes) {
        check_pixels(path, w, h, opts)?;
    }
    let mut decoder = new_decoder(format, bytes, opts).map_err(|e| image_error(path, e))?;
    let (w, h) = decoder.dimensions();
    check_pixels(path, w, h, opts)?;
    let orientation = decoder.orientation().map_or(1, |o| o.to_exif());
    Ok((decoder, orientation))
}

/// A PNG's size straight from its IHDR (always the first chunk, at byte 8:
/// length, "IHDR", big-endian width and height), so that a bomb is refused
/// even when the file stops right after its header.
fn png_ihdr_size(format: Format, bytes: &[u8]) -> Option<(u32, u32)> {
    let ihdr = bytes.get(12..24).filter(|_| format == Format::Png)?;
    if &ihdr[..4] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&ihdr[4..8]), be(&ihdr[8..12])))
}

fn new_decoder<'a>(
    format: Format,
    bytes: &'a [u8],
    opts: &DecodeOptions,
) -> ImageResult<Box<dyn ImageDecoder + 'a>> {
    let reader = Cursor::new(bytes);
    let mut limits = Limits::no_limits();
    limits.max_alloc = Some(opts.max_pixels.saturating_mul(8).saturating_add(SIDE_ALLOC));
    Ok(match format {
        Format::Png => Box::new(PngDecoder::with_limits(reader, limits)?),
        Format::WebP => Box::new(WebPDecoder::new(reader)?),
        Format::Bmp => Box::new(BmpDecoder::new(reader)?),
        // JPEGs are decoded by libjpeg-turbo (`jpeg.rs`); this keeps the match total.
        Format::Jpeg => Box::new(JpegDecoder::new(reader)?),
    })
}

fn image_error(path: &Path, e: ImageError) -> Error {
    match e {
        ImageError::Unsupported(u) => unsupported(path, u.to_string()),
        ImageError::Limits(l) => corrupt(path, format!("needs more memory than allowed: {l}")),
        other => corrupt(path, other.to_string()),
    }
}
