//! JPEG through libjpeg-turbo: header, EXIF orientation, DCT-domain scaling,
//! CMYK/YCCK output, and truncation detection.
//!
//! TurboJPEG 3 reports a libjpeg *warning* (such as "Premature end of JPEG
//! file", which libjpeg answers by filling the rest of the picture with grey)
//! as a failed call, with the warning as the error text. We treat every such
//! warning as corruption except the harmless "extraneous bytes before marker"
//! that many cameras and editors leave behind (Pillow ignores it too).

use std::cell::RefCell;
use std::path::Path;

use image::metadata::Orientation;
use image::RgbImage;
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat, ScalingFactor};

use super::pixels::{cmyk_to_rgb_in_place, orient};
use super::{check_pixels, corrupt, unsupported, upright_size, DecodeOptions, Decoded};
use crate::error::{Error, Result};
use crate::format::{Format, ImageInfo};

/// Guard against progressive JPEGs crafted with thousands of scans
/// (libjpeg-turbo's advice in "Two Issues with the JPEG Standard").
const MAX_SCANS: u32 = 500;

/// DCT scaling factors we let libjpeg-turbo use, smallest first. Only the
/// power-of-two reductions: the fractional ones (3/8, 5/8, 3/4, 7/8) leave
/// aliasing that the later area filter cannot remove (measured: a 1024x768
/// photo into a 576x448 bucket was 1.36% off PIL's Lanczos at 5/8 and 0.43%
/// decoded at full size; benches/data_feed.py prints this check).
const SCALES: [(u32, u32); 4] = [(1, 8), (1, 4), (1, 2), (1, 1)];

thread_local! {
    /// One decompressor per thread: `tj3Init` allocates, so reuse it.
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// What we need from a JPEG header, in stored (not upright) orientation.
struct Header {
    width: u32,
    height: u32,
    orientation: u8,
    lossless: bool,
    cmyk: bool,
}

/// Decode a JPEG at the smallest DCT scale whose upright result still covers `min_size`.
pub(super) fn decode(
    bytes: &[u8],
    path: &Path,
    opts: &DecodeOptions,
    min_size: &dyn Fn(u32, u32) -> (u32, u32),
) -> Result<Decoded> {
    let header = with_decompressor(path, |d| read_header(d, bytes, path, opts))?;
    let (up_w, up_h) = upright_size(header.width, header.height, header.orientation);
    // `min_size` is the caller's code: call it while no decompressor is borrowed.
    let (min_w, min_h) = min_size(up_w, up_h);
    // Back to stored orientation: a quarter turn swaps the sides either way.
    let (min_w, min_h) = upright_size(min_w, min_h, header.orientation);
    let scale = if header.lossless {
        (1, 1)
    } else {
        pick_scale(header.width, header.height, min_w, min_h)
    };
    let image = with_decompressor(path, |d| decompress(d, bytes, path, &header, scale))?;
    Ok(Decoded {
        image: orient(image, header.orientation),
        source_width: up_w,
        source_height: up_h,
    })
}

/// Read the header and EXIF orientation of a JPEG without decoding it.
pub(super) fn probe(bytes: &[u8], path: &Path, opts: &DecodeOptions) -> Result<ImageInfo> {
    let header = with_decompressor(path, |d| read_header(d, bytes, path, opts))?;
    let (width, height) = upright_size(header.width, header.height, header.orientation);
    Ok(ImageInfo {
        format: Format::Jpeg,
        width,
        height,
        orientation: header.orientation,
        has_alpha: false,
    })
}

/// The smallest scale `num/denom` whose output (libjpeg rounds up:
/// `ceil(dim * num / denom)`, TurboJPEG's `TJSCALED`) is at least
/// `min_w` x `min_h`; `(1, 1)` when even full size is smaller.
pub(crate) fn pick_scale(width: u32, height: u32, min_w: u32, min_h: u32) -> (u32, u32) {
    SCALES
        .into_iter()
        .find(|&s| scaled(width, s) >= min_w && scaled(height, s) >= min_h)
        .unwrap_or((1, 1))
}

/// `ceil(dim * num / denom)`, libjpeg's size for a scaled dimension.
pub(crate) fn scaled(dim: u32, (num, denom): (u32, u32)) -> u32 {
    (u64::from(dim) * u64::from(num)).div_ceil(u64::from(denom)) as u32
}

/// Run `f` with this thread's decompressor (a fresh one if it is busy).
fn with_decompressor<T>(path: &Path, f: impl FnOnce(&mut Decompressor) -> Result<T>) -> Result<T> {
    DECOMPRESSOR.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return f(&mut new_decompressor(path)?);
        };
        let decompressor = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(new_decompressor(path)?),
        };
        let result = f(decompressor);
        if result.is_err() {
            // After a failed tj3DecompressHeader, libjpeg-turbo 3.1 leaves the
            // handle mid-header and every later call on it fails; start afresh.
            *slot = None;
        }
        result
    })
}

