use super::*;
use image::Rgb;
use proptest::prelude::*;

fn constant(w: u32, h: u32, px: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb(px))
}

/// A smooth picture: diagonal gradient in red, horizontal in green,
/// vertical in blue.
fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let fx = x as f64 / (w - 1).max(1) as f64;
        let fy = y as f64 / (h - 1).max(1) as f64;
        Rgb([
            (127.5 * (fx + fy)).round() as u8,
            (255.0 * fx).round() as u8,
            (40.0 + 200.0 * fy).round() as u8,
        ])
    })
}

/// Exact area average (each source pixel weighted by its covered fraction),
/// the definition `cv2.INTER_AREA` implements for downscales.
fn area_reference(img: &RgbImage, w: u32, h: u32) -> Vec<[f64; 3]> {
    let (sw, sh) = img.dimensions();
    let (kx, ky) = (sw as f64 / w as f64, sh as f64 / h as f64);
    let overlap = |a0: f64, a1: f64, p: u32| (a1.min(p as f64 + 1.0) - a0.max(p as f64)).max(0.0);
    let mut out = Vec::new();
    for y in 0..h {
        let (y0, y1) = (y as f64 * ky, (y + 1) as f64 * ky);
        for x in 0..w {
            let (x0, x1) = (x as f64 * kx, (x + 1) as f64 * kx);
            let mut acc = [0.0; 3];
            let mut total = 0.0;
            for sy in y0.floor() as u32..(y1.ceil() as u32).min(sh) {
                for sx in x0.floor() as u32..(x1.ceil() as u32).min(sw) {
                    let wgt = overlap(x0, x1, sx) * overlap(y0, y1, sy);
                    let p = img.get_pixel(sx, sy).0;
                    for c in 0..3 {
                        acc[c] += wgt * p[c] as f64;
                    }
                    total += wgt;
                }
            }
            out.push(acc.map(|a| a / total));
        }
    }
    out
}

fn max_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    let pairs = a.as_raw().iter().zip(b.as_raw());
    pairs.map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

#[test]
fn constant_image_stays_constant() {
    let img = constant(123, 77, [10, 200, 255]);
    for (w, h) in [(40, 25), (300, 190), (123, 77), (1, 1), (500, 3)] {
        let out = resize_exact(&img, w, h).unwrap();
        assert_eq!(out.dimensions(), (w, h));
        assert!(out.pixels().all(|p| p.0 == [10, 200, 255]), "{w}x{h}");
        let crop = resize_cover_crop(&img, (w.max(2), h.max(2)), (1, 1), Crop::At(0.3, 0.9)).unwrap();
        assert_eq!(crop.get_pixel(0, 0).0, [10, 200, 255]);
    }
}

#[test]
fn downscale_matches_area_average() {
    let img = gradient(301, 203);
    for (w, h) in [(100, 67), (97, 61), (150, 101), (33, 20)] {
        let out = resize_exact(&img, w, h).unwrap();
        let reference = area_reference(&img, w, h);
        let mut total = 0.0;
        for (p, r) in out.pixels().zip(&reference) {
            for c in 0..3 {
                let d = (p.0[c] as f64 - r[c]).abs();
                assert!(d <= 2.0, "{w}x{h}: {:?} vs {r:?}", p.0);
                total += d;
            }
        }
        let mean = total / (3 * w * h) as f64;
        assert!(mean < 0.5, "{w}x{h}: mean error {mean}");
    }
}

#[test]
fn upscale_of_gradient_stays_smooth() {
    let img = gradient(40, 30);
    let out = resize_exact(&img, 130, 97).unwrap();
    // Green is a horizontal ramp: monotone along each row, away from the
    // edges where Lanczos may ring by a level.
    for y in 0..97 {
        for x in 4..125 {
            let (a, b) = (out.get_pixel(x, y).0[1], out.get_pixel(x + 1, y).0[1]);
            assert!(b + 1 >= a, "row {y} col {x}: {a} then {b}");
        }
    }
}

