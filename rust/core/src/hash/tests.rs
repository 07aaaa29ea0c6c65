use super::*;
use image::Rgb;

/// Tiny xorshift for test pictures.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % n as u64) as u32
    }
}

/// A picture-like scene: a gradient background and a few solid discs and
/// boxes in random colours and places.
fn scene(seed: u64, w: u32, h: u32) -> RgbImage {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let bg = [0; 3].map(|_| rng.below(256) as f32);
    let mut img = RgbImage::from_fn(w, h, |x, y| {
        let t = (x + y) as f32 / (w + h) as f32;
        Rgb(bg.map(|c| (c * (1.0 - t) + (255.0 - c) * t) as u8))
    });
    for _ in 0..6 {
        let colour = Rgb([0; 3].map(|_| rng.below(256) as u8));
        let (cx, cy, r) = (
            rng.below(w) as i64,
            rng.below(h) as i64,
            10 + rng.below(w / 3) as i64,
        );
        let disc = rng.below(2) == 0;
        for (x, y, p) in img.enumerate_pixels_mut() {
            let (dx, dy) = (x as i64 - cx, y as i64 - cy);
            let inside = if disc {
                dx * dx + dy * dy <= r * r
            } else {
                dx.abs() <= r && dy.abs() <= r / 2
            };
            if inside {
                *p = colour;
            }
        }
    }
    img
}

/// The same scene after a resize and JPEG-like noise (+-8 levels).
fn degraded(img: &RgbImage, seed: u64) -> RgbImage {
    let (w, h) = img.dimensions();
    let mut out = resize_exact(img, w * 9 / 10, h * 9 / 10).unwrap();
    let mut rng = Rng(seed | 1);
    for v in out.iter_mut() {
        *v = (*v as i32 + rng.below(17) as i32 - 8).clamp(0, 255) as u8;
    }
    out
}

type Hash = fn(&RgbImage) -> u64;
const HASHES: [(&str, Hash); 2] = [("dhash", dhash), ("phash", phash)];

/// `img` compressed as a 4:2:0 JPEG at `quality` and decoded back by our decoder.
fn reencoded(img: &RgbImage, quality: i32) -> RgbImage {
    let mut c = turbojpeg::Compressor::new().expect("compressor");
    c.set_quality(quality).expect("quality");
    c.set_subsamp(turbojpeg::Subsamp::Sub2x2).expect("subsamp");
    let (w, h) = (img.width() as usize, img.height() as usize);
    let bytes = c
        .compress_to_vec(turbojpeg::Image {
            pixels: img.as_raw().as_slice(),
            width: w,
            pitch: 3 * w,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        })
        .expect("compress");
    crate::decode::testimg::full(&bytes).expect("decode").image
}

/// The data validator's near-duplicate threshold (`DHASH_MAX_DISTANCE`,
/// `PHASH_MAX_DISTANCE` in `tsuika.data.validate`): what a user re-saves or re-scales
/// must stay within it, an unrelated picture beyond it.
const NEAR: u32 = 10;

#[test]
fn reencoding_and_small_resizes_keep_the_hash() {
    let others: Vec<RgbImage> = (0..8).map(|s| scene(s + 500, 256, 192)).collect();
    for seed in 0..8 {
        let img = scene(seed, 256, 192);
        let variants = [
            ("JPEG q90", reencoded(&img, 90)),
            ("JPEG q40", reencoded(&img, 40)),
            ("JPEG q90 then q60", reencoded(&reencoded(&img, 90), 60)),
            ("shrunk to 90%", resize_exact(&img, 230, 173).unwrap()),
            ("grown to 125%", resize_exact(&img, 320, 240).unwrap()),
            ("halved", resize_exact(&img, 128, 96).unwrap()),
        ];
        for (name, hash) in HASHES {
            let h = hash(&img);
            let nearest_other = others.iter().map(|o| hamming(h, hash(o))).min().unwrap();
            assert!(
                nearest_other > 10,
                "{name} seed {seed}: another scene at {nearest_other}"
            );
            for (what, v) in &variants {
                let d = hamming(h, hash(v));
                assert!(d <= NEAR, "{name} seed {seed} {what}: distance {d}");
                assert!(
                    d < nearest_other,
                    "{name} seed {seed} {what}: {d} >= {nearest_other}"
                );
            }
        }
    }
}

#[test]
fn near_duplicates_are_close() {
    for seed in 0..20 {
        let img = scene(seed, 256, 192);
        let copy = degraded(&img, seed + 100);
        for (name, hash) in HASHES {
            let d = hamming(hash(&img), hash(&copy));
            assert!(d <= 10, "{name} seed {seed}: distance {d}");
        }
    }
}

#[test]
fn unrelated_images_are_far() {
    for (name, hash) in HASHES {
        let hashes: Vec<u64> = (0..16).map(|s| hash(&scene(s + 1000, 256, 192))).collect();
        let mut total = 0;
        let mut pairs = 0;
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                total += hamming(hashes[i], hashes[j]);
                pairs += 1;
            }
        }
        let mean = total as f64 / pairs as f64;
        assert!(mean > 20.0, "{name}: mean distance {mean}");
    }
}

#[test]
fn dhash_bits_follow_the_gradient() {
    let rising = RgbImage::from_fn(90, 80, |x, _| Rgb([(x * 2) as u8; 3]));
    let falling = RgbImage::from_fn(90, 80, |x, _| Rgb([255 - (x * 2) as u8; 3]));
    assert_eq!(dhash(&rising), u64::MAX);
    assert_eq!(dhash(&falling), 0);
    // Only the top half rises: the first 32 bits (rows 0..4) are set.
    let half = RgbImage::from_fn(90, 80, |x, y| Rgb([if y < 40 { (x * 2) as u8 } else { 100 }; 3]));
    assert_eq!(dhash(&half), 0xffff_ffff_0000_0000);
}

#[test]
fn phash_sees_low_frequencies() {
    // Left dark, right bright: the first horizontal frequency (bit 1 of row
    // 0) is strongly negative, the DC term (bit 0) strongly positive.
    let edge = RgbImage::from_fn(64, 64, |x, _| Rgb([if x < 32 { 20 } else { 230 }; 3]));
    let h = phash(&edge);
    assert_eq!(h >> 63, 1, "DC above the median");
    assert_eq!((h >> 62) & 1, 0, "first horizontal frequency below it");
    // Mirroring the picture flips the sign of the odd horizontal frequencies.
    let mirrored = image::imageops::flip_horizontal(&edge);
    assert_eq!((phash(&mirrored) >> 62) & 1, 1);
}

#[test]
fn hashes_handle_tiny_and_empty_pictures() {
    let tiny = RgbImage::from_pixel(1, 1, Rgb([9, 9, 9]));
    let empty = RgbImage::new(0, 0);
    for (_, hash) in HASHES {
        hash(&tiny);
        hash(&empty);
    }
    assert_eq!(hamming(0b1011, 0b0110), 3);
}
