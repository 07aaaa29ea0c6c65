//! DCT-domain scaling: the scale picked is the smallest that still covers
//! the caller's minimum, rotated JPEGs swap the minimum, other formats and
//! lossless JPEGs decode at full size.

use std::cell::Cell;
use std::path::Path;

use image::{DynamicImage, ImageFormat};
use proptest::prelude::*;
use turbojpeg::{PixelFormat, Subsamp};

use super::jpeg::{pick_scale, scaled};
use super::testimg::*;
use super::*;

#[test]
fn pick_scale_table() {
    let cases = [
        ((4000, 3000), (500, 375), (1, 8)),
        ((4000, 3000), (501, 375), (1, 4)),
        ((4000, 3000), (1001, 1), (1, 2)),
        ((4000, 3000), (4000, 3000), (1, 1)),
        ((4000, 3000), (5000, 1), (1, 1)),
        ((100, 100), (13, 13), (1, 8)), // ceil(12.5) = 13
        ((1, 1), (1, 1), (1, 8)),
    ];
    for ((w, h), (mw, mh), want) in cases {
        assert_eq!(pick_scale(w, h, mw, mh), want, "{w}x{h} min {mw}x{mh}");
    }
}

#[test]
fn scaled_decode_uses_dct_scaling() {
    let bytes = jpeg(&quadrants(4000, 3000));
    let cases = [
        ((500, 375), (500, 375)),
        ((1000, 750), (1000, 750)),
        ((1001, 1), (2000, 1500)),
        ((9000, 1), (4000, 3000)),
    ];
    for (min, want) in cases {
        let d = decode_bytes_scaled(&bytes, Path::new(PATH), &opts(), &|_, _| min).unwrap();
        assert_eq!(d.image.dimensions(), want, "min {min:?}");
        assert_eq!((d.source_width, d.source_height), (4000, 3000));
        let (w, h) = want;
        assert!(
            close(pixel(&d, w / 4, h / 4), RED, 10) && close(pixel(&d, 3 * w / 4, 3 * h / 4), YELLOW, 10)
        );
    }
}

#[test]
fn scaled_decode_swaps_the_minimum_for_rotated_jpegs() {
    let bytes = with_exif(&jpeg(&quadrants(800, 600)), 6);
    let seen = Cell::new((0, 0));
    let d = decode_bytes_scaled(&bytes, Path::new(PATH), &opts(), &|w, h| {
        seen.set((w, h));
        (150, 200)
    })
    .unwrap();
    assert_eq!(seen.get(), (600, 800), "min_size gets the upright source size");
    assert_eq!(d.image.dimensions(), (150, 200), "1/4 scale, upright");
    assert_eq!((d.source_width, d.source_height), (600, 800));
    assert!(
        close(corner(&d, "TR"), RED, 12),
        "still rotated: red at top-right"
    );
}

#[test]
fn min_size_callback_may_decode_too() {
    let bytes = jpeg(&quadrants(64, 48));
    let d = decode_bytes_scaled(&bytes, Path::new(PATH), &opts(), &|w, h| {
        let inner = full(&bytes).unwrap();
        assert_eq!(inner.image.dimensions(), (w, h));
        (w / 2, h / 2)
    })
    .unwrap();
    assert_eq!(d.image.dimensions(), (32, 24));
}

#[test]
fn scaled_decode_of_lossless_jpeg_and_png_is_full_size() {
    let q = quadrants(64, 48);
    let mut c = turbojpeg::Compressor::new().unwrap();
    c.set_lossless(true).unwrap();
    let image = turbojpeg::Image {
        pixels: q.as_raw().as_slice(),
        width: 64,
        pitch: 192,
        height: 48,
        format: PixelFormat::RGB,
    };
    let lossless = c.compress_to_vec(image).unwrap();
    let png = encode(&DynamicImage::ImageRgb8(q), ImageFormat::Png);
    for (name, bytes) in [("lossless jpeg", lossless), ("png", png)] {
        let d = decode_bytes_scaled(&bytes, Path::new(PATH), &opts(), &|_, _| (8, 6)).unwrap();
        assert_eq!(d.image.dimensions(), (64, 48), "{name}");
        assert_eq!(pixel(&d, 40, 40), YELLOW, "{name}");
    }
}

proptest! {
    #[test]
    fn pick_scale_is_the_smallest_that_covers(w in 1u32..9000, h in 1u32..9000, fw in 0.0f64..1.2, fh in 0.0f64..1.2) {
        let (mw, mh) = ((w as f64 * fw) as u32, (h as f64 * fh) as u32);
        let s = pick_scale(w, h, mw, mh);
        let covers = |s| scaled(w, s) >= mw && scaled(h, s) >= mh;
        prop_assert!(covers(s) || s == (1, 1));
        let smaller = [(1, 8), (1, 4), (1, 2)].into_iter().filter(|t| t.0 * s.1 < s.0 * t.1);
        for t in smaller {
            prop_assert!(!covers(t), "{:?} would also cover {}x{} for {}x{}", t, mw, mh, w, h);
        }
    }
}

#[test]
#[ignore = "timing; run with --release -- --ignored --nocapture"]
fn timing_4032x3024_full_vs_eighth() {
    // A Mandelbrot picture plus pixel noise, so the file is photo-sized (several MB).
    let mut img = turbojpeg::Image::mandelbrot(4032, 3024, PixelFormat::RGB);
    let mut state = 0x2545_f491_u32;
    for p in img.pixels.iter_mut() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        *p = p.saturating_add((state % 48) as u8).saturating_sub(24);
    }
    let bytes = turbo(&img.pixels, 4032, 3024, PixelFormat::RGB, Subsamp::Sub2x2, false);
    let time = |min: (u32, u32)| {
        let start = std::time::Instant::now();
        for _ in 0..5 {
            decode_bytes_scaled(&bytes, Path::new(PATH), &opts(), &|_, _| min).unwrap();
        }
        start.elapsed().as_secs_f64() * 1000.0 / 5.0
    };
    println!("4032x3024 JPEG ({} KiB)", bytes.len() / 1024);
    for (label, min) in [
        ("full", (4032, 3024)),
        ("1/2", (2016, 1512)),
        ("1/4", (1008, 756)),
        ("1/8", (504, 378)),
    ] {
        println!("  {label:>4}: {:.1} ms", time(min));
    }
}
