//! The whole training-data path on arbitrary bytes: decode (with DCT scaling)
//! -> cover-resize and crop into a random bucket -> augment, exactly as
//! `batch::load_one` does it. The first 12 bytes choose the bucket and the
//! augmentation; the rest is the file, in any of the four formats.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsuika_core::augment::{draw, AugmentConfig};
use tsuika_core::batch::load_one_bytes;
use tsuika_fuzz::{name, opts, LimitAlloc};

#[global_allocator]
static ALLOC: LimitAlloc = LimitAlloc;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (knobs, file) = data.split_at(12);
    // Buckets from 1x1 to 256x256: the code paths are the same as at 1024,
    // and small buckets keep the run fast enough for millions of executions.
    let bucket = (1 + u32::from(knobs[0]), 1 + u32::from(knobs[1]));
    let cfg = AugmentConfig {
        flip: knobs[2] & 1 == 1,
        rotation: f32::from(knobs[3]) / 4.0,
        color_jitter: f32::from(knobs[4]) / 128.0,
        random_crop: knobs[2] & 2 == 2,
    };
    let seed = u64::from_le_bytes(knobs[4..12].try_into().unwrap());
    let d = draw(&cfg, seed, u64::from(knobs[5]), u64::from(knobs[6]));
    if let Ok((img, _placement)) = load_one_bytes(file, name(), bucket, &d, &opts()) {
        assert_eq!(img.dimensions(), bucket);
    }
});
