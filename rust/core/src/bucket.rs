//! Aspect-ratio buckets following kohya-ss/sd-scripts' `BucketManager`, so
//! that users' habits carry over: same table, same choice, same cover-resize
//! rounding, plus kohya's no-upscale mode.
//!
//! Sources (kohya-ss/sd-scripts): `library/model_util.py::make_bucket_resolutions`
//! for the table, `library/train_util.py::BucketManager.select_bucket` and
//! `BucketManager.round_to_steps` for the assignment. Arithmetic is done in
//! `f64` exactly as Python does it, so that the same image lands in the same
//! bucket with the same resized size.

use crate::error::{Error, Result};

/// The bucket rules for one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketSpec {
    /// Training resolution as (width, height); max area = width * height.
    pub resolution: (u32, u32),
    /// Smallest allowed bucket side.
    pub min_size: u32,
    /// Largest allowed bucket side.
    pub max_size: u32,
    /// Bucket sides are multiples of this.
    pub step: u32,
}

impl BucketSpec {
    /// kohya's `max_area = max_reso[0] * max_reso[1]`.
    pub fn max_area(&self) -> u64 {
        self.resolution.0 as u64 * self.resolution.1 as u64
    }

    /// Check the spec: step > 0, sides multiples of the step, min <= max,
    /// the resolution within max_size (kohya's `BucketManager.__init__`
    /// asserts) and a square bucket of at least `min_size`.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument(format!("bucket spec: {msg}")));
        let (rw, rh) = self.resolution;
        let step = self.step;
        if step == 0 {
            return bad("bucket_step must be > 0".into());
        }
        if rw == 0 || rh == 0 {
            return bad(format!("resolution {rw}x{rh} has a zero side"));
        }
        if self.min_size == 0 || !self.min_size.is_multiple_of(step) || !self.max_size.is_multiple_of(step) {
            return bad(format!(
                "min_bucket {} and max_bucket {} must be positive multiples of bucket_step {step}",
                self.min_size, self.max_size
            ));
        }
        if self.min_size > self.max_size {
            return bad(format!(
                "min_bucket {} is larger than max_bucket {}",
                self.min_size, self.max_size
            ));
        }
        if rw > self.max_size || rh > self.max_size {
            return bad(format!(
                "resolution {rw}x{rh} does not fit max_bucket {}",
                self.max_size
            ));
        }
        let square = square_side(self.max_area(), step);
        if square < self.min_size {
            return bad(format!(
                "resolution {rw}x{rh} gives a square bucket of {square}, below min_bucket {}",
                self.min_size
            ));
        }
        Ok(())
    }
}

/// Where one image goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketChoice {
    /// The bucket (width, height).
    pub bucket: (u32, u32),
    /// Size the image is resized to before cropping; covers the bucket.
    pub resized: (u32, u32),
}

/// kohya: `int(math.sqrt(max_area) // divisible) * divisible`.
fn square_side(max_area: u64, step: u32) -> u32 {
    let side = (max_area as f64).sqrt().floor() as u64;
    // Guard against sqrt rounding up on a perfect square's neighbour.
    let side = if side * side > max_area { side - 1 } else { side };
    (side / step as u64 * step as u64) as u32
}

/// The bucket table for `spec`, sorted and without duplicates.
///
/// kohya's `make_bucket_resolutions`: the square bucket
/// `floor(sqrt(max_area) / step) * step`, then for `width` from `min_size` to
/// `max_size` in steps, `height = min(max_size, (max_area // width) // step * step)`,
/// kept (with its transpose) when `height >= min_size`; sorted as (w, h) tuples.
pub fn bucket_table(spec: &BucketSpec) -> Result<Vec<(u32, u32)>> {
    spec.validate()?;
    let max_area = spec.max_area();
    let step = spec.step as u64;
    let square = square_side(max_area, spec.step);
    let mut table = vec![(square, square)];
    let mut width = spec.min_size as u64;
    while width <= spec.max_size as u64 {
        let height = (max_area / width / step * step).min(spec.max_size as u64);
        if height >= spec.min_size as u64 {
            table.push((width as u32, height as u32));
            table.push((height as u32, width as u32));
        }
        width += step;
    }
    table.sort_unstable();
    table.dedup();
    Ok(table)
}

/// kohya's cover size for `bucket`: if the image is wider than the bucket,
/// match heights (`scale = bucket_h / image_h`), else match widths; then
/// `resized = (int(w * scale + 0.5), int(h * scale + 0.5))`.
pub fn cover_size(bucket: (u32, u32), width: u32, height: u32) -> (u32, u32) {
    let (w, h) = (width as f64, height as f64);
    let image_ar = w / h;
    let bucket_ar = bucket.0 as f64 / bucket.1 as f64;
    let scale = if image_ar > bucket_ar {
        bucket.1 as f64 / h
    } else {
        bucket.0 as f64 / w
    };
    let resized = ((w * scale + 0.5) as u32, (h * scale + 0.5) as u32);
    // kohya's rounding already covers the bucket; max() only guards f64 noise.
    (resized.0.max(bucket.0), resized.1.max(bucket.1))
}

