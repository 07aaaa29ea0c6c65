//! Read an image's format and upright size from its header, without decoding
//! the pixels, so that large folders can be scanned quickly.

use std::path::Path;

use crate::decode::DecodeOptions;
use crate::error::Result;

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

/// Probe a file. Fails on empty, unreadable, unsupported, or over-limit files.
pub fn probe_file(path: &Path, opts: &DecodeOptions) -> Result<ImageInfo> {
    let _ = (path, opts);
    todo!("probe_file")
}

/// Probe bytes already in memory; `path` only names the source in errors.
pub fn probe_bytes(bytes: &[u8], path: &Path, opts: &DecodeOptions) -> Result<ImageInfo> {
    let _ = (bytes, path, opts);
    todo!("probe_bytes")
}
