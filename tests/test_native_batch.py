"""tsuika._native.load_batch: the tensor contract, determinism, augmentation
switches, quality against PIL, and errors that become Python exceptions."""

from __future__ import annotations

import numpy as np
import pytest
import tsuika._native as native
from PIL import Image, ImageDraw, ImageFilter


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """A photo-like picture: smooth gradients, shapes, a little noise, blurred."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / (w / 3) + seed),
            128 + 100 * np.cos(y / (h / 4)),
            128 + 80 * np.sin((x + y) / (w / 5)),
        ],
        axis=-1,
    )
    base += rng.normal(0, 6, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(10, w // 3)), y0 + int(rng.integers(10, h // 3))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img.filter(ImageFilter.GaussianBlur(1.2))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    paths = []
    for i, (w, h) in enumerate([(2000, 1500), (1500, 2000), (640, 480), (300, 500)]):
        p = d / f"p{i}.jpg"
        _photo(w, h, i).save(p, quality=92)
        paths.append(str(p))
    png = d / "alpha.png"
    rgba = np.zeros((100, 120, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 0  # fully transparent red -> background
    Image.fromarray(rgba, "RGBA").save(png)
    paths.append(str(png))
    return paths


def test_shape_dtype_range_and_layout(photos):
    out = native.load_batch(photos, 128, 96)
    assert out.shape == (len(photos), 3, 96, 128)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    assert out.min() >= -1.0 and out.max() <= 1.0
    u8 = native.load_batch_u8(photos, 128, 96)
    assert u8.shape == (len(photos), 96, 128, 3) and u8.dtype == np.uint8
    np.testing.assert_allclose(out, u8.transpose(0, 3, 1, 2) / 127.5 - 1.0, atol=1e-6)


def test_alpha_is_composited_on_the_background(photos):
    white = native.load_batch_u8(photos[-1:], 64, 64)
    assert (white == 255).all()
    black = native.load_batch_u8(photos[-1:], 64, 64, background=(0, 0, 0))
    assert (black == 0).all()


def test_flip_true_mirrors_and_per_image_flags(photos):
    plain = native.load_batch_u8(photos, 64, 64)
    flipped = native.load_batch_u8(photos, 64, 64, flip=True)
    np.testing.assert_array_equal(flipped, plain[:, :, ::-1, :])
    flags = [True, False, True, False, False]
    mixed = native.load_batch_u8(photos, 64, 64, flip=flags)
    for i, f in enumerate(flags):
        np.testing.assert_array_equal(mixed[i], flipped[i] if f else plain[i])


def test_random_augmentation_is_deterministic_per_seed_epoch_index(photos):
    kw = dict(flip="random", crop="random", rotation=10.0, color_jitter=0.3, seed=7)
    a = native.load_batch_u8(photos, 96, 96, epoch=1, **kw)
    b = native.load_batch_u8(photos, 96, 96, epoch=1, **kw)
    np.testing.assert_array_equal(a, b)
    c = native.load_batch_u8(photos, 96, 96, epoch=2, **kw)
    assert not np.array_equal(a, c)
    # the draw follows the index, not the position in the batch
    rev = native.load_batch_u8(photos[::-1], 96, 96, epoch=1, indices=list(range(4, -1, -1)), **kw)
    np.testing.assert_array_equal(rev[::-1], a)


def test_thread_count_does_not_change_the_result(photos):
    one = native.load_batch(photos, 80, 64, threads=1)
    two = native.load_batch(photos, 80, 64, threads=2)
    np.testing.assert_array_equal(one, two)


def test_downscale_quality_matches_pil_lanczos(photos):
    """Against PIL's Lanczos on a full decode: mean abs difference < 1% of the range."""
    bw, bh = 576, 448
    out = native.load_batch_u8(photos[:1], bw, bh)[0].astype(np.float32)
    src = Image.open(photos[0]).convert("RGB")
    rw, rh = 597, 448  # kohya's cover size for 2000x1500 into 576x448
    ref = np.asarray(src.resize((rw, rh), Image.LANCZOS), np.float32)
    left = (rw - bw) // 2
    ref = ref[:, left : left + bw]
    mad = np.abs(out - ref).mean() / 255.0
    assert mad < 0.01, f"mean abs difference {mad:.4%} of the range"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(crop="diagonal"), "crop"),
        (dict(flip="sometimes"), "flip"),
        (dict(flip=[True]), "flags"),
        (dict(rotation=-1.0), "rotation"),
        (dict(color_jitter=2.0), "color_jitter"),
        (dict(indices=[0]), "indices"),
        (dict(threads=0), "threads"),
    ],
)
def test_bad_arguments_raise_value_error(photos, kwargs, message):
    with pytest.raises(ValueError, match=message):
        native.load_batch(photos[:2], 64, 64, **kwargs)


def test_zero_size_is_refused(photos):
    with pytest.raises(ValueError, match="positive"):
        native.load_batch(photos[:1], 0, 64)


def test_bad_files_raise_named_exceptions(tmp_path, photos):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    missing = tmp_path / "missing.png"
    cases = [
        (empty, native.EmptyImageError, "empty"),
        (text, native.UnsupportedImageError, "unsupported"),
    ]
    for path, exc, kind in cases:
        with pytest.raises(exc) as info:
            native.load_batch([photos[0], str(path)], 64, 64)
        assert info.value.path == str(path) and info.value.kind == kind
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        native.load_batch([str(missing)], 64, 64)


