//! Decode tests: every format and colour mode comes out as the right
//! colours, and EXIF orientation comes out upright. Scaling is tested in
//! `scale_tests.rs`, bad input in `error_tests.rs`.

use std::path::Path;

use image::{DynamicImage, ImageFormat};
use turbojpeg::{PixelFormat, Subsamp};

use super::jpeg::exif_orientation;
use super::testimg::*;
use super::*;
use crate::probe::probe_bytes;

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    format: Format,
    size: (u32, u32),
    has_alpha: bool,
    /// (x, y, expected colour, tolerance per channel)
    samples: Vec<(u32, u32, [u8; 3], u8)>,
}

fn case(name: &'static str, bytes: Vec<u8>, format: Format, size: (u32, u32), has_alpha: bool) -> Case {
    Case {
        name,
        bytes,
        format,
        size,
        has_alpha,
        samples: Vec::new(),
    }
}

impl Case {
    fn at(mut self, x: u32, y: u32, colour: [u8; 3], tol: u8) -> Case {
        self.samples.push((x, y, colour, tol));
        self
    }

    /// The four quadrant colours of [`quadrants`], sampled away from the edges.
    fn quadrants(self, tol: u8) -> Case {
        let (w, h) = self.size;
        self.at(w / 4, h / 4, RED, tol)
            .at(3 * w / 4, h / 4, GREEN, tol)
            .at(w / 4, 3 * h / 4, BLUE, tol)
            .at(3 * w / 4, 3 * h / 4, YELLOW, tol)
    }
}

/// Gray+alpha in thirds: opaque, transparent, half (alpha 128/255).
fn gray_alpha_thirds(x: u32) -> (u8, u8) {
    match x / 8 {
        0 => (200, 255),
        1 => (200, 0),
        _ => (200, 128),
    }
}

/// round((200 * 128 + bg * 127) / 255) per channel of BG.
const HALF_200_OVER_BG: [u8; 3] = [105, 110, 115];

