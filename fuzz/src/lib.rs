//! Shared harness for the fuzz targets: the guards every target runs under.
//!
//! * **No panic.** Every call goes through the core's public API; a panic
//!   (or an abort) is a crash that libFuzzer saves.
//! * **No allocation past the pixel limit.** Decoding runs with
//!   [`MAX_PIXELS`]; [`LimitAlloc`] aborts on any single allocation larger
//!   than [`MAX_ALLOC`], which is what the largest legitimate picture under
//!   that limit needs (16-bit RGBA plus slack). This holds with or without
//!   a sanitizer; `scripts/fuzz.sh` adds libFuzzer's `-rss_limit_mb`.
//! * **No hang.** `scripts/fuzz.sh` passes `-timeout`, so one input that
//!   runs longer is a crash too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;

use tsuika_core::decode::DecodeOptions;
use tsuika_core::probe::Format;

/// Pixel limit the harness decodes under (1 Mpx, e.g. 1024 x 1024): the code
/// paths are those of larger limits, and small pictures keep executions fast.
pub const MAX_PIXELS: u64 = 1024 * 1024;

/// Largest single allocation allowed: 16-bit RGBA at the pixel limit (8
/// bytes a pixel) with 2x slack for a decoder's row padding and copies.
pub const MAX_ALLOC: usize = (MAX_PIXELS as usize) * 8 * 2;

/// The system allocator, aborting on allocations over [`MAX_ALLOC`].
pub struct LimitAlloc;

unsafe impl GlobalAlloc for LimitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        guard(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        guard(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        guard(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

fn guard(size: usize) {
    if size > MAX_ALLOC {
        // No formatting here (it would allocate); abort is a crash to libFuzzer.
        std::process::abort();
    }
}

/// Decode options of every target.
pub fn opts() -> DecodeOptions {
    DecodeOptions {
        max_pixels: MAX_PIXELS,
        ..Default::default()
    }
}

/// Name given to the input in error messages.
pub fn name() -> &'static Path {
    Path::new("fuzz-input")
}

/// `data` with its first bytes replaced by `format`'s signature, so that each
/// target stays on its decoder whatever the mutator does to the magic.
pub fn with_magic(format: Format, data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    let put = |v: &mut Vec<u8>, at: usize, magic: &[u8]| {
        if v.len() < at + magic.len() {
            v.resize(at + magic.len(), 0);
        }
        v[at..at + magic.len()].copy_from_slice(magic);
    };
    match format {
        Format::Jpeg => put(&mut v, 0, b"\xFF\xD8\xFF"),
        Format::Png => put(&mut v, 0, b"\x89PNG\r\n\x1a\n"),
        Format::WebP => {
            put(&mut v, 0, b"RIFF");
            put(&mut v, 8, b"WEBP");
        }
        Format::Bmp => {
            put(&mut v, 0, b"BM");
            // A DIB header size the sniffer accepts, chosen by the input.
            const DIB: [u32; 7] = [12, 40, 52, 56, 64, 108, 124];
            let pick = DIB[v.get(14).copied().unwrap_or(0) as usize % DIB.len()];
            put(&mut v, 14, &pick.to_le_bytes());
        }
    }
    v
}

/// Probe then fully decode `data` as `format`; errors are fine, panics are not.
pub fn probe_and_decode(format: Format, data: &[u8]) {
    let bytes = with_magic(format, data);
    let opts = opts();
    let probed = tsuika_core::probe::probe_bytes(&bytes, name(), &opts);
    let decoded = tsuika_core::decode::decode_bytes(&bytes, name(), &opts);
    if let (Ok(info), Ok(d)) = (&probed, &decoded) {
        // The probe and the decoder agree on the upright size.
        assert_eq!((info.width, info.height), (d.source_width, d.source_height));
        assert_eq!(d.image.dimensions(), (d.source_width, d.source_height));
    }
}
