//! Bad input: each kind of broken, empty, foreign or oversized file maps to
//! its error, and no input (arbitrary, truncated, bit-flipped) makes us panic.

use std::path::Path;

use image::{DynamicImage, ImageFormat};
use proptest::prelude::*;
use turbojpeg::{PixelFormat, Subsamp};

use super::testimg::*;
use super::*;
use crate::probe::probe_bytes;

#[test]
fn harmless_jpeg_warning_is_tolerated() {
    let mut bytes = jpeg(&quadrants(32, 32));
    let eoi = bytes.len() - 2;
    bytes.splice(eoi..eoi, [0x12, 0x34, 0x56]); // "3 extraneous bytes before marker 0xd9"
    let d = full(&bytes).unwrap();
    assert!(close(pixel(&d, 24, 24), YELLOW, 10));
}

fn kind_of(bytes: &[u8]) -> &'static str {
    match full(bytes) {
        Ok(_) => "ok",
        Err(e) => {
            assert_eq!(e.path(), Some(Path::new(PATH)), "error names the file: {e}");
            assert!(
                e.to_string().starts_with(PATH),
                "message starts with the path: {e}"
            );
            e.kind()
        }
    }
}

#[test]
fn bad_input_maps_to_the_right_error() {
    let q = quadrants(64, 48);
    let j = jpeg(&q);
    let prog = turbo(q.as_raw(), 64, 48, PixelFormat::RGB, Subsamp::Sub2x2, true);
    let p = encode(&DynamicImage::ImageRgb8(q.clone()), ImageFormat::Png);
    let w = encode(&DynamicImage::ImageRgb8(q.clone()), ImageFormat::WebP);
    let lossy = hex(WEBP_LOSSY);
    let b = encode(&DynamicImage::ImageRgb8(q), ImageFormat::Bmp);
    let half = |v: &[u8]| v[..v.len() / 2].to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("zero bytes", vec![], "empty"),
        (
            "text named .jpg",
            b"hello, this is not a picture\n".to_vec(),
            "unsupported",
        ),
        (
            "text starting with BM",
            b"BMW drivers, a list\nof names\n".to_vec(),
            "unsupported",
        ),
        ("tiff", b"II*\0\x08\0\0\0\0\0\0\0".to_vec(), "unsupported"),
        ("gif", b"GIF89a\x01\0\x01\0\0\0\0;".to_vec(), "unsupported"),
        ("one byte", vec![0xFF], "unsupported"),
        ("jpeg half", half(&j), "corrupt"),
        (
            "jpeg without its last 40 bytes",
            j[..j.len() - 40].to_vec(),
            "corrupt",
        ),
        ("progressive jpeg half", half(&prog), "corrupt"),
        ("jpeg header only", j[..20].to_vec(), "corrupt"),
        ("png half", half(&p), "corrupt"),
        ("png signature + IHDR only", p[..33].to_vec(), "corrupt"),
        ("webp lossless half", half(&w), "corrupt"),
        ("webp lossy half", half(&lossy), "corrupt"),
        ("bmp half", half(&b), "corrupt"),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(kind_of(&bytes), want, "{name}");
        // The thread's reused libjpeg-turbo handle must survive the failure.
        assert_eq!(kind_of(&j), "ok", "a valid JPEG right after {name}");
    }
}

/// Overwrite the size in a JPEG's SOF0 segment (`FF C0 len P H H W W`).
fn patch_sof(mut jpeg: Vec<u8>, w: u16, h: u16) -> Vec<u8> {
    let sof = jpeg.windows(2).position(|m| m == [0xFF, 0xC0]).expect("SOF0");
    jpeg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpeg
}

#[test]
fn pixel_limit_is_checked_before_decoding() {
    let q = DynamicImage::ImageRgb8(quadrants(64, 48));
    let small = DecodeOptions {
        max_pixels: 64 * 48 - 1,
        ..opts()
    };
    let cases = [
        ("jpeg", jpeg(&q.to_rgb8())),
        ("png", encode(&q, ImageFormat::Png)),
        ("webp", encode(&q, ImageFormat::WebP)),
        ("bmp", encode(&q, ImageFormat::Bmp)),
    ];
    for (name, bytes) in cases {
        for result in [
            decode_bytes(&bytes, Path::new(PATH), &small).map(|_| ()),
            probe_bytes(&bytes, Path::new(PATH), &small).map(|_| ()),
        ] {
            match result {
                Err(Error::TooLarge {
                    width: 64,
                    height: 48,
                    pixels: 3072,
                    limit: 3071,
                    ..
                }) => {}
                other => panic!("{name}: want TooLarge 64x48, got {other:?}"),
            }
        }
        assert!(
            decode_bytes(
                &bytes,
                Path::new(PATH),
                &DecodeOptions {
                    max_pixels: 64 * 48,
                    ..opts()
                }
            )
            .is_ok(),
            "{name}: at the limit"
        );
    }
    let huge_jpeg = patch_sof(jpeg(&quadrants(16, 16)), 60000, 60000);
    assert!(matches!(
        full(&huge_jpeg),
        Err(Error::TooLarge {
            width: 60000,
            height: 60000,
            ..
        })
    ));
}