fn format_cases() -> Vec<Case> {
    use png::{BitDepth, ColorType};
    let q = quadrants(64, 48);
    let gray: Vec<u8> = vec![100; 32 * 16];
    let cmyk: Vec<u8> = (0..32 * 16)
        .flat_map(|i| {
            if i % 32 < 16 {
                [255, 0, 0, 255]
            } else {
                [255, 255, 255, 128]
            }
        })
        .collect();
    let la8: Vec<u8> = (0..24 * 4)
        .flat_map(|i| <[u8; 2]>::from(gray_alpha_thirds(i % 24)))
        .collect();
    let la16: Vec<u16> = (0..24 * 4)
        .flat_map(|i| <[u8; 2]>::from(gray_alpha_thirds(i % 24)))
        .map(|v| u16::from(v) * 257)
        .collect();
    let la16 = be16(&la16);
    let rgba = halves_rgba(16, 8, [255, 0, 0, 255], [0, 255, 0, 0]);
    let rgba16 = DynamicImage::ImageRgba8(rgba.clone()).to_rgba16();
    let palette = [255, 0, 0, 0, 255, 0];
    let idx8: Vec<u8> = (0..16 * 4).map(|i| u8::from(i % 16 >= 8)).collect();
    vec![
        case("jpeg 4:2:0", jpeg(&q), Format::Jpeg, (64, 48), false).quadrants(10),
        case(
            "jpeg progressive 4:4:4",
            turbo(q.as_raw(), 64, 48, PixelFormat::RGB, Subsamp::None, true),
            Format::Jpeg,
            (64, 48),
            false,
        )
        .quadrants(10),
        case(
            "jpeg gray",
            turbo(&gray, 32, 16, PixelFormat::GRAY, Subsamp::Gray, false),
            Format::Jpeg,
            (32, 16),
            false,
        )
        .at(5, 5, [100; 3], 2),
        case(
            "jpeg cmyk (ycck)",
            turbo(&cmyk, 32, 16, PixelFormat::CMYK, Subsamp::None, false),
            Format::Jpeg,
            (32, 16),
            false,
        )
        .at(4, 8, RED, 12)
        .at(28, 8, [128; 3], 12),
        case(
            "png rgb8",
            encode(&DynamicImage::ImageRgb8(q.clone()), ImageFormat::Png),
            Format::Png,
            (64, 48),
            false,
        )
        .quadrants(0),
        case(
            "png rgb16",
            encode(
                &DynamicImage::ImageRgb16(DynamicImage::ImageRgb8(q.clone()).to_rgb16()),
                ImageFormat::Png,
            ),
            Format::Png,
            (64, 48),
            false,
        )
        .quadrants(0),
        case(
            "png gray8",
            png_raw(
                (8, 4),
                ColorType::Grayscale,
                BitDepth::Eight,
                &[77; 32],
                None,
                None,
                None,
            ),
            Format::Png,
            (8, 4),
            false,
        )
        .at(3, 2, [77; 3], 0),
        case(
            "png gray16",
            png_raw(
                (8, 4),
                ColorType::Grayscale,
                BitDepth::Sixteen,
                &be16(&[0x8080; 32]),
                None,
                None,
                None,
            ),
            Format::Png,
            (8, 4),
            false,
        )
        .at(3, 2, [128; 3], 0),
        case(
            "png gray 1-bit",
            png_raw(
                (8, 2),
                ColorType::Grayscale,
                BitDepth::One,
                &[0xF0, 0xF0],
                None,
                None,
                None,
            ),
            Format::Png,
            (8, 2),
            false,
        )
        .at(1, 1, [255; 3], 0)
        .at(6, 1, [0; 3], 0),
        case(
            "png gray+alpha 8",
            png_raw(
                (24, 4),
                ColorType::GrayscaleAlpha,
                BitDepth::Eight,
                &la8,
                None,
                None,
                None,
            ),
            Format::Png,
            (24, 4),
            true,
        )
        .at(3, 2, [200; 3], 0)
        .at(11, 2, BG, 0)
        .at(19, 2, HALF_200_OVER_BG, 1),
        case(
            "png gray+alpha 16",
            png_raw(
                (24, 4),
                ColorType::GrayscaleAlpha,
                BitDepth::Sixteen,
                &la16,
                None,
                None,
                None,
            ),
            Format::Png,
            (24, 4),
            true,
        )
        .at(3, 2, [200; 3], 0)
        .at(11, 2, BG, 0)
        .at(19, 2, HALF_200_OVER_BG, 1),
        case(
            "png rgba8",
            encode(&DynamicImage::ImageRgba8(rgba.clone()), ImageFormat::Png),
            Format::Png,
            (16, 8),
            true,
        )
        .at(3, 3, RED, 0)
        .at(12, 3, BG, 0),
        case(
            "png rgba16",
            encode(&DynamicImage::ImageRgba16(rgba16), ImageFormat::Png),
            Format::Png,
            (16, 8),
            true,
        )
        .at(3, 3, RED, 0)
        .at(12, 3, BG, 0),
        case(
            "png palette + tRNS",
            png_raw(
                (16, 4),
                ColorType::Indexed,
                BitDepth::Eight,
                &idx8,
                Some(&palette),
                Some(&[255, 0]),
                None,
            ),
            Format::Png,
            (16, 4),
            true,
        )
        .at(3, 1, RED, 0)
        .at(12, 1, BG, 0),
        case(
            "png palette 4-bit",
            png_raw(
                (8, 1),
                ColorType::Indexed,
                BitDepth::Four,
                &[0x00, 0x00, 0x11, 0x11],
                Some(&palette),
                None,
                None,
            ),
            Format::Png,
            (8, 1),
            false,
        )
        .at(1, 0, RED, 0)
        .at(6, 0, GREEN, 0),
        case(
            "webp lossless",
            encode(&DynamicImage::ImageRgb8(quadrants(32, 24)), ImageFormat::WebP),
            Format::WebP,
            (32, 24),
            false,
        )
        .quadrants(0),
        case(
            "webp lossless alpha",
            encode(&DynamicImage::ImageRgba8(rgba.clone()), ImageFormat::WebP),
            Format::WebP,
            (16, 8),
            true,
        )
        .at(3, 3, RED, 0)
        .at(12, 3, BG, 0),
        case("webp lossy", hex(WEBP_LOSSY), Format::WebP, (16, 16), false)
            .at(2, 8, RED, 24)
            .at(13, 8, BLUE, 24),
        case(
            "webp lossy alpha",
            hex(WEBP_LOSSY_ALPHA),
            Format::WebP,
            (16, 16),
            true,
        )
        .at(8, 2, RED, 24)
        .at(8, 13, BG, 2),
        case(
            "bmp rgb",
            encode(&DynamicImage::ImageRgb8(q), ImageFormat::Bmp),
            Format::Bmp,
            (64, 48),
            false,
        )
        .quadrants(0),
        case(
            "bmp rgba",
            encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Bmp),
            Format::Bmp,
            (16, 8),
            true,
        )
        .at(3, 3, RED, 0)
        .at(12, 3, BG, 0),
    ]
}

#[test]
fn every_format_and_mode_decodes_to_the_right_colours() {
    for c in format_cases() {
        let info = probe_bytes(&c.bytes, Path::new(PATH), &opts())
            .unwrap_or_else(|e| panic!("{}: probe: {e}", c.name));
        assert_eq!(
            (info.format, (info.width, info.height)),
            (c.format, c.size),
            "{}: probe",
            c.name
        );
        assert_eq!(
            (info.has_alpha, info.orientation),
            (c.has_alpha, 1),
            "{}: probe alpha",
            c.name
        );
        let d = full(&c.bytes).unwrap_or_else(|e| panic!("{}: decode: {e}", c.name));
        assert_eq!(
            d.image.dimensions(),
            c.size,
            "{}: decoded size == probed size",
            c.name
        );
        assert_eq!(
            (d.source_width, d.source_height),
            c.size,
            "{}: source size",
            c.name
        );
        for &(x, y, want, tol) in &c.samples {
            let got = pixel(&d, x, y);
            assert!(
                close(got, want, tol),
                "{}: pixel ({x},{y}) = {got:?}, want {want:?} ± {tol}",
                c.name
            );
        }
    }
}

