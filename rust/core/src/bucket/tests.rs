//! Bucket tests. Expected values are kohya-ss/sd-scripts' results for the same
//! inputs (`make_bucket_resolutions`, `BucketManager.select_bucket`).

use super::*;
use proptest::prelude::*;

fn spec(res: (u32, u32), min_size: u32, max_size: u32, step: u32) -> BucketSpec {
    BucketSpec {
        resolution: res,
        min_size,
        max_size,
        step,
    }
}

const SD15: BucketSpec = BucketSpec {
    resolution: (512, 512),
    min_size: 256,
    max_size: 1024,
    step: 64,
};

#[test]
fn table_matches_kohya_at_512() {
    let expected = vec![
        (256, 832),
        (256, 896),
        (256, 960),
        (256, 1024),
        (320, 704),
        (320, 768),
        (384, 640),
        (448, 576),
        (512, 512),
        (576, 448),
        (640, 384),
        (704, 320),
        (768, 320),
        (832, 256),
        (896, 256),
        (960, 256),
        (1024, 256),
    ];
    assert_eq!(bucket_table(&SD15).unwrap(), expected);
}

#[test]
fn table_matches_kohya_at_768x512() {
    let expected = vec![
        (256, 1024),
        (320, 1024),
        (384, 896),
        (384, 960),
        (384, 1024),
        (448, 832),
        (512, 704),
        (512, 768),
        (576, 576),
        (576, 640),
        (640, 576),
        (704, 512),
        (768, 512),
        (832, 448),
        (896, 384),
        (960, 384),
        (1024, 256),
        (1024, 320),
        (1024, 384),
    ];
    assert_eq!(bucket_table(&spec((768, 512), 256, 1024, 64)).unwrap(), expected);
}

#[test]
fn assign_matches_kohya() {
    let table = bucket_table(&SD15).unwrap();
    // (image, bucket, resized) as kohya's select_bucket returns them.
    let cases = [
        ((4032, 3024), (576, 448), (597, 448)),
        ((3024, 4032), (448, 576), (448, 597)),
        ((640, 384), (640, 384), (640, 384)),
        ((1000, 1000), (512, 512), (512, 512)),
        ((1920, 1080), (640, 384), (683, 384)),
        ((500, 2000), (256, 1024), (256, 1024)),
        ((513, 511), (512, 512), (514, 512)),
        ((300, 200), (640, 384), (640, 427)),
    ];
    for ((w, h), bucket, resized) in cases {
        assert_eq!(
            assign(&table, w, h),
            BucketChoice { bucket, resized },
            "image {w}x{h}"
        );
    }
}

#[test]
fn no_upscale_matches_kohya() {
    let cases = [
        ((4032, 3024), (512, 384), (512, 384)),
        ((1920, 1080), (640, 384), (683, 384)),
        ((3000, 1000), (768, 256), (768, 256)),
        ((300, 200), (256, 192), (300, 200)),
        ((512, 512), (512, 512), (512, 512)),
        ((777, 333), (768, 320), (777, 333)),
        ((1000, 1001), (512, 512), (512, 513)),
    ];
    for ((w, h), bucket, resized) in cases {
        assert_eq!(
            assign_no_upscale(&SD15, w, h),
            BucketChoice { bucket, resized },
            "image {w}x{h}"
        );
    }
}

#[test]
fn no_upscale_tiny_image_gets_one_step_bucket() {
    // kohya would give a 0x0 bucket; we use one step and cover it.
    let c = assign_no_upscale(&SD15, 50, 40);
    assert_eq!(c.bucket, (64, 64));
    assert_eq!(c.resized, (80, 64));
}

#[test]
fn zero_image_sides_do_not_panic() {
    let table = bucket_table(&SD15).unwrap();
    assert_eq!(assign(&table, 0, 100), assign(&table, 1, 100));
    assert_eq!(assign_no_upscale(&SD15, 100, 0), assign_no_upscale(&SD15, 100, 1));
}