#[test]
fn crop_window_lands_where_asked() {
    // A white 2x2 marker at (60, 20) of a black 200x100 picture, halved to
    // 100x50, lands at (30, 10); a 50x50 window then sees it at 30 - ox.
    let mut img = constant(200, 100, [0, 0, 0]);
    for (x, y) in [(60, 20), (61, 20), (60, 21), (61, 21)] {
        img.put_pixel(x, y, Rgb([255, 255, 255]));
    }
    let brightest = |out: &RgbImage| {
        let (mut best, mut at) = (0, (0, 0));
        for (x, y, p) in out.enumerate_pixels() {
            if p.0[0] > best {
                (best, at) = (p.0[0], (x, y));
            }
        }
        (best, at)
    };
    for (crop, ox) in [
        (Crop::At(0.0, 0.0), 0),
        (Crop::Center, 25),
        (Crop::At(0.2, 0.5), 10),
    ] {
        let out = resize_cover_crop(&img, (100, 50), (50, 50), crop).unwrap();
        assert_eq!(out.dimensions(), (50, 50));
        let (value, at) = brightest(&out);
        assert_eq!(value, 255, "{crop:?}");
        assert_eq!(at, (30 - ox, 10), "{crop:?}");
    }
    // At(1, _) puts the window at the right edge: the marker is outside.
    let out = resize_cover_crop(&img, (100, 50), (50, 50), Crop::At(1.0, 0.0)).unwrap();
    assert_eq!(brightest(&out).0, 0);
}

#[test]
fn crop_without_resize_is_a_plain_copy() {
    let img = gradient(90, 60);
    let out = resize_cover_crop(&img, (90, 60), (64, 32), Crop::At(1.0, 0.5)).unwrap();
    for (x, y, p) in out.enumerate_pixels() {
        assert_eq!(p, img.get_pixel(x + 26, y + 14));
    }
}

#[test]
fn errors_name_the_problem() {
    let img = constant(10, 10, [1, 2, 3]);
    let cases = [
        (resize_exact(&img, 0, 5), "target size 0x5"),
        (resize_exact(&RgbImage::new(0, 3), 5, 5), "source size 0x3"),
        (
            resize_cover_crop(&img, (20, 10), (24, 8), Crop::Center),
            "does not cover",
        ),
        (
            resize_cover_crop(&img, (20, 10), (0, 8), Crop::Center),
            "bucket size 0x8",
        ),
    ];
    for (result, needle) in cases {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert!(err.to_string().contains(needle), "{err}");
    }
}

/// Resize-then-crop, the slow definition `resize_cover_crop` must match.
fn resize_then_crop(img: &RgbImage, resized: (u32, u32), bucket: (u32, u32), crop: Crop) -> RgbImage {
    let full = resize_exact(img, resized.0, resized.1).unwrap();
    let (ox, oy) = crop.offsets((resized.0 - bucket.0, resized.1 - bucket.1));
    image::imageops::crop_imm(&full, ox, oy, bucket.0, bucket.1).to_image()
}

/// A smooth random picture (one slow wave per channel, at most about 1.4
/// levels per pixel), so that filter-tap ties decided by float rounding
/// move a value by a level or two at most.
fn waves(w: u32, h: u32, seed: u32) -> RgbImage {
    let angle = |c: u32| (seed * 3 + c) as f64 * 0.7;
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([0, 1, 2].map(|c| {
            let t = 0.014 * (x as f64 * angle(c).cos() + y as f64 * angle(c).sin());
            (128.0 + 100.0 * (t + seed as f64).sin()).round() as u8
        }))
    })
}

proptest! {
    #[test]
    fn direct_crop_equals_resize_then_crop(
        sw in 1u32..120, sh in 1u32..120, rw in 1u32..160, rh in 1u32..160,
        bw_frac in 0.0f64..=1.0, bh_frac in 0.0f64..=1.0,
        fx in 0.0f32..=1.0, fy in 0.0f32..=1.0, seed in 0u32..1000,
    ) {
        let bucket = (((rw as f64 * bw_frac) as u32).max(1), ((rh as f64 * bh_frac) as u32).max(1));
        let img = waves(sw, sh, seed);
        let fast = resize_cover_crop(&img, (rw, rh), bucket, Crop::At(fx, fy)).unwrap();
        let slow = resize_then_crop(&img, (rw, rh), bucket, Crop::At(fx, fy));
        // Same filter taps up to float rounding, which can decide a box-edge
        // tie the other way or flip a coefficient's last bit.
        prop_assert!(max_diff(&fast, &slow) <= 2, "max diff {}", max_diff(&fast, &slow));
    }

    #[test]
    fn never_panics(
        sw in 1u32..300, sh in 1u32..300, rw in 0u32..300, rh in 0u32..300,
        bw in 0u32..300, bh in 0u32..300, fx in -1.0f32..2.0, fy in -1.0f32..2.0,
    ) {
        let img = constant(sw, sh, [9, 8, 7]);
        if let Ok(out) = resize_exact(&img, rw, rh) {
            prop_assert_eq!(out.dimensions(), (rw, rh));
        }
        match resize_cover_crop(&img, (rw, rh), (bw, bh), Crop::At(fx, fy)) {
            Ok(out) => prop_assert_eq!(out.dimensions(), (bw, bh)),
            Err(_) => prop_assert!(rw < bw || rh < bh || rw.min(rh).min(bw).min(bh) == 0),
        }
    }
}