/// Where the stored red (top-left) and green (top-right) corners land for each
/// EXIF orientation, per the EXIF 2.3 spec's Orientation tag table.
const CORNERS: [(u16, &str, &str); 8] = [
    (1, "TL", "TR"),
    (2, "TR", "TL"),
    (3, "BR", "BL"),
    (4, "BL", "BR"),
    (5, "TL", "BL"),
    (6, "TR", "BR"),
    (7, "BR", "TR"),
    (8, "BL", "TL"),
];

fn assert_upright(name: &str, bytes: &[u8], orientation: u16, red: &str, green: &str) {
    let swapped = orientation >= 5;
    let want = if swapped { (32, 64) } else { (64, 32) };
    let info = probe_bytes(bytes, Path::new(PATH), &opts()).unwrap();
    assert_eq!(
        (info.width, info.height, u16::from(info.orientation)),
        (want.0, want.1, orientation),
        "{name}"
    );
    let d = full(bytes).unwrap();
    assert_eq!(d.image.dimensions(), want, "{name}: upright size");
    assert_eq!((d.source_width, d.source_height), want, "{name}: source size");
    assert!(
        close(corner(&d, red), RED, 12),
        "{name}: red corner {red} is {:?}",
        corner(&d, red)
    );
    assert!(
        close(corner(&d, green), GREEN, 12),
        "{name}: green corner {green} is {:?}",
        corner(&d, green)
    );
}

#[test]
fn jpeg_exif_orientations_come_out_upright() {
    let base = jpeg(&quadrants(64, 32));
    for (o, red, green) in CORNERS {
        assert_upright(
            &format!("jpeg orientation {o}"),
            &with_exif(&base, o),
            o,
            red,
            green,
        );
    }
}

#[test]
fn png_and_webp_exif_orientations_come_out_upright() {
    let q = quadrants(64, 32);
    let png = |o| {
        let exif = exif_tiff(o);
        png_raw(
            (64, 32),
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            q.as_raw(),
            None,
            None,
            Some(&exif),
        )
    };
    let webp = encode(&DynamicImage::ImageRgb8(q.clone()), ImageFormat::WebP);
    for (o, red, green) in [CORNERS[5], CORNERS[7]] {
        assert_upright(&format!("png eXIf {o}"), &png(o), o, red, green);
        assert_upright(
            &format!("webp EXIF {o}"),
            &webp_with_exif(&webp, (64, 32), o),
            o,
            red,
            green,
        );
    }
}

#[test]
fn exif_orientation_reader_ignores_garbage() {
    let base = jpeg(&quadrants(16, 16));
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        ("no exif", base.clone(), 1),
        ("orientation 6", with_exif(&base, 6), 6),
        ("out of range 9", with_exif(&base, 9), 1),
        ("exif not tiff", with_segment(&base, 0xE1, b"Exif\0\0garbage"), 1),
        (
            "xmp app1 first",
            with_exif(
                &with_segment(&base, 0xE1, b"http://ns.adobe.com/xap/1.0/\0<x/>"),
                3,
            ),
            3,
        ),
        ("cut inside segment", with_exif(&base, 6)[..12].to_vec(), 1),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(exif_orientation(&bytes), want, "{name}");
    }
}

/// A recycled buffer is what the next JPEG decode on the thread writes into,
/// and its stale bytes never show: the picture equals a fresh decode.
#[test]
fn jpeg_decode_reuses_a_recycled_buffer_and_overwrites_all_of_it() {
    let bytes = jpeg(&quadrants(64, 48));
    let fresh = full(&bytes).unwrap().image;
    let stale = vec![0xABu8; 64 * 48 * 3 + 999];
    let ptr = stale.as_ptr();
    recycle(stale);
    let reused = full(&bytes).unwrap().image;
    assert_eq!(reused.as_raw().as_ptr(), ptr, "the recycled allocation was used");
    assert_eq!(reused, fresh);
    // Too big a buffer is not kept; a smaller one does not replace a bigger one.
    recycle(Vec::with_capacity(MAX_RECYCLED_BYTES + 1));
    assert!(take_buffer(1).capacity() <= MAX_RECYCLED_BYTES);
    recycle(vec![0u8; 1000]);
    recycle(vec![0u8; 16]);
    assert_eq!(take_buffer(1).capacity(), 1000);
}
