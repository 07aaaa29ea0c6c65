//! Pixel helpers shared by the decoders: alpha compositing onto a background,
//! CMYK to RGB, and applying an EXIF orientation.

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage};

/// Turn any decoded picture into RGB8, compositing alpha onto `background`.
///
/// Opaque colour types are converted by the `image` crate (16-bit values are
/// rounded to 8 bits); alpha is blended at the source bit depth and rounded once.
pub(super) fn flatten(image: DynamicImage, background: [u8; 3]) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(img) => composite(img.as_raw(), 4, (w, h), background, blend8),
        DynamicImage::ImageLumaA8(img) => composite(img.as_raw(), 2, (w, h), background, blend8),
        DynamicImage::ImageRgba16(img) => composite(img.as_raw(), 4, (w, h), background, blend16),
        DynamicImage::ImageLumaA16(img) => composite(img.as_raw(), 2, (w, h), background, blend16),
        other if other.color().has_alpha() => {
            let img = other.into_rgba16();
            composite(img.as_raw(), 4, (w, h), background, blend16)
        }
        other => other.into_rgb8(),
    }
}

/// Blend interleaved gray+alpha (`channels == 2`) or RGBA (`channels == 4`) samples.
fn composite<T: Copy>(
    raw: &[T],
    channels: usize,
    (w, h): (u32, u32),
    background: [u8; 3],
    blend: fn(T, T, u8) -> u8,
) -> RgbImage {
    let mut out = RgbImage::new(w, h);
    for (dst, px) in out.chunks_exact_mut(3).zip(raw.chunks_exact(channels)) {
        let alpha = px[channels - 1];
        for (c, d) in dst.iter_mut().enumerate() {
            let colour = if channels == 4 { px[c] } else { px[0] };
            *d = blend(colour, alpha, background[c]);
        }
    }
    out
}

/// `round((c * a + bg * (255 - a)) / 255)` on 8-bit samples.
fn blend8(colour: u8, alpha: u8, background: u8) -> u8 {
    let (c, a, b) = (u32::from(colour), u32::from(alpha), u32::from(background));
    ((c * a + b * (255 - a) + 127) / 255) as u8
}

/// The same blend on 16-bit samples (background widened by 257), then
/// rounded to 8 bits: `round(v / 257)` == `(v + 128) / 257` for v <= 65535.
fn blend16(colour: u16, alpha: u16, background: u8) -> u8 {
    let (c, a, b) = (u64::from(colour), u64::from(alpha), u64::from(background) * 257);
    let v = (c * a + b * (65535 - a) + 32767) / 65535;
    ((v + 128) / 257) as u8
}

/// Convert libjpeg-turbo's CMYK output (Adobe's inverted convention: 255 = no
/// ink) to RGB in place, `r = c * k / 255`, as libjpeg-turbo's `cmyk.h`
/// `cmyk_to_rgb` does; the buffer shrinks from 4 to 3 bytes a pixel.
pub(super) fn cmyk_to_rgb_in_place(buf: &mut Vec<u8>) {
    let n = buf.len() / 4;
    for i in 0..n {
        let k = u32::from(buf[4 * i + 3]);
        for c in 0..3 {
            let v = u32::from(buf[4 * i + c]);
            buf[3 * i + c] = ((v * k + 127) / 255) as u8;
        }
    }
    buf.truncate(3 * n);
}

/// Apply EXIF orientation `orientation` (1..8; anything else is left as is).
pub(super) fn orient(image: RgbImage, orientation: u8) -> RgbImage {
    match Orientation::from_exif(orientation) {
        None | Some(Orientation::NoTransforms) => image,
        Some(o) => {
            let mut dynamic = DynamicImage::ImageRgb8(image);
            dynamic.apply_orientation(o);
            dynamic.into_rgb8()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blends_round_and_hit_the_ends() {
        let cases: [(u8, u8, u8, u8); 5] = [
            (200, 255, 0, 200), // opaque keeps the colour
            (200, 0, 17, 17),   // transparent gives the background
            (255, 128, 0, 128), // half over black
            (0, 128, 255, 127), // half over white
            (100, 51, 200, 180),
        ];
        for (c, a, bg, want) in cases {
            assert_eq!(blend8(c, a, bg), want, "blend8({c}, {a}, {bg})");
            let (c16, a16) = (u16::from(c) * 257, u16::from(a) * 257);
            assert_eq!(blend16(c16, a16, bg), want, "blend16({c16}, {a16}, {bg})");
        }
    }

    #[test]
    fn cmyk_inverted_convention() {
        // Adobe-inverted CMYK: (255,0,0,255) = no cyan ink, full magenta and yellow = red.
        let mut buf = vec![255, 0, 0, 255, 255, 255, 255, 0, 255, 255, 255, 128];
        cmyk_to_rgb_in_place(&mut buf);
        assert_eq!(buf, vec![255, 0, 0, 0, 0, 0, 128, 128, 128]);
    }
}
