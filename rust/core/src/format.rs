//! Image formats and what a header says: the types that decoding and probing
//! share, and telling the format from the magic bytes. A leaf module (it uses
//! only the error module), so `decode` and `probe` both build on it and
//! `probe` uses `decode`, never the other way round.

use std::path::Path;

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
    Err(Error::Unsupported {
        path: path.to_path_buf(),
        detail: describe_unknown(bytes),
    })
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
