//! Resize into a bucket and crop: an area-style filter when shrinking,
//! Lanczos when enlarging (SIMD through `fast_image_resize`).
//!
//! The area filter is `fast_image_resize`'s `Convolution(Box)` with its
//! adaptive kernel: each output pixel averages the source pixels whose
//! centres fall in its footprint (Pillow's `BOX`, an exact area average at
//! integer ratios), which is what kohya's `cv2.INTER_AREA` does for the
//! downscales that dominate training data. `SuperSampling` is a nearest-
//! neighbour pre-pass and loses that property, so it is not used.
//!
//! [`resize_cover_crop`] resizes straight into the crop window: the window is
//! mapped back to a fractional box of the source and only that box is
//! resampled. `fast_image_resize` takes filter taps from outside the box (up
//! to the image edge), so the result equals resize-then-crop up to rounding,
//! without computing the pixels that would be thrown away.

use std::cell::RefCell;

use fast_image_resize as fr;
use image::RgbImage;

use crate::error::{Error, Result};

/// Where the crop window sits inside the resized picture.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Crop {
    /// Centred window.
    Center,
    /// Window at a fraction of the free space on each axis: (0,0) is the
    /// top-left corner, (1,1) the bottom-right.
    At(f32, f32),
}

impl Crop {
    /// Offset of the window on one axis: `Center` is kohya's
    /// `trim_size // 2`; `At(f, _)` is `round(f * free)` with f clamped to
    /// [0, 1] (non-finite f means centre).
    fn offset(frac: Option<f32>, free: u32) -> u32 {
        match frac {
            None => free / 2,
            Some(f) => {
                let f = if f.is_finite() { f.clamp(0.0, 1.0) } else { 0.5 };
                ((f as f64 * free as f64).round() as u32).min(free)
            }
        }
    }

    /// Window offset (x, y) for `free` = resized - bucket on each axis.
    pub fn offsets(self, free: (u32, u32)) -> (u32, u32) {
        match self {
            Crop::Center => (Crop::offset(None, free.0), Crop::offset(None, free.1)),
            Crop::At(fx, fy) => (Crop::offset(Some(fx), free.0), Crop::offset(Some(fy), free.1)),
        }
    }
}

thread_local! {
    /// One resizer per thread: keeps its scratch buffers between images.
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

fn check_size(what: &str, (w, h): (u32, u32)) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(Error::InvalidArgument(format!(
            "resize: {what} size {w}x{h} has a zero side"
        )));
    }
    Ok(())
}

/// Area filter when no side grows, Lanczos3 otherwise.
fn algorithm(src: (u32, u32), dst: (u32, u32)) -> fr::ResizeAlg {
    if dst.0 <= src.0 && dst.1 <= src.1 {
        fr::ResizeAlg::Convolution(fr::FilterType::Box)
    } else {
        fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3)
    }
}

/// Resample the source box `(left, top, width, height)` of `img` into the
/// `dst`-sized RGB8 buffer `out` with `alg`.
fn resample_into(
    img: &RgbImage,
    crop_box: (f64, f64, f64, f64),
    dst: (u32, u32),
    alg: fr::ResizeAlg,
    out: &mut [u8],
) -> Result<()> {
    let src = fr::images::ImageRef::new(img.width(), img.height(), img.as_raw(), fr::PixelType::U8x3)
        .map_err(|e| Error::InvalidArgument(format!("resize: source buffer: {e}")))?;
    let mut dst_image = fr::images::Image::from_slice_u8(dst.0, dst.1, out, fr::PixelType::U8x3)
        .map_err(|e| Error::InvalidArgument(format!("resize: output buffer: {e}")))?;
    let (left, top, width, height) = crop_box;
    let options = fr::ResizeOptions::new()
        .resize_alg(alg)
        .crop(left, top, width, height);
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst_image, &options))
        .map_err(|e| Error::InvalidArgument(format!("resize: {e}")))
}

