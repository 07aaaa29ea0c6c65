//! Bilinear rotation with symmetric reflection at the edges (the picture is
//! mirrored about its border, as `cv2.BORDER_REFLECT` / numpy's `symmetric`
//! pad), so rotated corners show picture content, never black.

use image::RgbImage;

/// Fixed-point position bits; the low bits give the bilinear weights.
const POS_BITS: u32 = 16;
/// Bilinear weight bits (weights in [0, 1024]); 8-bit pixels times two
/// weights stay below 2^28, well within u32.
const W_BITS: u32 = 10;
const W_ONE: u32 = 1 << W_BITS;

/// Index `i` folded into [0, n) by mirroring about -0.5 and n - 0.5.
#[inline]
fn reflect(i: i64, n: i64) -> usize {
    let m = i.rem_euclid(2 * n);
    (if m >= n { 2 * n - 1 - m } else { m }) as usize
}

pub(super) fn rotate_reflect(img: &RgbImage, degrees: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    if degrees == 0.0 || !degrees.is_finite() || w == 0 || h == 0 {
        return img.clone();
    }
    let (sin, cos) = (degrees as f64).to_radians().sin_cos();
    let (cx, cy) = ((w - 1) as f64 / 2.0, (h - 1) as f64 / 2.0);
    let one = (1u64 << POS_BITS) as f64;
    // Output (x, y) samples the source at centre + R(angle) * (x - cx, y - cy),
    // which turns the picture counter-clockwise on screen (y points down).
    let step_x = (cos * one).round() as i64;
    let step_y = (sin * one).round() as i64;
    let src = img.as_raw();
    let stride = w as usize * 3;
    let mut out = vec![0u8; src.len()];
    for (y, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let dy = y as f64 - cy;
        let mut sx = ((cx - cos * cx - sin * dy) * one).round() as i64;
        let mut sy = ((cy - sin * cx + cos * dy) * one).round() as i64;
        for px in out_row.chunks_exact_mut(3) {
            sample(src, (w as i64, h as i64), stride, sx, sy, px);
            sx += step_x;
            sy += step_y;
        }
    }
    RgbImage::from_raw(w, h, out).expect("buffer has w*h*3 bytes")
}

/// Bilinear sample at fixed-point (sx, sy) into `px`.
#[inline]
fn sample(src: &[u8], (w, h): (i64, i64), stride: usize, sx: i64, sy: i64, px: &mut [u8]) {
    let (ix, iy) = (sx >> POS_BITS, sy >> POS_BITS);
    let shift = POS_BITS - W_BITS;
    let fx = ((sx & ((1 << POS_BITS) - 1)) >> shift) as u32;
    let fy = ((sy & ((1 << POS_BITS) - 1)) >> shift) as u32;
    let fx1 = W_ONE - fx;
    let fy1 = W_ONE - fy;
    let blend = |a: [u8; 6], b: [u8; 6], px: &mut [u8]| {
        for c in 0..3 {
            let top = a[c] as u32 * fx1 + a[c + 3] as u32 * fx;
            let bot = b[c] as u32 * fx1 + b[c + 3] as u32 * fx;
            px[c] = ((top * fy1 + bot * fy + (1 << (2 * W_BITS - 1))) >> (2 * W_BITS)) as u8;
        }
    };
    if ix >= 0 && ix + 1 < w && iy >= 0 && iy + 1 < h {
        // Inside: two 6-byte runs (pixel and right neighbour) on two rows.
        let at = iy as usize * stride + ix as usize * 3;
        let a: [u8; 6] = src[at..at + 6].try_into().expect("6 bytes");
        let b: [u8; 6] = src[at + stride..at + stride + 6].try_into().expect("6 bytes");
        blend(a, b, px);
    } else {
        let (x0, x1) = (reflect(ix, w) * 3, reflect(ix + 1, w) * 3);
        let (r0, r1) = (reflect(iy, h) * stride, reflect(iy + 1, h) * stride);
        let run = |r: usize| std::array::from_fn(|i| src[r + if i < 3 { x0 + i } else { x1 + i - 3 }]);
        blend(run(r0), run(r1), px);
    }
}
