//! Read an image's format and upright size from its header, without decoding
//! the pixels, so that large folders can be scanned quickly.

use std::io::Read;
use std::path::Path;

use crate::decode::{probe_format, read_file, DecodeOptions};
use crate::error::{Error, Result};
pub use crate::format::{detect_format, Format, ImageInfo};

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

#[cfg(test)]
mod tests;