def test_decompression_bomb_limit_is_configurable(photos):
    with pytest.raises(native.DecompressionBombError, match="limit"):
        native.load_batch(photos[:1], 64, 64, max_pixels=1000)
    assert native.load_batch(photos[:1], 64, 64, max_pixels=10**8).shape == (1, 3, 64, 64)


# --- original size and crop offsets (SDXL's add_time_ids) -----------------------------


def _kohya_cover(bucket: tuple[int, int], w: int, h: int) -> tuple[int, int]:
    """kohya-ss/sd-scripts ``BucketManager.select_bucket``'s cover size, with int(x + 0.5)."""
    bw, bh = bucket
    scale = bh / h if w / h > bw / bh else bw / w
    return max(int(w * scale + 0.5), bw), max(int(h * scale + 0.5), bh)


def _coded(path, w: int, h: int) -> str:
    """A PNG whose pixel (x, y) is (x, y, 0): an output pixel names its source."""
    y, x = np.mgrid[0:h, 0:w]
    Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize(
    "photo, bucket, info, flipped_info",
    [
        # 2000x1500 -> 597x448 cover, 21 px to trim: centre 10, mirrored 21 - 10 = 11.
        (0, (576, 448), (1500, 2000, 0, 10), (1500, 2000, 0, 11)),
        # portrait: the trim is vertical, a flip leaves it alone.
        (1, (448, 576), (2000, 1500, 10, 0), (2000, 1500, 10, 0)),
        # 640x480 into 256x256: cover 341x256, 85 to trim: 42, mirrored 43.
        (2, (256, 256), (480, 640, 0, 42), (480, 640, 0, 43)),
        # 300x500 upscaled into 320x448: cover 320x533, 85 to trim vertically.
        (3, (320, 448), (500, 300, 42, 0), (500, 300, 42, 0)),
    ],
)
def test_with_info_reports_original_size_and_centre_crop(photos, photo, bucket, info, flipped_info):
    for flip, want in ((False, info), (True, flipped_info)):
        pixels, got = native.load_batch(
            photos[photo : photo + 1], *bucket, flip=flip, with_info=True
        )
        assert got.dtype == np.int64 and got.shape == (1, 4)
        assert tuple(got[0]) == want, f"flip={flip}"
        plain = native.load_batch(photos[photo : photo + 1], *bucket, flip=flip)
        np.testing.assert_array_equal(pixels, plain)  # with_info changes nothing else


@pytest.mark.parametrize("crop", ["center", "random"])
@pytest.mark.parametrize("flip", [False, True])
def test_crop_offsets_name_the_pixels_taken(tmp_path, crop, flip):
    """Pictures already at their cover size are cropped without resampling: the
    output pixel (x, y) is the source pixel (left + x, top + y) of the picture as
    the output shows it (mirrored when flipped)."""
    bucket = (64, 48)
    sizes = [(64 + 37, 48), (64, 48 + 29), (64, 48), (64 + 1, 48), (200, 48)]
    paths = [_coded(tmp_path / f"c{i}.png", w, h) for i, (w, h) in enumerate(sizes)]
    u8, info = native.load_batch_u8(paths, *bucket, flip=flip, crop=crop, seed=3, with_info=True)
    f32 = native.load_batch(paths, *bucket, flip=flip, crop=crop, seed=3)
    np.testing.assert_allclose(f32, u8.transpose(0, 3, 1, 2) / 127.5 - 1.0, atol=1e-6)
    lefts = set()
    for (w, h), out, (oh, ow, top, left) in zip(sizes, u8, info, strict=True):
        assert (oh, ow) == (h, w) and _kohya_cover(bucket, w, h) == (w, h)
        assert 0 <= left <= w - bucket[0] and 0 <= top <= h - bucket[1]
        if crop == "center":
            centre = ((w - bucket[0]) // 2, (h - bucket[1]) // 2)
            want_left = (w - bucket[0]) - centre[0] if flip else centre[0]
            assert (top, left) == (centre[1], want_left)
        lefts.add(left)
        shown = np.stack(np.mgrid[0:h, 0:w][::-1], -1)  # (x, y) per pixel
        if flip:
            shown = shown[:, ::-1]
        want = shown[top : top + bucket[1], left : left + bucket[0]]
        np.testing.assert_array_equal(out[..., :2], want)
    if crop == "random":
        assert len(lefts) > 2  # the draws differ between pictures


def test_with_info_for_a_picture_already_at_the_bucket_size(photos):
    u8, info = native.load_batch_u8(photos[2:3], 640, 480, with_info=True)
    assert u8.shape == (1, 480, 640, 3) and tuple(info[0]) == (480, 640, 0, 0)


def test_a_kept_array_is_not_overwritten_by_later_batches(photos):
    """Output buffers are pooled: one goes back only when no array views it."""
    first = native.load_batch(photos[:2], 96, 64)
    kept = first.copy()
    view = first[1]
    del first
    for _ in range(3):
        other = native.load_batch(photos[2:4], 96, 64, flip=True)
        del other
    np.testing.assert_array_equal(view, kept[1])
    del view
    again = native.load_batch(photos[:2], 96, 64)
    np.testing.assert_array_equal(again, kept)