#[test]
fn decode_file_reads_and_names_the_file() {
    let bytes = with_exif(&jpeg(&quadrants(64, 32)), 8);
    let file = TempFile::new("decode-ok.jpg", &bytes);
    let d = decode_file(&file.0, &opts()).unwrap();
    assert_eq!(d.image, full(&bytes).unwrap().image);
    let png_named_jpg = TempFile::new(
        "actually-png.jpg",
        &encode(&DynamicImage::ImageRgb8(quadrants(8, 8)), ImageFormat::Png),
    );
    assert_eq!(
        decode_file(&png_named_jpg.0, &opts()).unwrap().image,
        quadrants(8, 8)
    );
    let empty = TempFile::new("decode-empty.png", &[]);
    let missing = std::env::temp_dir().join("tsuika-no-such-file.jpg");
    let dir = std::env::temp_dir();
    let cases = [
        (empty.0.as_path(), "empty"),
        (missing.as_path(), "unreadable"),
        (dir.as_path(), "unreadable"),
    ];
    for (path, want) in cases {
        let e = decode_file(path, &opts()).unwrap_err();
        assert_eq!((e.kind(), e.path()), (want, Some(path)), "{e}");
    }
}

/// Small valid pictures of every format, to be broken by the property tests.
fn fuzz_seeds() -> Vec<Vec<u8>> {
    let q = quadrants(24, 16);
    let rgba = DynamicImage::ImageRgba8(halves_rgba(16, 8, [255, 0, 0, 255], [0, 0, 255, 60]));
    vec![
        jpeg(&q),
        turbo(q.as_raw(), 24, 16, PixelFormat::RGB, Subsamp::Sub2x2, true),
        with_exif(&jpeg(&q), 6),
        encode(&DynamicImage::ImageRgb8(q.clone()), ImageFormat::Png),
        encode(&rgba, ImageFormat::Png),
        png_raw(
            (8, 1),
            png::ColorType::Indexed,
            png::BitDepth::Four,
            &[0x01, 0x10, 0x11, 0x00],
            Some(&[255, 0, 0, 0, 255, 0]),
            Some(&[0]),
            None,
        ),
        encode(&rgba, ImageFormat::WebP),
        hex(WEBP_LOSSY),
        hex(WEBP_LOSSY_ALPHA),
        encode(&DynamicImage::ImageRgb8(q), ImageFormat::Bmp),
        encode(&rgba, ImageFormat::Bmp),
    ]
}

fn never_panics(bytes: &[u8]) {
    let path = Path::new(PATH);
    let _ = decode_bytes_scaled(bytes, path, &opts(), &|w, h| (w / 3, h / 3));
    let _ = probe_bytes(bytes, path, &opts());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), magic in 0usize..5) {
        let prefixes: [&[u8]; 5] = [b"", b"\xFF\xD8\xFF", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP", b"BM\0\0\0\0\0\0\0\0\0\0\0\0\x28\0\0\0"];
        let mut data = prefixes[magic].to_vec();
        data.extend(bytes);
        never_panics(&data);
    }

    #[test]
    fn broken_valid_images_never_panic(
        seed in 0usize..11,
        cut in 0.0f64..1.0,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..6),
    ) {
        let mut data = fuzz_seeds().swap_remove(seed);
        for (at, bit) in flips {
            let i = at.index(data.len());
            data[i] ^= 1 << bit;
        }
        data.truncate(((data.len() as f64) * cut) as usize + 1);
        never_panics(&data);
    }
}

/// Found by fuzzing (fuzz/crashers/webp/): a WebP whose EXIF chunk claims
/// more bytes than the file holds made the decoder allocate what it claimed
/// (up to 4 GiB). The orientation is now read in place; a lying chunk is upright.
#[test]
fn webp_exif_chunk_claiming_more_than_the_file_is_upright() {
    let simple = encode(&DynamicImage::ImageRgb8(quadrants(64, 32)), ImageFormat::WebP);
    let good = webp_with_exif(&simple, (64, 32), 6);
    assert_eq!(super::raster::webp_exif_orientation(&good), 6);
    let at = good.windows(4).rposition(|w| w == b"EXIF").unwrap();
    let mut lying = good.clone();
    lying[at + 4..at + 8].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    assert_eq!(super::raster::webp_exif_orientation(&lying), 1);
    let info = probe_bytes(&lying, Path::new("lying.webp"), &opts()).unwrap();
    assert_eq!((info.width, info.height, info.orientation), (64, 32, 1));
    assert_eq!(full(&lying).unwrap().image.dimensions(), (64, 32));
    assert_eq!(super::raster::webp_exif_orientation(&good[..at + 6]), 1);
}

/// Found by fuzzing (fuzz/crashers/webp/bitstream-larger-than-canvas): a 13 x 9
/// canvas whose VP8 bitstream claims 12325 x 13314 made image-webp allocate the
/// bitstream's size. Every bitstream is now held to the pixel limit, before
/// any decoder exists.
#[test]
fn webp_bitstream_larger_than_its_canvas_is_refused_before_decoding() {
    let bytes = include_bytes!("../../../../fuzz/crashers/webp/bitstream-larger-than-canvas");
    assert_eq!(super::raster::webp_bitstream_sizes(bytes), vec![(12325, 13314)]);
    let small = DecodeOptions {
        max_pixels: 1024 * 1024,
        ..Default::default()
    };
    let err = decode_bytes(bytes, Path::new("x.webp"), &small).unwrap_err();
    assert_eq!(err.kind(), "too_large");
    // A real WebP's bitstream is its canvas.
    let simple = encode(&DynamicImage::ImageRgb8(quadrants(64, 32)), ImageFormat::WebP);
    assert_eq!(super::raster::webp_bitstream_sizes(&simple), vec![(64, 32)]);
}