/// The bucket of `table` with the nearest aspect ratio to `width` x `height`,
/// and the cover size (kohya's rounding).
///
/// kohya's `select_bucket` (upscale allowed): an image whose exact size is in
/// the table keeps it; otherwise the first bucket minimising
/// `|bucket_w / bucket_h - w / h|` (numpy `argmin` takes the first of ties).
/// A zero image side is taken as 1; `table` must not be empty (panics).
pub fn assign(table: &[(u32, u32)], width: u32, height: u32) -> BucketChoice {
    assert!(!table.is_empty(), "bucket table is empty");
    let (width, height) = (width.max(1), height.max(1));
    let bucket = if table.contains(&(width, height)) {
        (width, height)
    } else {
        nearest_aspect(table, width as f64 / height as f64)
    };
    BucketChoice {
        bucket,
        resized: cover_size(bucket, width, height),
    }
}

/// First entry of `table` with the smallest aspect-ratio error.
fn nearest_aspect(table: &[(u32, u32)], aspect: f64) -> (u32, u32) {
    let mut best = table[0];
    let mut best_err = f64::INFINITY;
    for &(bw, bh) in table {
        let err = (bw as f64 / bh as f64 - aspect).abs();
        if err < best_err {
            best = (bw, bh);
            best_err = err;
        }
    }
    best
}

/// kohya's `round_to_steps`: `x = int(x + 0.5); x - x % step`.
fn round_to_steps(x: f64, step: u32) -> u32 {
    let x = (x + 0.5) as u32;
    x - x % step
}

/// `num / den` as kohya computes it, with a zero denominator (where Python
/// would raise) treated as an infinitely bad aspect ratio.
fn ratio(num: u32, den: u32) -> f64 {
    if den == 0 {
        f64::INFINITY
    } else {
        num as f64 / den as f64
    }
}

/// kohya's no-upscale mode: the bucket is derived from the image itself
/// (shrunk to the max area if larger, never enlarged), rounded to `step`.
///
/// kohya's `select_bucket` with `no_upscale`: when `w * h > max_area`, the
/// ideal size is `rw = sqrt(max_area * ar)`, `rh = max_area / rw`; kohya
/// tries rounding the width to steps (height follows the aspect) and rounding
/// the height (width follows), keeps the one whose aspect error is strictly
/// smaller (ties go to the height-rounded one) and sets `resized` to the
/// rounded side plus `int(other + 0.5)`. Otherwise `resized` is the image
/// size. The bucket is `resized` floored to `step` on each side.
///
/// Deviation: where kohya would produce a zero bucket side (an image side
/// below `step`), the side becomes `step` and `resized` is the cover size
/// for that bucket (the one case where the image is enlarged).
/// A zero image side or step is taken as 1 (never panics).
pub fn assign_no_upscale(spec: &BucketSpec, width: u32, height: u32) -> BucketChoice {
    let (width, height) = (width.max(1), height.max(1));
    let step = spec.step.max(1);
    let resized = if width as u64 * height as u64 > spec.max_area() {
        shrink_to_area(spec.max_area() as f64, width as f64 / height as f64, step)
    } else {
        (width, height)
    };
    let bucket = (resized.0 - resized.0 % step, resized.1 - resized.1 % step);
    if bucket.0 == 0 || bucket.1 == 0 {
        let bucket = (bucket.0.max(step), bucket.1.max(step));
        return BucketChoice {
            bucket,
            resized: cover_size(bucket, width, height),
        };
    }
    BucketChoice { bucket, resized }
}

/// The size kohya shrinks an over-large image to (see [`assign_no_upscale`]).
fn shrink_to_area(max_area: f64, aspect: f64, step: u32) -> (u32, u32) {
    let resized_width = (max_area * aspect).sqrt();
    let resized_height = max_area / resized_width;

    let b_width_rounded = round_to_steps(resized_width, step);
    let b_height_in_wr = round_to_steps(b_width_rounded as f64 / aspect, step);
    let ar_width_rounded = ratio(b_width_rounded, b_height_in_wr);

    let b_height_rounded = round_to_steps(resized_height, step);
    let b_width_in_hr = round_to_steps(b_height_rounded as f64 * aspect, step);
    let ar_height_rounded = ratio(b_width_in_hr, b_height_rounded);

    if (ar_width_rounded - aspect).abs() < (ar_height_rounded - aspect).abs() {
        let h = (b_width_rounded as f64 / aspect + 0.5) as u32;
        (b_width_rounded, h)
    } else {
        let w = (b_height_rounded as f64 * aspect + 0.5) as u32;
        (w, b_height_rounded)
    }
}

#[cfg(test)]
mod tests;
