use super::*;

#[test]
fn normalise_maps_ends_to_minus_one_and_one() {
    assert_eq!(normalise(0), -1.0);
    assert_eq!(normalise(255), 1.0);
}

/// The block writer gives, bit for bit, `v / 127.5 - 1` at the mirrored or
/// plain position, for every byte value and for widths with and without a
/// partial last block.
#[test]
fn float_writer_is_the_per_pixel_formula_at_every_width() {
    for w in [1u32, 3, 15, 16, 17, 31, 32, 33, 100, 576] {
        let h = 3u32;
        let raw: Vec<u8> = (0..w * h * 3).map(|i| (i.wrapping_mul(97) >> 1) as u8).collect();
        let img = RgbImage::from_raw(w, h, raw).unwrap();
        for mirror in [false, true] {
            let mut got = vec![f32::NAN; (3 * w * h) as usize];
            write_chw_f32(&img, mirror, &mut got);
            for (y, x, c) in positions(w, h) {
                let sx = if mirror { w - 1 - x } else { x };
                let want = img.get_pixel(sx, y)[c as usize] as f32 / 127.5 - 1.0;
                let at = ((c * h + y) * w + x) as usize;
                assert_eq!(
                    got[at].to_bits(),
                    want.to_bits(),
                    "w {w} mirror {mirror} at {x},{y},{c}"
                );
            }
        }
    }
    let all: Vec<u8> = (0..=255u8).flat_map(|v| [v, 255 - v, v / 3]).collect();
    let img = RgbImage::from_raw(256, 1, all).unwrap();
    let mut got = vec![0f32; 3 * 256];
    write_chw_f32(&img, false, &mut got);
    for v in 0..=255u8 {
        assert_eq!(
            got[v as usize].to_bits(),
            (v as f32 / 127.5 - 1.0).to_bits(),
            "value {v}"
        );
    }
}

/// (y, x, channel) over a w x h picture.
fn positions(w: u32, h: u32) -> impl Iterator<Item = (u32, u32, u32)> {
    (0..h).flat_map(move |y| (0..w).flat_map(move |x| (0..3).map(move |c| (y, x, c))))
}

#[test]
fn wrong_buffer_size_is_an_error() {
    let paths = vec![PathBuf::from("a.png")];
    let mut out = vec![0f32; 5];
    let err = load_batch_f32(&paths, 4, 4, &BatchOptions::default(), &mut out).unwrap_err();
    assert!(err.to_string().contains("needs 48"), "{err}");
}

