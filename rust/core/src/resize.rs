//! Resize into a bucket and crop: an area-style filter when shrinking,
//! Lanczos when enlarging (SIMD through `fast_image_resize`).

use image::RgbImage;

use crate::error::Result;

/// Where the crop window sits inside the resized picture.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Crop {
    /// Centred window.
    Center,
    /// Window at a fraction of the free space on each axis: (0,0) is the
    /// top-left corner, (1,1) the bottom-right.
    At(f32, f32),
}

/// Resize `img` to exactly `width` x `height` (area filter down, Lanczos up).
pub fn resize_exact(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let _ = (img, width, height);
    todo!("resize_exact")
}

/// Resize `img` to `resized` (which covers the bucket) and crop the
/// `bucket` window at `crop`.
pub fn resize_cover_crop(
    img: &RgbImage,
    resized: (u32, u32),
    bucket: (u32, u32),
    crop: Crop,
) -> Result<RgbImage> {
    let _ = (img, resized, bucket, crop);
    todo!("resize_cover_crop")
}
