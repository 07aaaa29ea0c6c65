//! Test pictures, built in memory with the `image`/`png` encoders and the
//! TurboJPEG compressor (no binary fixtures), plus hand-written EXIF blocks.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use turbojpeg::{Compressor, Image, PixelFormat, Subsamp};

use super::{decode_bytes, DecodeOptions, Decoded};
use crate::error::Result;

pub const RED: [u8; 3] = [255, 0, 0];
pub const GREEN: [u8; 3] = [0, 255, 0];
pub const BLUE: [u8; 3] = [0, 0, 255];
pub const YELLOW: [u8; 3] = [255, 255, 0];

/// Four flat quadrants: red top-left, green top-right, blue bottom-left, yellow bottom-right.
pub fn quadrants(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb(match (x < w / 2, y < h / 2) {
            (true, true) => RED,
            (false, true) => GREEN,
            (true, false) => BLUE,
            (false, false) => YELLOW,
        })
    })
}

/// Encode with an `image` crate encoder (PNG, lossless WebP, BMP).
pub fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode test image");
    out.into_inner()
}

/// Compress raw pixels with TurboJPEG.
pub fn turbo(
    pixels: &[u8],
    w: u32,
    h: u32,
    format: PixelFormat,
    subsamp: Subsamp,
    progressive: bool,
) -> Vec<u8> {
    let mut c = Compressor::new().expect("compressor");
    c.set_quality(92).expect("quality");
    c.set_subsamp(subsamp).expect("subsamp");
    c.set_progressive(progressive).expect("progressive");
    let image = Image {
        pixels,
        width: w as usize,
        pitch: w as usize * format.size(),
        height: h as usize,
        format,
    };
    c.compress_to_vec(image).expect("compress test JPEG")
}

/// A baseline 4:2:0 RGB JPEG of `image`.
pub fn jpeg(image: &RgbImage) -> Vec<u8> {
    turbo(
        image.as_raw(),
        image.width(),
        image.height(),
        PixelFormat::RGB,
        Subsamp::Sub2x2,
        false,
    )
}

/// A minimal big-endian TIFF block holding only IFD0 tag 0x0112 (Orientation).
pub fn exif_tiff(orientation: u16) -> Vec<u8> {
    let mut t = b"MM\0\x2a\0\0\0\x08".to_vec(); // header, IFD0 at offset 8
    t.extend_from_slice(&1u16.to_be_bytes()); // one entry
    t.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]); // tag, SHORT, count 1
    t.extend_from_slice(&orientation.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding, no next IFD
    t
}

/// Insert a JPEG marker segment right after SOI.
pub fn with_segment(jpeg: &[u8], marker: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len() + 2).expect("segment fits");
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A JPEG with an APP1 `Exif` segment carrying `orientation`.
pub fn with_exif(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut body = b"Exif\0\0".to_vec();
    body.extend(exif_tiff(orientation));
    with_segment(jpeg, 0xE1, &body)
}

/// A PNG written with the `png` crate, with optional palette, tRNS and eXIf chunks.
pub fn png_raw(
    (w, h): (u32, u32),
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<&[u8]>,
    trns: Option<&[u8]>,
    exif: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    if let Some(p) = palette {
        enc.set_palette(p.to_vec());
    }
    if let Some(t) = trns {
        enc.set_trns(t.to_vec());
    }
    let mut writer = enc.write_header().expect("png header");
    if let Some(e) = exif {
        writer.write_chunk(png::chunk::eXIf, e).expect("eXIf");
    }
    writer.write_image_data(data).expect("png data");
    writer.finish().expect("png finish");
    out
}

/// 16-bit samples as the big-endian bytes PNG stores.
pub fn be16(samples: &[u16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_be_bytes()).collect()
}

/// Wrap a simple (VP8 or VP8L) WebP in an extended VP8X container with an EXIF chunk.
pub fn webp_with_exif(simple: &[u8], (w, h): (u32, u32), orientation: u16) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, tag: &[u8], body: &[u8]) {
        out.extend_from_slice(tag);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
        if body.len() % 2 == 1 {
            out.push(0);
        }
    }
    let mut vp8x = vec![0x08, 0, 0, 0]; // flags: EXIF present
    vp8x.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    chunk(&mut body, b"VP8X", &vp8x);
    body.extend_from_slice(&simple[12..]); // the image chunk as it was
    chunk(&mut body, b"EXIF", &exif_tiff(orientation));
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

/// 16x16 lossy WebP, red left half, blue right half. Made with Pillow 11
/// (`Image.new("RGB", (16, 16), "red")`, right half pasted blue,
/// `save(..., "WEBP", quality=90, method=6)`): the `image` crate has no lossy encoder.
pub const WEBP_LOSSY: &str = "52494646440000005745425056503820380000003002009d012a1000100000c01225a00274ba01f801f88004680000fefd2b9fffdfa09bff779bfd744bccffeb473ffeb465707f5a39bfa000";

/// 16x16 lossy WebP with an ALPH chunk: top half opaque red, bottom half
/// fully transparent (Pillow 11, RGBA, quality=90, method=6).
pub const WEBP_LOSSY_ALPHA: &str = "524946466e00000057454250565038580a000000100000000f00000f0000414c50480d00000001100b26f94b47b03f22723e1e00565038203a0000005002009d012a1000100000c01225a00274ba01f801fa81fd00079000feed9a9ffff769a3ff77964e1090fff72f9fff5a37f04f3dbff938400000";

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// A file in the temp directory, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, bytes: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("tsuika-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether two colours differ by at most `tol` in every channel.
pub fn close(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
    a.iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= tol)
}

// Decoding helpers shared by the decode tests.

pub const BG: [u8; 3] = [10, 20, 30];
pub const PATH: &str = "pics/test-image.bin";

pub fn opts() -> DecodeOptions {
    DecodeOptions {
        background: BG,
        ..DecodeOptions::default()
    }
}

pub fn full(bytes: &[u8]) -> Result<Decoded> {
    decode_bytes(bytes, Path::new(PATH), &opts())
}

pub fn pixel(d: &Decoded, x: u32, y: u32) -> [u8; 3] {
    d.image.get_pixel(x, y).0
}

/// Left half `left`, right half `right`, as RGBA.
pub fn halves_rgba(w: u32, h: u32, left: [u8; 4], right: [u8; 4]) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, _| Rgba(if x < w / 2 { left } else { right }))
}

pub fn corner(d: &Decoded, name: &str) -> [u8; 3] {
    let (w, h) = d.image.dimensions();
    let (x, y) = match name {
        "TL" => (3, 3),
        "TR" => (w - 4, 3),
        "BL" => (3, h - 4),
        _ => (w - 4, h - 4),
    };
    pixel(d, x, y)
}
