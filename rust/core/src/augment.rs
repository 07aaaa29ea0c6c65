//! Augmentations, deterministic for a given (seed, epoch, index): horizontal
//! flip, small rotation, colour jitter (brightness, contrast, saturation,
//! hue) and the position of a random crop.

use image::RgbImage;

/// Which augmentations a run asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AugmentConfig {
    /// Flip horizontally with probability 1/2.
    pub flip: bool,
    /// Rotate by a uniform angle in [-rotation, rotation] degrees.
    pub rotation: f32,
    /// Jitter strength in [0, 1]: brightness/contrast/saturation factors in
    /// [1-s, 1+s] and a hue shift in [-s/2, s/2] turns... (see `draw`).
    pub color_jitter: f32,
    /// Random crop position instead of the centre.
    pub random_crop: bool,
}

/// The concrete random choices for one image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentDraw {
    pub flip: bool,
    /// Rotation in degrees (0 = none).
    pub angle: f32,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// Hue shift as a fraction of the colour wheel, in [-0.5, 0.5].
    pub hue: f32,
    /// Crop position as fractions (see `resize::Crop::At`); (0.5, 0.5) = centre.
    pub crop: (f32, f32),
}

/// Draw the augmentation for image `index` of `epoch` under `seed`.
pub fn draw(cfg: &AugmentConfig, seed: u64, epoch: u64, index: u64) -> AugmentDraw {
    let _ = (cfg, seed, epoch, index);
    todo!("draw")
}

/// Mirror left-right in place.
pub fn flip_horizontal(img: &mut RgbImage) {
    let _ = img;
    todo!("flip_horizontal")
}

/// Rotate about the centre by `degrees`, same size, edges filled by reflection.
pub fn rotate(img: &RgbImage, degrees: f32) -> RgbImage {
    let _ = (img, degrees);
    todo!("rotate")
}

/// Apply brightness, contrast, saturation and hue from `d` in place.
pub fn color_jitter(img: &mut RgbImage, d: &AugmentDraw) {
    let _ = (img, d);
    todo!("color_jitter")
}

/// Apply flip, rotation and colour jitter of `d` (crop is applied by resize).
pub fn apply(img: &mut RgbImage, d: &AugmentDraw) {
    let _ = (img, d);
    todo!("apply")
}
