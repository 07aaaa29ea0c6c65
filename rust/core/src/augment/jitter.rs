//! torchvision `ColorJitter` semantics in integer arithmetic: brightness
//! and contrast are per-channel maps folded into one 256-entry table
//! (clamping after each, as torchvision's `_blend` does), saturation blends
//! with the Rec. 601 grey in Q16, and hue rotates in HSV in Q16 sectors.

use image::RgbImage;

use super::AugmentDraw;

const Q: i32 = 16;
const ONE: i32 = 1 << Q;
const HALF: i32 = 1 << (Q - 1);
/// Rec. 601 luma weights in Q16 (0.299, 0.587, 0.114; sum = 65536), as
/// torchvision's `rgb_to_grayscale` (0.2989, 0.587, 0.114).
const GREY: [i32; 3] = [19595, 38470, 7471];

/// `2^32 / c` for chroma c in 1..=255 (entry 0 unused).
const RECIP: [i64; 256] = {
    let mut t = [0i64; 256];
    let mut c = 1;
    while c < 256 {
        t[c] = (1i64 << 32) / c as i64;
        c += 1;
    }
    t
};

#[inline]
fn grey(p: [i32; 3]) -> i32 {
    (p[0] * GREY[0] + p[1] * GREY[1] + p[2] * GREY[2] + HALF) >> Q
}

#[inline]
fn clamp_u8(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

pub(super) fn color_jitter(img: &mut RgbImage, d: &AugmentDraw) {
    let brightness = d.brightness != 1.0;
    let contrast = d.contrast != 1.0;
    let saturation = d.saturation != 1.0;
    let hue = d.hue != 0.0 && d.hue.is_finite();
    if !(brightness || contrast || saturation || hue) {
        return;
    }
    let b = d.brightness.max(0.0) as f64;
    let lut_b: [u8; 256] = std::array::from_fn(|v| clamp_u8(v as f64 * b));
    let lut = if contrast {
        let c = d.contrast.max(0.0) as f64;
        let mean = mean_grey(img, &lut_b);
        std::array::from_fn(|v| clamp_u8(c * lut_b[v] as f64 + (1.0 - c) * mean))
    } else {
        lut_b
    };
    // Capped so that the Q16 products stay within i32.
    let fs = (d.saturation.clamp(0.0, 64.0) * ONE as f32).round() as i32;
    let shift = (d.hue.rem_euclid(1.0) * (6 * ONE) as f32).round() as i32;
    match (saturation, hue) {
        (false, false) => per_pixel::<false, false>(img, &lut, fs, shift),
        (true, false) => per_pixel::<true, false>(img, &lut, fs, shift),
        (false, true) => per_pixel::<false, true>(img, &lut, fs, shift),
        (true, true) => per_pixel::<true, true>(img, &lut, fs, shift),
    }
}

/// Table, then saturation, then hue on every pixel; the steps are chosen at
/// compile time so the loop carries no branches for them.
fn per_pixel<const SAT: bool, const HUE: bool>(img: &mut RgbImage, lut: &[u8; 256], fs: i32, shift: i32) {
    let (pixels, _) = img.as_chunks_mut::<3>();
    for px in pixels {
        let mut p = [lut[px[0] as usize], lut[px[1] as usize], lut[px[2] as usize]].map(i32::from);
        if SAT {
            let g = grey(p) * (ONE - fs);
            p = p.map(|v| ((v * fs + g + HALF) >> Q).clamp(0, 255));
        }
        if HUE {
            p = shift_hue(p, shift);
        }
        *px = p.map(|v| v as u8);
    }
}

/// Mean grey of the picture after the brightness table (torchvision's
/// `adjust_contrast` blends with this scalar).
fn mean_grey(img: &RgbImage, lut_b: &[u8; 256]) -> f64 {
    let n = (img.width() as u64 * img.height() as u64).max(1);
    let sum: u64 = img
        .chunks_exact(3)
        .map(|px| grey([px[0], px[1], px[2]].map(|v| lut_b[v as usize] as i32)) as u64)
        .sum();
    sum as f64 / n as f64
}

/// Rotate the HSV hue of `p` by `shift` (Q16 sectors of 1/6 turn, in
/// [0, 6 * 2^16)); value and saturation are kept exactly.
#[inline]
fn shift_hue(p: [i32; 3], shift: i32) -> [i32; 3] {
    let [r, g, b] = p;
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let c = max - min;
    if c == 0 {
        return p;
    }
    // (d << Q) / c through a reciprocal table: off by at most one Q16 unit,
    // far below the half level that rounding back to u8 tolerates.
    let div = |d: i32| ((d as i64 * RECIP[c as usize]) >> Q) as i32;
    let h = if max == r {
        div(g - b)
    } else if max == g {
        (2 << Q) + div(b - r)
    } else {
        (4 << Q) + div(r - g)
    };
    let h = (h + shift).rem_euclid(6 << Q);
    let (sector, f) = (h >> Q, h & (ONE - 1));
    let up = min + ((c * f + HALF) >> Q);
    let down = max - ((c * f + HALF) >> Q);
    match sector {
        0 => [max, up, min],
        1 => [down, max, min],
        2 => [min, max, up],
        3 => [min, down, max],
        4 => [up, min, max],
        _ => [max, min, down],
    }
}
