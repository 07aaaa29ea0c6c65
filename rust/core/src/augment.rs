//! Augmentations, deterministic for a given (seed, epoch, index): horizontal
//! flip, small rotation, colour jitter (brightness, contrast, saturation,
//! hue) and the position of a random crop.
//!
//! The colour semantics are torchvision's `ColorJitter` (brightness
//! multiplies, contrast blends with the mean grey, saturation blends with the
//! per-pixel grey, hue rotates in HSV), applied in that fixed order rather
//! than torchvision's random order so that a draw fully describes the result.

mod jitter;
mod rotate;

use image::RgbImage;

/// Which augmentations a run asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AugmentConfig {
    /// Flip horizontally with probability 1/2.
    pub flip: bool,
    /// Rotate by a uniform angle in [-rotation, rotation] degrees.
    pub rotation: f32,
    /// Jitter strength s >= 0 (typically in [0, 1]): brightness, contrast
    /// and saturation factors uniform in [max(0, 1-s), 1+s], hue shift
    /// uniform in [-s/4, s/4] turns (see [`draw`]).
    pub color_jitter: f32,
    /// Random crop position instead of the centre.
    pub random_crop: bool,
}

/// The concrete random choices for one image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentDraw {
    pub flip: bool,
    /// Rotation in degrees, counter-clockwise (0 = none).
    pub angle: f32,
    /// Brightness factor (1 = unchanged, 0 = black).
    pub brightness: f32,
    /// Contrast factor (1 = unchanged, 0 = flat mean grey).
    pub contrast: f32,
    /// Saturation factor (1 = unchanged, 0 = greyscale).
    pub saturation: f32,
    /// Hue shift as a fraction of the colour wheel, in [-0.5, 0.5].
    pub hue: f32,
    /// Crop position as fractions (see `resize::Crop::At`); (0.5, 0.5) = centre.
    pub crop: (f32, f32),
}

impl AugmentDraw {
    /// The draw that changes nothing.
    pub const IDENTITY: AugmentDraw = AugmentDraw {
        flip: false,
        angle: 0.0,
        brightness: 1.0,
        contrast: 1.0,
        saturation: 1.0,
        hue: 0.0,
        crop: (0.5, 0.5),
    };
}

impl Default for AugmentDraw {
    fn default() -> Self {
        AugmentDraw::IDENTITY
    }
}

/// splitmix64's output function (Steele, Lea & Flood 2014; Vigna's
/// reference constants): a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// splitmix64 stream seeded from a hash of (seed, epoch, index).
struct SplitMix(u64);

impl SplitMix {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    fn new(seed: u64, epoch: u64, index: u64) -> Self {
        let h = mix64(seed.wrapping_add(Self::GAMMA));
        let h = mix64(h ^ epoch.wrapping_mul(0xd1b5_4a32_d192_ed03));
        SplitMix(mix64(h ^ index.wrapping_mul(0xaef1_7502_108e_f2d9)))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        mix64(self.0)
    }

    /// Uniform in [0, 1) with 24 bits (all an f32 mantissa holds).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in [-r, r).
    fn symmetric(&mut self, r: f32) -> f32 {
        (2.0 * self.unit() - 1.0) * r
    }
}

/// Draw the augmentation for image `index` of `epoch` under `seed`.
///
/// A splitmix64 stream seeded by hashing (seed, epoch, index) gives, in this
/// order: flip (top bit, p = 1/2), angle in [-rotation, rotation], brightness,
/// contrast, saturation factors `1 + s * u` with u uniform in [-1, 1)
/// (clamped at 0), hue in [-s/4, s/4] turns (SimCLR's hue : colour
/// strength ratio of 0.2 : 0.8), crop fractions uniform in [0, 1). Every
/// value is always drawn and disabled ones are then replaced by the identity,
/// so switching one augmentation on or off leaves the others' values alone.
pub fn draw(cfg: &AugmentConfig, seed: u64, epoch: u64, index: u64) -> AugmentDraw {
    let mut rng = SplitMix::new(seed, epoch, index);
    let s = if cfg.color_jitter.is_finite() {
        cfg.color_jitter.max(0.0)
    } else {
        0.0
    };
    let rotation = if cfg.rotation.is_finite() {
        cfg.rotation.abs()
    } else {
        0.0
    };
    let flip = rng.next_u64() >> 63 == 1;
    let angle = rng.symmetric(rotation);
    let brightness = (1.0 + rng.symmetric(s)).max(0.0);
    let contrast = (1.0 + rng.symmetric(s)).max(0.0);
    let saturation = (1.0 + rng.symmetric(s)).max(0.0);
    let hue = rng.symmetric(s / 4.0).clamp(-0.5, 0.5);
    let crop = (rng.unit(), rng.unit());
    let id = AugmentDraw::IDENTITY;
    let jitter = s > 0.0;
    AugmentDraw {
        flip: cfg.flip && flip,
        angle: if rotation > 0.0 { angle } else { id.angle },
        brightness: if jitter { brightness } else { id.brightness },
        contrast: if jitter { contrast } else { id.contrast },
        saturation: if jitter { saturation } else { id.saturation },
        hue: if jitter { hue } else { id.hue },
        crop: if cfg.random_crop { crop } else { id.crop },
    }
}

/// Mirror left-right in place.
pub fn flip_horizontal(img: &mut RgbImage) {
    let row_bytes = img.width() as usize * 3;
    if row_bytes == 0 {
        return;
    }
    for row in img.chunks_exact_mut(row_bytes) {
        let (pixels, _) = row.as_chunks_mut::<3>();
        pixels.reverse();
    }
}

/// Rotate about the centre by `degrees` (counter-clockwise), same size,
/// edges filled by reflection. Bilinear, in fixed point; 0 (or a non-finite
/// angle) returns an exact copy.
pub fn rotate(img: &RgbImage, degrees: f32) -> RgbImage {
    rotate::rotate_reflect(img, degrees)
}

/// Apply brightness, contrast, saturation and hue from `d` in place.
pub fn color_jitter(img: &mut RgbImage, d: &AugmentDraw) {
    jitter::color_jitter(img, d)
}

/// Apply flip, rotation and colour jitter of `d` (crop is applied by resize).
pub fn apply(img: &mut RgbImage, d: &AugmentDraw) {
    if d.flip {
        flip_horizontal(img);
    }
    if d.angle != 0.0 && d.angle.is_finite() {
        *img = rotate(img, d.angle);
    }
    color_jitter(img, d);
}

#[cfg(test)]
mod tests;
