//! Aspect-ratio buckets following kohya-ss/sd-scripts' `BucketManager`, so
//! that users' habits carry over: same table, same choice, same cover-resize
//! rounding, plus kohya's no-upscale mode.

use crate::error::Result;

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

/// Where one image goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketChoice {
    /// The bucket (width, height).
    pub bucket: (u32, u32),
    /// Size the image is resized to before cropping; covers the bucket.
    pub resized: (u32, u32),
}

/// The bucket table for `spec`, sorted and without duplicates.
pub fn bucket_table(spec: &BucketSpec) -> Result<Vec<(u32, u32)>> {
    let _ = spec;
    todo!("bucket_table")
}

/// The bucket of `table` with the nearest aspect ratio to `width` x `height`,
/// and the cover size (kohya's rounding).
pub fn assign(table: &[(u32, u32)], width: u32, height: u32) -> BucketChoice {
    let _ = (table, width, height);
    todo!("assign")
}

/// kohya's no-upscale mode: the bucket is derived from the image itself
/// (shrunk to the max area if larger, never enlarged), rounded to `step`.
pub fn assign_no_upscale(spec: &BucketSpec, width: u32, height: u32) -> BucketChoice {
    let _ = (spec, width, height);
    todo!("assign_no_upscale")
}