#[test]
fn invalid_specs_are_rejected_with_reason() {
    let cases = [
        (spec((512, 512), 256, 1024, 0), "bucket_step"),
        (spec((512, 512), 1024, 256, 64), "larger than max_bucket"),
        (spec((512, 512), 250, 1024, 64), "multiples of bucket_step"),
        (spec((2048, 512), 256, 1024, 64), "does not fit max_bucket"),
        (spec((0, 512), 256, 1024, 64), "zero side"),
        (spec((512, 512), 768, 1024, 64), "below min_bucket"),
    ];
    for (s, needle) in cases {
        let err = bucket_table(&s).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert!(err.to_string().contains(needle), "{s:?}: {err}");
    }
}

/// Valid specs: sides are multiples of the step and the resolution lies
/// between min and max (so the square bucket is within bounds).
fn valid_spec() -> impl Strategy<Value = BucketSpec> {
    (
        prop::sample::select(vec![8u32, 16, 32, 64, 100]),
        1u32..12,
        0u32..12,
    )
        .prop_flat_map(|(step, kmin, extra)| {
            let (min_size, max_size) = (kmin * step, (kmin + extra) * step);
            (min_size..=max_size, min_size..=max_size)
                .prop_map(move |res| spec(res, min_size, max_size, step))
        })
}

proptest! {
    #[test]
    fn table_entries_obey_the_spec(s in valid_spec()) {
        let table = bucket_table(&s).unwrap();
        prop_assert!(!table.is_empty());
        prop_assert!(table.windows(2).all(|p| p[0] < p[1]), "sorted, unique");
        for &(w, h) in &table {
            prop_assert_eq!(w % s.step, 0);
            prop_assert_eq!(h % s.step, 0);
            prop_assert!(w >= s.min_size && w <= s.max_size, "{:?}", (w, h));
            prop_assert!(h >= s.min_size && h <= s.max_size, "{:?}", (w, h));
            prop_assert!(w as u64 * h as u64 <= s.max_area());
            prop_assert!(table.contains(&(h, w)), "transpose of {:?}", (w, h));
        }
    }

    #[test]
    fn assign_picks_nearest_aspect_and_covers(s in valid_spec(), w in 1u32..5000, h in 1u32..5000) {
        let table = bucket_table(&s).unwrap();
        let c = assign(&table, w, h);
        prop_assert!(table.contains(&c.bucket));
        prop_assert!(c.resized.0 >= c.bucket.0 && c.resized.1 >= c.bucket.1, "{:?}", c);
        let err = |b: (u32, u32)| (b.0 as f64 / b.1 as f64 - w as f64 / h as f64).abs();
        let best = table.iter().map(|&b| err(b)).fold(f64::INFINITY, f64::min);
        prop_assert!(err(c.bucket) <= best || c.bucket == (w, h));
        // The cover resize keeps the aspect ratio up to rounding: one side matches.
        prop_assert!(c.resized.0 == c.bucket.0 || c.resized.1 == c.bucket.1, "{:?}", c);
    }

    #[test]
    fn no_upscale_never_enlarges_and_covers(
        s in valid_spec(), w in 1u32..6000, aspect in 0.25f64..4.0,
    ) {
        let h = ((w as f64 / aspect).round() as u32).max(1);
        let c = assign_no_upscale(&s, w, h);
        prop_assert_eq!(c.bucket.0 % s.step, 0);
        prop_assert_eq!(c.bucket.1 % s.step, 0);
        prop_assert!(c.bucket.0 > 0 && c.bucket.1 > 0);
        prop_assert!(c.resized.0 >= c.bucket.0 && c.resized.1 >= c.bucket.1, "{:?}", c);
        if c.bucket.0 <= w && c.bucket.1 <= h && w.min(h) >= 4 * s.step {
            prop_assert!(c.resized.0 <= w && c.resized.1 <= h, "{:?} for {}x{}", c, w, h);
        }
        if (w as u64 * h as u64) <= s.max_area() && w >= s.step && h >= s.step {
            prop_assert_eq!(c.resized, (w, h));
        }
    }
}