fn new_decompressor(path: &Path) -> Result<Decompressor> {
    let mut d = Decompressor::new().map_err(|e| corrupt(path, format!("cannot start libjpeg-turbo: {e}")))?;
    d.set_scan_limit(MAX_SCANS)
        .map_err(|e| corrupt(path, format!("cannot configure libjpeg-turbo: {e}")))?;
    Ok(d)
}

fn read_header(d: &mut Decompressor, bytes: &[u8], path: &Path, opts: &DecodeOptions) -> Result<Header> {
    let header = d.read_header(bytes).map_err(|e| jpeg_error(path, e))?;
    let width = u32::try_from(header.width).map_err(|_| corrupt(path, "width out of range"))?;
    let height = u32::try_from(header.height).map_err(|_| corrupt(path, "height out of range"))?;
    check_pixels(path, width, height, opts)?;
    Ok(Header {
        width,
        height,
        orientation: exif_orientation(bytes),
        lossless: header.is_lossless,
        cmyk: matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK),
    })
}

/// Decompress at `scale` straight into the final RGB buffer (CMYK is
/// converted in place, so no second buffer is allocated).
fn decompress(
    d: &mut Decompressor,
    bytes: &[u8],
    path: &Path,
    header: &Header,
    scale: (u32, u32),
) -> Result<RgbImage> {
    let factor = ScalingFactor::new(scale.0 as usize, scale.1 as usize);
    d.set_scaling_factor(factor).map_err(|e| jpeg_error(path, e))?;
    let (width, height) = (scaled(header.width, scale), scaled(header.height, scale));
    let format = if header.cmyk {
        PixelFormat::CMYK
    } else {
        PixelFormat::RGB
    };
    let pitch = width as usize * format.size();
    let mut pixels = super::take_buffer(pitch * height as usize);
    let output = Image {
        pixels: pixels.as_mut_slice(),
        width: width as usize,
        pitch,
        height: height as usize,
        format,
    };
    if let Err(e) = d.decompress(bytes, output) {
        if !is_harmless_warning(&e) {
            return Err(jpeg_error(path, e));
        }
    }
    if header.cmyk {
        cmyk_to_rgb_in_place(&mut pixels);
    }
    RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| corrupt(path, "decoded buffer has the wrong size"))
}

/// The one libjpeg warning that leaves a complete, correct picture.
fn is_harmless_warning(e: &turbojpeg::Error) -> bool {
    matches!(e, turbojpeg::Error::TurboJpegError(msg) if msg.contains("extraneous bytes before marker"))
}

/// Map a libjpeg-turbo failure: JPEG variants it cannot decode to 8 bits
/// (12/16-bit precision, hierarchical) are unsupported, the rest corrupt.
fn jpeg_error(path: &Path, e: turbojpeg::Error) -> Error {
    let msg = e.to_string();
    if msg.contains("precision") || msg.contains("Unsupported JPEG process") {
        unsupported(path, format!("JPEG variant libjpeg-turbo cannot decode: {msg}"))
    } else {
        corrupt(path, msg)
    }
}

/// The EXIF orientation (1..8) in the first `Exif` APP1 segment before the
/// image data; 1 when there is none or it is unreadable.
///
/// Walks the marker segments as laid out in ITU T.81 annex B (a segment is
/// `FF xx` + big-endian length including itself; `FF D0..D7`, `FF 01` stand alone).
pub(crate) fn exif_orientation(bytes: &[u8]) -> u8 {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return 1;
        }
        let marker = bytes[i + 1];
        match marker {
            0xFF => i += 1,
            0xDA | 0xD9 => return 1,
            0xD0..=0xD7 | 0x01 => i += 2,
            _ => {
                let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
                if len < 2 {
                    return 1;
                }
                let end = (i + 2 + len).min(bytes.len());
                if marker == 0xE1 {
                    if let Some(tiff) = bytes[i + 4..end].strip_prefix(b"Exif\0\0") {
                        return Orientation::from_exif_chunk(tiff).map_or(1, Orientation::to_exif);
                    }
                }
                i += 2 + len;
            }
        }
    }
    1
}
