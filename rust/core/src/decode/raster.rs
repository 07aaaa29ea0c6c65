//! PNG, WebP and BMP (the formats that are not JPEG) through the `image` crate's decoders: header first (the
//! pixel limit is checked before any pixel buffer exists), then pixels.

use std::io::Cursor;
use std::path::Path;

use image::codecs::{bmp::BmpDecoder, jpeg::JpegDecoder, png::PngDecoder, webp::WebPDecoder};
use image::{DynamicImage, ImageDecoder, ImageError, ImageResult, Limits};

use super::pixels::{flatten, orient};
use super::{check_pixels, corrupt, unsupported, upright_size, DecodeOptions, Decoded};
use crate::error::{Error, Result};
use crate::format::{Format, ImageInfo};

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
    if format == Format::WebP {
        // image-webp allocates each bitstream at the size the bitstream claims,
        // which may differ from the canvas in the header (found by fuzzing:
        // `fuzz/crashers/webp/`): every bitstream is held to the limit too.
        for (w, h) in webp_bitstream_sizes(bytes) {
            check_pixels(path, w, h, opts)?;
        }
    }
    let mut decoder = new_decoder(format, bytes, opts).map_err(|e| image_error(path, e))?;
    let (w, h) = decoder.dimensions();
    check_pixels(path, w, h, opts)?;
    let orientation = match format {
        // image-webp allocates an EXIF chunk at the size its header claims (up
        // to 4 GiB) before reading it; the chunk is read here, in place, instead.
        Format::WebP => webp_exif_orientation(bytes),
        _ => decoder.orientation().map_or(1, |o| o.to_exif()),
    };
    Ok((decoder, orientation))
}

/// The EXIF orientation (1..8) of a WebP's `EXIF` chunk, read from `bytes`
/// without copying; 1 when there is none, or when the chunk claims more bytes
/// than the file holds (found by fuzzing: `fuzz/crashers/webp/`).
pub(super) fn webp_exif_orientation(bytes: &[u8]) -> u8 {
    for (fourcc, body, whole) in riff_chunks(bytes, 12) {
        if !whole {
            break;
        }
        if fourcc == b"EXIF" {
            let tiff = body.strip_prefix(b"Exif\0\0").unwrap_or(body);
            return image::metadata::Orientation::from_exif_chunk(tiff).map_or(1, |o| o.to_exif());
        }
    }
    1
}

/// The RIFF chunks of `bytes` from offset `at` (WebP: 12, after "RIFF", the
/// RIFF size and "WEBP"): (fourcc, body, whole). A chunk that claims more
/// bytes than the file holds comes last, with what there is and `whole` false
/// (decoders still read a cut-short bitstream).
fn riff_chunks(bytes: &[u8], mut at: usize) -> impl Iterator<Item = (&[u8], &[u8], bool)> {
    std::iter::from_fn(move || {
        let head = bytes.get(at..at.checked_add(8)?)?;
        let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let rest = bytes.get(at + 8..)?;
        let whole = rest.len() >= size;
        let body = &rest[..size.min(rest.len())];
        at = if whole {
            at + 8 + size + (size & 1)
        } else {
            bytes.len()
        };
        Some((&head[..4], body, whole))
    })
}

/// The width and height every VP8 / VP8L bitstream of a WebP claims, at the
/// top level and inside animation frames (`ANMF`: 16 bytes of frame header,
/// then chunks). A bitstream too short to say is left to the decoder.
pub(super) fn webp_bitstream_sizes(bytes: &[u8]) -> Vec<(u32, u32)> {
    let mut sizes = Vec::new();
    for (fourcc, body, _) in riff_chunks(bytes, 12) {
        if fourcc == b"ANMF" {
            if let Some(frame) = body.get(16..) {
                sizes.extend(riff_chunks(frame, 0).filter_map(|(f, b, _)| bitstream_size(f, b)));
            }
        } else if let Some(size) = bitstream_size(fourcc, body) {
            sizes.push(size);
        }
    }
    sizes
}

/// A `VP8 ` key frame's or a `VP8L` image's own width and height.
fn bitstream_size(fourcc: &[u8], body: &[u8]) -> Option<(u32, u32)> {
    let le16 = |b: &[u8]| u32::from(u16::from_le_bytes([b[0], b[1]]));
    match fourcc {
        // Frame tag (3 bytes), start code 9d 01 2a, then 14-bit width and height.
        b"VP8 " if body.get(3..6)? == [0x9d, 0x01, 0x2a] => {
            let dims = body.get(6..10)?;
            Some((le16(&dims[..2]) & 0x3fff, le16(&dims[2..]) & 0x3fff))
        }
        // Signature 0x2f, then 14-bit width - 1 and height - 1.
        b"VP8L" if *body.first()? == 0x2f => {
            let b = body.get(1..5)?;
            let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
        }
        _ => None,
    }
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
