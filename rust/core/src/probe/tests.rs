//! Probe tests: magic-byte detection, header-only probing of files (including
//! headers past the first 64 KiB), and the decompression-bomb guard.

use std::path::Path;

use image::{DynamicImage, ImageFormat};

mod alloc_count;

use super::*;
use crate::decode::testimg::*;
use crate::decode::{decode_bytes, decode_file};

#[test]
fn format_comes_from_magic_bytes() {
    let q = DynamicImage::ImageRgb8(quadrants(8, 8));
    let cases: Vec<(&str, Vec<u8>, Option<Format>)> = vec![
        ("jpeg", jpeg(&q.to_rgb8()), Some(Format::Jpeg)),
        ("png", encode(&q, ImageFormat::Png), Some(Format::Png)),
        ("webp", encode(&q, ImageFormat::WebP), Some(Format::WebP)),
        ("bmp", encode(&q, ImageFormat::Bmp), Some(Format::Bmp)),
        ("riff but wave", b"RIFF\x24\0\0\0WAVEfmt ".to_vec(), None),
        ("heif", b"\0\0\0\x18ftypheic\0\0\0\0".to_vec(), None),
        ("pdf", b"%PDF-1.7\n".to_vec(), None),
    ];
    for (name, bytes, want) in cases {
        let got = detect_format(&bytes, Path::new("x.jpg"));
        match want {
            Some(f) => assert_eq!(got.unwrap(), f, "{name}"),
            None => assert_eq!(got.unwrap_err().kind(), "unsupported", "{name}"),
        }
    }
    let e = detect_format(b"%PDF-1.7\n", Path::new("a.png")).unwrap_err();
    assert!(e.to_string().contains("PDF"), "names what it is: {e}");
}

#[test]
fn probe_file_matches_decode_for_every_format() {
    let q = quadrants(64, 32);
    let dq = DynamicImage::ImageRgb8(q.clone());
    let cases = [
        ("p1.jpg", with_exif(&jpeg(&q), 6), Format::Jpeg, (32, 64), 6),
        ("p2.png", encode(&dq, ImageFormat::Png), Format::Png, (64, 32), 1),
        (
            "p3.webp",
            encode(&dq, ImageFormat::WebP),
            Format::WebP,
            (64, 32),
            1,
        ),
        (
            "p4.webp",
            webp_with_exif(&encode(&dq, ImageFormat::WebP), (64, 32), 8),
            Format::WebP,
            (32, 64),
            8,
        ),
        ("p5.bmp", encode(&dq, ImageFormat::Bmp), Format::Bmp, (64, 32), 1),
    ];
    let opts = DecodeOptions::default();
    for (name, bytes, format, size, orientation) in cases {
        let file = TempFile::new(name, &bytes);
        let info = probe_file(&file.0, &opts).unwrap();
        let want = ImageInfo {
            format,
            width: size.0,
            height: size.1,
            orientation,
            has_alpha: false,
        };
        assert_eq!(info, want, "{name}");
        assert_eq!(
            info.format.name(),
            name.rsplit('.').next().unwrap().replace("jpg", "jpeg")
        );
        let d = decode_file(&file.0, &opts).unwrap();
        assert_eq!(d.image.dimensions(), size, "{name}: decoded size == probed size");
    }
}

#[test]
fn probe_file_reads_further_when_the_header_is_past_64_kib() {
    // SOI, two 60 KB APP2 segments, then EXIF and the frame header, past the 64 KiB prefix.
    let base = jpeg(&quadrants(64, 32));
    let padded = with_segment(
        &with_segment(&with_exif(&base, 6), 0xE2, &[7; 60_000]),
        0xE2,
        &[9; 60_000],
    );
    let file = TempFile::new("padded.jpg", &padded);
    let info = probe_file(&file.0, &DecodeOptions::default()).unwrap();
    assert_eq!((info.width, info.height, info.orientation), (32, 64, 6));
}

#[test]
fn probe_file_errors() {
    let empty = TempFile::new("probe-empty.jpg", &[]);
    let text = TempFile::new("probe-text.jpg", b"not a picture at all\n");
    let missing = std::env::temp_dir().join("tsuika-probe-missing.png");
    let cases = [
        (empty.0.as_path(), "empty"),
        (text.0.as_path(), "unsupported"),
        (missing.as_path(), "unreadable"),
    ];
    for (path, want) in cases {
        let e = probe_file(path, &DecodeOptions::default()).unwrap_err();
        assert_eq!((e.kind(), e.path()), (want, Some(path)), "{e}");
    }
}

/// A PNG that claims 100000 x 100000 pixels (10 Gpx) in its IHDR.
fn png_bomb(with_data: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 100_000, 100_000);
    enc.set_color(png::ColorType::Rgb);
    let mut writer = enc.write_header().unwrap();
    if with_data {
        writer
            .write_chunk(
                png::chunk::IDAT,
                &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
            )
            .unwrap();
    }
    drop(writer);
    out
}

/// Memory a refused bomb may cost: the file itself is under 100 bytes, and probing reads a
/// prefix of at most 64 KiB (measured: under 200 bytes in all). Decoding 10 Gpx would take
/// 30 GB, one row of it 300 KB.
const BOMB_BUDGET: usize = 128 * 1024;

/// One entry point run on the bomb.
type Guarded<'a> = dyn Fn() -> Result<()> + 'a;

#[test]
fn png_bomb_is_refused_before_decoding() {
    let opts = DecodeOptions::default();
    for with_data in [false, true] {
        let bytes = png_bomb(with_data);
        let file = TempFile::new(&format!("bomb-{with_data}.png"), &bytes);
        let calls: [(&str, Box<Guarded>); 4] = [
            (
                "probe_bytes",
                Box::new(|| probe_bytes(&bytes, Path::new("bomb.png"), &opts).map(|_| ())),
            ),
            (
                "decode_bytes",
                Box::new(|| decode_bytes(&bytes, Path::new("bomb.png"), &opts).map(|_| ())),
            ),
            ("probe_file", Box::new(|| probe_file(&file.0, &opts).map(|_| ()))),
            (
                "decode_file",
                Box::new(|| decode_file(&file.0, &opts).map(|_| ())),
            ),
        ];
        for (name, call) in calls {
            let (result, used) = alloc_count::measure(call);
            match result {
                Err(Error::TooLarge {
                    width: 100_000,
                    height: 100_000,
                    pixels: 10_000_000_000,
                    limit,
                    ..
                }) => {
                    assert_eq!(limit, crate::decode::DEFAULT_MAX_PIXELS)
                }
                other => panic!("{name}: want TooLarge, got {other:?}"),
            }
            assert!(
                used.total < BOMB_BUDGET,
                "{name} (data {with_data}): allocated {used:?} before refusing"
            );
        }
    }
}

#[test]
fn the_allocation_count_sees_a_decode() {
    // The counter the bomb test relies on does see a real decode's pixel buffer.
    let bytes = encode(&DynamicImage::ImageRgb8(quadrants(256, 256)), ImageFormat::Png);
    let (decoded, used) =
        alloc_count::measure(|| decode_bytes(&bytes, Path::new("q.png"), &DecodeOptions::default()));
    assert_eq!(decoded.unwrap().image.dimensions(), (256, 256));
    assert!(used.largest >= 256 * 256 * 3, "{used:?}");
    assert!(used.total > BOMB_BUDGET, "{used:?}");
}
