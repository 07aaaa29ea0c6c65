//! Perceptual hashes for near-duplicate detection: dHash (gradient) and
//! pHash (low DCT frequencies), 64 bits each, compared by Hamming distance.
//!
//! Both follow the `imagehash` Python package (`dhash`, `phash`) so that
//! thresholds people use with it carry over, with two differences: the
//! thumbnail is made with our area filter (imagehash uses Lanczos), and it is
//! resized in colour and then turned grey (imagehash converts first; both
//! steps are linear, so this only changes rounding, and shrinks less data).
//! Bits are packed row-major, the first bit the most significant, which is
//! the order of imagehash's hex strings.

use std::sync::OnceLock;

use image::RgbImage;

use crate::resize::resize_exact;

/// A grey `w` x `h` thumbnail of `img` (area filter, Rec. 601 luma) as f32.
/// An empty picture gives a black thumbnail.
fn grey_thumbnail(img: &RgbImage, w: u32, h: u32) -> Vec<f32> {
    let Ok(small) = resize_exact(img, w, h) else {
        return vec![0.0; (w * h) as usize];
    };
    small
        .pixels()
        .map(|p| 0.299 * p.0[0] as f32 + 0.587 * p.0[1] as f32 + 0.114 * p.0[2] as f32)
        .collect()
}

/// Pack bits, first one most significant.
fn pack(bits: impl Iterator<Item = bool>) -> u64 {
    bits.fold(0u64, |acc, b| (acc << 1) | b as u64)
}

/// Difference hash: 9x8 grey thumbnail, one bit per horizontal gradient.
///
/// imagehash's `dhash`: bit = `pixel[y][x + 1] > pixel[y][x]` for x < 8.
pub fn dhash(img: &RgbImage) -> u64 {
    let g = grey_thumbnail(img, 9, 8);
    pack((0..8).flat_map(|y| {
        let row = &g[y * 9..y * 9 + 9];
        (0..8).map(move |x| row[x + 1] > row[x])
    }))
}

const N: usize = 32;
const K: usize = 8;

/// `cos(pi / N * (n + 0.5) * k)` for the K lowest frequencies (DCT-II basis).
fn dct_basis() -> &'static [[f32; N]; K] {
    static BASIS: OnceLock<[[f32; N]; K]> = OnceLock::new();
    BASIS.get_or_init(|| {
        std::array::from_fn(|k| {
            std::array::from_fn(|n| {
                (std::f64::consts::PI / N as f64 * (n as f64 + 0.5) * k as f64).cos() as f32
            })
        })
    })
}

/// Perceptual hash: 32x32 grey thumbnail, 8x8 lowest DCT frequencies against their median.
///
/// imagehash's `phash`: a 2-D DCT-II (scipy's unnormalised `dct` along both
/// axes; the common scale factor does not change the bits), the top-left 8x8
/// block *including* the DC term, bit = coefficient > median of the 64.
pub fn phash(img: &RgbImage) -> u64 {
    let px = grey_thumbnail(img, N as u32, N as u32);
    let basis = dct_basis();
    // Columns first: rows[k][x] = sum_y basis[k][y] * px[y][x].
    let mut rows = [[0f32; N]; K];
    for (k, row) in rows.iter_mut().enumerate() {
        for (y, line) in px.chunks_exact(N).enumerate() {
            let c = basis[k][y];
            for (acc, &v) in row.iter_mut().zip(line) {
                *acc += c * v;
            }
        }
    }
    let mut coeffs = [0f32; K * K];
    for (ky, row) in rows.iter().enumerate() {
        for kx in 0..K {
            coeffs[ky * K + kx] = row.iter().zip(&basis[kx]).map(|(a, b)| a * b).sum();
        }
    }
    let mut sorted = coeffs;
    sorted.sort_unstable_by(f32::total_cmp);
    let median = (sorted[K * K / 2 - 1] + sorted[K * K / 2]) / 2.0;
    pack(coeffs.iter().map(|&c| c > median))
}

/// Number of differing bits.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

#[cfg(test)]
mod tests;