/// Like [`resample_into`], into a new picture.
fn resample(
    img: &RgbImage,
    crop_box: (f64, f64, f64, f64),
    dst: (u32, u32),
    alg: fr::ResizeAlg,
) -> Result<RgbImage> {
    let mut out = RgbImage::new(dst.0, dst.1);
    resample_into(img, crop_box, dst, alg, &mut out)?;
    Ok(out)
}

/// Copy the `size` window at `(x, y)` out of `img` into `out` (no resampling).
fn crop_copy_into(img: &RgbImage, (x, y): (u32, u32), size: (u32, u32), out: &mut [u8]) {
    let row_bytes = size.0 as usize * 3;
    let stride = img.width() as usize * 3;
    let raw = img.as_raw();
    for (i, dst) in out.chunks_exact_mut(row_bytes).take(size.1 as usize).enumerate() {
        let start = (y as usize + i) * stride + x as usize * 3;
        dst.copy_from_slice(&raw[start..start + row_bytes]);
    }
}

/// Resize `img` to exactly `width` x `height` (area filter down, Lanczos up).
pub fn resize_exact(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let src = img.dimensions();
    check_size("source", src)?;
    check_size("target", (width, height))?;
    if src == (width, height) {
        return Ok(img.clone());
    }
    let full = (0.0, 0.0, src.0 as f64, src.1 as f64);
    resample(img, full, (width, height), algorithm(src, (width, height)))
}

/// Resize `img` to `resized` (which covers the bucket) and crop the
/// `bucket` window at `crop`.
///
/// Only the window is computed (see the module docs); the filter choice is
/// made on the full `resized` size, as if the whole picture were resized.
pub fn resize_cover_crop(
    img: &RgbImage,
    resized: (u32, u32),
    bucket: (u32, u32),
    crop: Crop,
) -> Result<RgbImage> {
    check_size("bucket", bucket)?;
    let mut out = RgbImage::new(bucket.0, bucket.1);
    resize_cover_crop_into(img, resized, bucket, crop, &mut out)?;
    Ok(out)
}

/// [`resize_cover_crop`] into a caller's RGB8 buffer of exactly
/// `bucket.0 * bucket.1 * 3` bytes (a batch reuses one per thread instead
/// of allocating and zeroing a picture per image).
pub fn resize_cover_crop_into(
    img: &RgbImage,
    resized: (u32, u32),
    bucket: (u32, u32),
    crop: Crop,
    out: &mut [u8],
) -> Result<()> {
    let src = img.dimensions();
    check_size("source", src)?;
    check_size("resized", resized)?;
    check_size("bucket", bucket)?;
    if resized.0 < bucket.0 || resized.1 < bucket.1 {
        return Err(Error::InvalidArgument(format!(
            "resize: resized size {}x{} does not cover bucket {}x{}",
            resized.0, resized.1, bucket.0, bucket.1
        )));
    }
    let need = bucket.0 as usize * bucket.1 as usize * 3;
    if out.len() != need {
        return Err(Error::InvalidArgument(format!(
            "resize: output buffer holds {} bytes, the bucket needs {need}",
            out.len()
        )));
    }
    let (ox, oy) = crop.offsets((resized.0 - bucket.0, resized.1 - bucket.1));
    if resized == src {
        crop_copy_into(img, (ox, oy), bucket, out);
        return Ok(());
    }
    // Map the window back into source coordinates.
    let sx = src.0 as f64 / resized.0 as f64;
    let sy = src.1 as f64 / resized.1 as f64;
    let left = ox as f64 * sx;
    let top = oy as f64 * sy;
    let width = (bucket.0 as f64 * sx).min(src.0 as f64 - left);
    let height = (bucket.1 as f64 * sy).min(src.1 as f64 - top);
    resample_into(
        img,
        (left, top, width, height),
        bucket,
        algorithm(src, resized),
        out,
    )
}

#[cfg(test)]
mod tests;
