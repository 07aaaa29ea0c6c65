//! What `tsuika prep` asks of the engine: validate files (header and, when
//! asked, a full decode that catches truncation), hash them for duplicate
//! detection, and write bucket-sized copies atomically.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::bucket::cover_size;
use crate::decode::{self, DecodeOptions};
use crate::error::{Error, Result};
use crate::hash;
use crate::probe::{self, ImageInfo};
use crate::resize::{self, Crop};

/// One file's scan result.
#[derive(Clone, Debug)]
pub struct ScanReport {
    pub info: ImageInfo,
    pub dhash: Option<u64>,
    pub phash: Option<u64>,
}

/// Probe `path`; with `full_decode`, decode every pixel too (catches
/// truncated and corrupt data that a header check misses); with `hashes`,
/// also compute dHash and pHash.
pub fn scan_file(path: &Path, opts: &DecodeOptions, full_decode: bool, hashes: bool) -> Result<ScanReport> {
    if !(full_decode || hashes) {
        // Header only: probe_file reads just the start of the file.
        let info = probe::probe_file(path, opts)?;
        return Ok(ScanReport {
            info,
            dhash: None,
            phash: None,
        });
    }
    let bytes = fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let info = probe::probe_bytes(&bytes, path, opts)?;
    // Hashes need only a small picture: let JPEGs decode at reduced scale.
    // A scaled decode still reads every entropy-coded byte, so truncation shows.
    let small = |w: u32, h: u32| (w.min(64), h.min(64));
    let decoded = decode::decode_bytes_scaled(&bytes, path, opts, &small)?;
    let (dh, ph) = if hashes {
        (
            Some(hash::dhash(&decoded.image)),
            Some(hash::phash(&decoded.image)),
        )
    } else {
        (None, None)
    };
    Ok(ScanReport {
        info,
        dhash: dh,
        phash: ph,
    })
}

/// The encoded form `dst`'s extension asks for.
fn encode(img: &RgbImage, dst: &Path, quality: u8) -> Result<Vec<u8>> {
    let ext = dst
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let bad = |detail: String| Error::InvalidArgument(format!("{}: {detail}", dst.display()));
    let mut buf = Vec::new();
    let cursor = std::io::Cursor::new(&mut buf);
    let result = match ext.as_deref() {
        Some("jpg" | "jpeg") => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(cursor, quality).encode_image(img)
        }
        Some("png") => img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png),
        Some("webp") => img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::WebP),
        other => {
            return Err(bad(format!(
                "cannot write images with extension {other:?}; use .png, .jpg or .webp"
            )))
        }
    };
    result.map_err(|e| bad(format!("encoding failed: {e}")))?;
    Ok(buf)
}

/// Write `bytes` to `dst` through a temporary file in the same folder and a
/// rename, so a crash never leaves a half-written file under the final name.
pub fn write_atomic(dst: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: dst.to_path_buf(),
        source,
    };
    if let Some(parent) = dst.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dst.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dst)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Cover-resize `src` into `bucket`, crop at `crop`, and write it to `dst`.
pub fn export_file(
    src: &Path,
    dst: &Path,
    bucket: (u32, u32),
    crop: Crop,
    quality: u8,
    opts: &DecodeOptions,
) -> Result<()> {
    let decoded = decode::decode_file_scaled(src, opts, &|w, h| cover_size(bucket, w, h))?;
    let img = &decoded.image;
    let resized = cover_size(bucket, img.width(), img.height());
    let out = resize::resize_cover_crop(img, resized, bucket, crop)?;
    write_atomic(dst, &encode(&out, dst, quality)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("tsuika-prep-{}", std::process::id()));
        let dst = dir.join("sub/out.bin");
        write_atomic(&dst, b"one").unwrap();
        write_atomic(&dst, b"two").unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dst.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_extension_is_refused_with_the_path() {
        let img = RgbImage::new(2, 2);
        let err = encode(&img, Path::new("x/out.gif"), 90).unwrap_err();
        assert!(err.to_string().contains("out.gif"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

        /// Exported copies have exactly the bucket's size, in every format, and
        /// scanning them finds what was written.
        #[test]
        fn export_writes_the_bucket_size(sw in 1u32..160, sh in 1u32..160, bw in 1u32..80, bh in 1u32..80, ext in 0usize..3) {
            let dir = std::env::temp_dir().join(format!("tsuika-export-{}-{sw}-{sh}-{bw}-{bh}-{ext}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let src = dir.join("src.png");
            RgbImage::from_fn(sw, sh, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])).save(&src).unwrap();
            let dst = dir.join(["out.png", "out.jpg", "out.webp"][ext]);
            export_file(&src, &dst, (bw, bh), Crop::Center, 90, &DecodeOptions::default()).unwrap();
            let report = scan_file(&dst, &DecodeOptions::default(), true, true).unwrap();
            proptest::prop_assert_eq!((report.info.width, report.info.height), (bw, bh));
            proptest::prop_assert!(report.dhash.is_some());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
