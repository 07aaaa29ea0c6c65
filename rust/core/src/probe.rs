//! Read an image's format and upright size from its header, without decoding
//! the pixels, so that large folders can be scanned quickly.

use std::io::Read;
use std::path::Path;

use crate::decode::{probe_format, read_file, unsupported, DecodeOptions};
use crate::error::{Error, Result};

/// Image container formats the engine decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    WebP,
    Bmp,
}

impl Format {
    /// Lower-case name, as shown to users ("jpeg", "png", "webp", "bmp").
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::WebP => "webp",
            Format::Bmp => "bmp",
        }
    }
}

/// What the header says about an image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageInfo {
    pub format: Format,
    /// Upright width (EXIF orientation applied: 5..8 swap the sides).
    pub width: u32,
    /// Upright height.
    pub height: u32,
    /// EXIF orientation, 1 (upright) to 8; 1 when there is no EXIF.
    pub orientation: u8,
    /// Whether the picture has an alpha channel (or palette transparency).
    pub has_alpha: bool,
}

/// Bytes read from the start of a file for a first probe; almost every
/// header (JPEG with EXIF and ICC, PNG up to its first IDAT) fits in them.
const PROBE_PREFIX: u64 = 64 * 1024;

/// Probe a file. Fails on empty, unreadable, unsupported, or over-limit files.
///
/// Reads only the first 64 KiB; when the header does not fit in them (large
/// APP segments, WebP chunks after the image data) the whole file is read.
pub fn probe_file(path: &Path, opts: &DecodeOptions) -> Result<ImageInfo> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut prefix = Vec::with_capacity(PROBE_PREFIX.min(len) as usize);
    file.take(PROBE_PREFIX).read_to_end(&mut prefix).map_err(io)?;
    if (prefix.len() as u64) < len {
        match probe_bytes(&prefix, path, opts) {
            Ok(info) => return Ok(info),
            Err(e @ (Error::TooLarge { .. } | Error::Unsupported { .. })) => return Err(e),
            Err(_) => {}
        }
    }
    let bytes = read_file(path)?;
    probe_bytes(&bytes, path, opts)
}

/// Probe bytes already in memory; `path` only names the source in errors.
pub fn probe_bytes(bytes: &[u8], path: &Path, opts: &DecodeOptions) -> Result<ImageInfo> {
    let format = detect_format(bytes, path)?;
    probe_format(format, bytes, path, opts)
}

/// Whether bytes start like a given format.
type Matcher = fn(&[u8]) -> bool;

/// How each format we decode is recognised from its first bytes.
const SIGNATURES: &[(Format, Matcher)] = &[
    (Format::Jpeg, |b| b.starts_with(b"\xFF\xD8\xFF")),
    (Format::Png, |b| b.starts_with(b"\x89PNG\r\n\x1a\n")),
    (Format::WebP, |b| {
        b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP"
    }),
    (Format::Bmp, is_bmp),
];

/// "BM" followed, after the 14-byte file header, by a known DIB header size
/// (so that a text file starting with "BM" is not taken for a bitmap).
fn is_bmp(b: &[u8]) -> bool {
    const DIB_SIZES: [u32; 7] = [12, 40, 52, 56, 64, 108, 124];
    b.len() >= 18
        && b.starts_with(b"BM")
        && DIB_SIZES.contains(&u32::from_le_bytes([b[14], b[15], b[16], b[17]]))
}

/// Magic bytes of formats we recognise but do not decode, to name them in errors.
const OTHER_SIGNATURES: &[(&str, &[u8])] = &[
    ("GIF", b"GIF8"),
    ("TIFF", b"II*\0"),
    ("TIFF", b"MM\0*"),
    ("PDF", b"%PDF"),
    ("JPEG 2000", b"\0\0\0\x0cjP  "),
    ("ICO", b"\0\0\x01\0"),
    ("Photoshop PSD", b"8BPS"),
    ("JPEG XL", b"\xFF\x0A"),
];

/// Tell the format from the magic bytes (not the extension).
///
/// Zero bytes give [`Error::Empty`]; anything that is not JPEG, PNG, WebP or
/// BMP gives [`Error::Unsupported`] naming what it looks like.
pub fn detect_format(bytes: &[u8], path: &Path) -> Result<Format> {
    if bytes.is_empty() {
        return Err(Error::Empty {
            path: path.to_path_buf(),
        });
    }
    if let Some((format, _)) = SIGNATURES.iter().find(|(_, matches)| matches(bytes)) {
        return Ok(*format);
    }
    Err(unsupported(path, describe_unknown(bytes)))
}

/// A few words on what unknown bytes look like, for the error message.
fn describe_unknown(bytes: &[u8]) -> String {
    if let Some((name, _)) = OTHER_SIGNATURES.iter().find(|(_, m)| bytes.starts_with(m)) {
        return format!("{name} files are not supported; convert to PNG or JPEG");
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return "HEIF/AVIF files are not supported; convert to PNG or JPEG".to_string();
    }
    let head = &bytes[..bytes.len().min(512)];
    if std::str::from_utf8(head).is_ok_and(|s| !s.contains('\0')) {
        return "looks like text, not an image".to_string();
    }
    let magic: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("unknown format (first bytes {})", magic.join(" "))
}

#[cfg(test)]
mod tests;
