//! Perceptual hashes for near-duplicate detection: dHash (gradient) and
//! pHash (low DCT frequencies), 64 bits each, compared by Hamming distance.

use image::RgbImage;

/// Difference hash: 9x8 grey thumbnail, one bit per horizontal gradient.
pub fn dhash(img: &RgbImage) -> u64 {
    let _ = img;
    todo!("dhash")
}

/// Perceptual hash: 32x32 grey thumbnail, 8x8 lowest DCT frequencies against their median.
pub fn phash(img: &RgbImage) -> u64 {
    let _ = img;
    todo!("phash")
}

/// Number of differing bits.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}