fn write_png(dir: &Path, name: &str, w: u32, h: u32, seed: u32) -> PathBuf {
    let img = RgbImage::from_fn(w, h, |x, y| {
        let v = x
            .wrapping_mul(31)
            .wrapping_add(y.wrapping_mul(17))
            .wrapping_add(seed);
        image::Rgb([(v % 251) as u8, (v / 3 % 241) as u8, (v / 7 % 239) as u8])
    });
    let path = dir.join(name);
    img.save(&path).unwrap();
    path
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Any source size into any bucket: the right amount of data, flips mirror
    /// exactly, and the same draw gives the same bytes.
    #[test]
    fn any_size_into_any_bucket(sw in 1u32..200, sh in 1u32..200, bw in 1u32..96, bh in 1u32..96, seed in 0u32..1000) {
        let dir = std::env::temp_dir().join(format!("tsuika-batch-{}-{seed}-{sw}-{sh}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = vec![write_png(&dir, "a.png", sw, sh, seed)];
        let n = (bw * bh * 3) as usize;
        let mut plain = vec![0u8; n];
        let mut flipped = vec![0u8; n];
        load_batch_u8(&paths, bw, bh, &BatchOptions::default(), &mut plain).unwrap();
        let opts = BatchOptions { flip: Flip::All, ..Default::default() };
        load_batch_u8(&paths, bw, bh, &opts, &mut flipped).unwrap();
        for row in 0..bh as usize {
            for x in 0..bw as usize {
                let a = (row * bw as usize + x) * 3;
                let b = (row * bw as usize + (bw as usize - 1 - x)) * 3;
                proptest::prop_assert_eq!(&plain[a..a + 3], &flipped[b..b + 3]);
            }
        }
        let mut again = vec![0f32; n];
        let aug = BatchOptions { flip: Flip::Random, random_crop: true, rotation: 15.0, color_jitter: 0.4, seed: seed as u64, ..Default::default() };
        load_batch_f32(&paths, bw, bh, &aug, &mut again).unwrap();
        let mut twice = vec![0f32; n];
        load_batch_f32(&paths, bw, bh, &aug, &mut twice).unwrap();
        proptest::prop_assert_eq!(&again, &twice);
        proptest::prop_assert!(again.iter().all(|v| (-1.0..=1.0).contains(v)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A picture whose pixel at (x, y) is (x, y, 0), so an output pixel says
/// where in the source it came from (sides below 256). With `block` > 1 each
/// `block` x `block` square holds its block coordinates instead.
fn coded(w: u32, h: u32, block: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| image::Rgb([(x / block) as u8, (y / block) as u8, 0]))
}

/// One picture through `load_batch_u8`: the pixels and the placement.
fn load_u8(path: &Path, bucket: (u32, u32), opts: &BatchOptions) -> (Vec<u8>, Placement) {
    let mut out = vec![0u8; (bucket.0 * bucket.1 * 3) as usize];
    let placements = load_batch_u8(&[path.to_path_buf()], bucket.0, bucket.1, opts, &mut out).unwrap();
    assert_eq!(placements.len(), 1);
    (out, placements[0])
}

/// The source coordinates output pixel (x, y) must show: window at `left_top`
/// in a `resized_w`-wide picture, seen mirrored when `flipped`.
fn source_of(x: u32, y: u32, p: &Placement, flipped: bool) -> (u32, u32) {
    let (left, top) = p.crop_left_top;
    let sx = if flipped {
        p.resized.0 - 1 - (left + x)
    } else {
        left + x
    };
    (sx, top + y)
}

#[test]
fn placement_follows_kohya_cover_rounding_centre_crop_and_mirror() {
    // (original, bucket, crop, flipped) -> (resized, left, top)
    let cases = [
        ((300, 200), (128, 128), Crop::Center, false, (192, 128), 32, 0),
        ((300, 200), (128, 128), Crop::Center, true, (192, 128), 32, 0),
        // 301 * 0.64 = 192.64 -> 193: one odd pixel, trim // 2 = 32, mirrored 33.
        ((301, 200), (128, 128), Crop::Center, false, (193, 128), 32, 0),
        ((301, 200), (128, 128), Crop::Center, true, (193, 128), 33, 0),
        // kohya's 576x448 bucket for a 4:3 photo: cover 597x448.
        ((2000, 1500), (576, 448), Crop::Center, false, (597, 448), 10, 0),
        ((2000, 1500), (576, 448), Crop::Center, true, (597, 448), 11, 0),
        // portrait: the free space is vertical and the flip does not move it.
        ((200, 301), (128, 128), Crop::Center, true, (128, 193), 0, 32),
        (
            (200, 301),
            (128, 128),
            Crop::At(0.0, 1.0),
            true,
            (128, 193),
            0,
            65,
        ),
        (
            (301, 200),
            (128, 128),
            Crop::At(0.0, 0.0),
            false,
            (193, 128),
            0,
            0,
        ),
        (
            (301, 200),
            (128, 128),
            Crop::At(0.0, 0.0),
            true,
            (193, 128),
            65,
            0,
        ),
        (
            (301, 200),
            (128, 128),
            Crop::At(1.0, 0.5),
            false,
            (193, 128),
            65,
            0,
        ),
        // upscale: a small picture covers the bucket by enlarging.
        ((50, 40), (128, 96), Crop::Center, false, (128, 102), 0, 3),
    ];
    for (original, bucket, crop, flipped, resized, left, top) in cases {
        let p = Placement::new(original, bucket, crop, flipped);
        assert_eq!(p.original, original);
        assert_eq!(p.resized, resized, "{original:?} -> {bucket:?}");
        assert_eq!(
            p.crop_left_top,
            (left, top),
            "{original:?} -> {bucket:?} {crop:?} flip {flipped}"
        );
        let row = p.row();
        assert_eq!(
            row,
            [original.1 as i64, original.0 as i64, top as i64, left as i64]
        );
    }
}

#[test]
fn placement_reports_the_source_size_of_a_dct_scaled_jpeg() {
    let dir = std::env::temp_dir().join(format!("tsuika-batch-jpeg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.jpg");
    coded(800, 600, 8).save(&path).unwrap();
    // 800x600 into 64x64 decodes at 1/8 (100x75); the placement still
    // speaks of the 800x600 file and its 85x64 cover.
    for flip in [Flip::Off, Flip::All] {
        let opts = BatchOptions {
            flip: flip.clone(),
            ..Default::default()
        };
        let (_, p) = load_u8(&path, (64, 64), &opts);
        assert_eq!(p.original, (800, 600));
        assert_eq!(p.resized, (85, 64));
        let left = if flip == Flip::All { 11 } else { 10 };
        assert_eq!(p.crop_left_top, (left, 0));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// The reported window is where the pixels came from: a source already at
    /// its cover size (copied, no resampling) and one at twice it (2x2 area
    /// average of constant 2x2 blocks) show, at every output pixel, the
    /// source coordinates the placement names, for centre and random crops,
    /// flipped or not.
    #[test]
    fn crop_offsets_name_the_pixels_taken(bw in 1u32..48, bh in 1u32..48, extra in 0u32..40, wide in proptest::bool::ANY, twice in proptest::bool::ANY, random in proptest::bool::ANY, flip in proptest::bool::ANY, seed in 0u64..1000) {
        let cover = if wide { (bw + extra, bh) } else { (bw, bh + extra) };
        let k = if twice { 2 } else { 1 };
        let dir = std::env::temp_dir().join(format!("tsuika-batch-crop-{}-{seed}-{bw}-{bh}-{extra}-{k}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("coded.png");
        coded(cover.0 * k, cover.1 * k, k).save(&path).unwrap();
        let opts = BatchOptions {
            flip: if flip { Flip::All } else { Flip::Off },
            random_crop: random,
            seed,
            ..Default::default()
        };
        let (out, p) = load_u8(&path, (bw, bh), &opts);
        proptest::prop_assert_eq!(p.original, (cover.0 * k, cover.1 * k));
        proptest::prop_assert_eq!(p.resized, cover);
        let free = (cover.0 - bw, cover.1 - bh);
        proptest::prop_assert!(p.crop_left_top.0 <= free.0 && p.crop_left_top.1 <= free.1);
        if !random {
            let centre = (free.0 / 2, free.1 / 2);
            let left = if flip { free.0 - centre.0 } else { centre.0 };
            proptest::prop_assert_eq!(p.crop_left_top, (left, centre.1));
        }
        for y in 0..bh {
            for x in 0..bw {
                let i = ((y * bw + x) * 3) as usize;
                let (sx, sy) = source_of(x, y, &p, flip);
                proptest::prop_assert_eq!((out[i] as u32, out[i + 1] as u32), (sx, sy), "pixel ({}, {})", x, y);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The batch writer mirrors while it copies; that must give the bytes of the
/// plain order (flip, rotate, jitter on the resized picture), for u8 and f32.
#[test]
fn writer_side_flip_equals_augmenting_in_order() {
    let dir = std::env::temp_dir().join(format!("tsuika-batch-order-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = write_png(&dir, "a.png", 97, 61, 5);
    let bucket = (40, 32);
    let setups = [
        BatchOptions {
            flip: Flip::All,
            ..Default::default()
        },
        BatchOptions {
            flip: Flip::All,
            color_jitter: 0.5,
            seed: 3,
            ..Default::default()
        },
        BatchOptions {
            flip: Flip::All,
            color_jitter: 0.5,
            rotation: 20.0,
            random_crop: true,
            seed: 9,
            ..Default::default()
        },
        BatchOptions {
            flip: Flip::Random,
            rotation: 20.0,
            seed: 11,
            ..Default::default()
        },
    ];
    for opts in setups {
        let draw = draw_for(&opts, 0);
        let decoded = decode::decode_file(&path, &opts.decode).unwrap();
        let resized = cover_size(bucket, decoded.image.width(), decoded.image.height());
        let mut want = resize::resize_cover_crop(&decoded.image, resized, bucket, crop_of(&draw)).unwrap();
        augment::apply(&mut want, &draw);
        let (u8s, _) = load_u8(&path, bucket, &opts);
        assert_eq!(u8s, want.as_raw().clone(), "{opts:?}");
        let mut f32s = vec![0f32; u8s.len()];
        load_batch_f32(std::slice::from_ref(&path), bucket.0, bucket.1, &opts, &mut f32s).unwrap();
        let mut chw = vec![0f32; u8s.len()];
        write_chw_f32(&want, false, &mut chw);
        assert_eq!(f32s, chw, "{opts:?}");
        let (one, _) = load_one(&path, bucket, &draw, &opts.decode).unwrap();
        assert_eq!(one, want);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
