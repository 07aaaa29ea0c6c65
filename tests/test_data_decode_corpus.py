"""The engine on awkward files drawn by the test: every broken file is reported with its
kind (without stopping), and unusual valid files decode like PIL's reference reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import EXIF_MARKER, EXIF_STORED_SIZE, write_bad_files
from PIL import Image, ImageOps
from tsuika import _native

EXCEPTIONS = {
    "empty": _native.EmptyImageError,
    "corrupt": _native.CorruptImageError,
    "unsupported": _native.UnsupportedImageError,
    "too_large": _native.DecompressionBombError,
}


def pil_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB")).astype(int)


def test_scan_reports_every_bad_file_and_goes_on(tmp_path: Path, good_images: dict) -> None:
    bad = write_bad_files(tmp_path / "bad")
    paths = [p for p, _ in bad.values()] + list(good_images.values())
    results = _native.scan([str(p) for p in paths])
    assert [Path(r["path"]).name for r in results] == [p.name for p in paths]
    for (path, kind), result in zip(bad.values(), results, strict=False):
        assert (result["ok"], result["kind"]) == (False, kind), result
        assert str(path) in result["error"]
    assert all(r["ok"] for r in results[len(bad) :])


@pytest.mark.parametrize(
    "name", ["zero.jpg", "truncated.jpg", "text.jpg", "bomb.png", "corrupt.webp"]
)
def test_decode_raises_the_typed_error(tmp_path: Path, name: str) -> None:
    path, kind = write_bad_files(tmp_path)[name]
    with pytest.raises(EXCEPTIONS[kind]) as info:
        _native.decode(path)
    assert info.value.kind == kind and str(path) in str(info.value)


def test_unreadable_symlinks_raise_os_errors(tmp_path: Path) -> None:
    bad = write_bad_files(tmp_path)
    with pytest.raises(FileNotFoundError):
        _native.decode(bad["dangling.png"][0])
    with pytest.raises(OSError):
        _native.decode(bad["loop.jpg"][0])


def test_exif_orientation_is_applied(good_images: dict) -> None:
    pixels = _native.decode(good_images["exif6.jpg"]).astype(int)
    w, h = EXIF_STORED_SIZE
    assert pixels.shape == (w, h, 3)  # rows = stored width: turned upright
    m = EXIF_MARKER
    assert np.abs(pixels[5 : m - 5, h - m + 5 : h - 5].mean((0, 1)) - [230, 20, 20]).max() < 25
    assert np.abs(pixels[5 : m - 5, 5 : m - 5].mean((0, 1)) - [30, 60, 200]).max() < 25
    assert np.abs(pixels - pil_rgb(good_images["exif6.jpg"])).mean() < 3


@pytest.mark.parametrize("name", ["cmyk.jpg", "plain.jpg"])
def test_colours_match_pil(good_images: dict, name: str) -> None:
    ours = _native.decode(good_images[name]).astype(int)
    reference = pil_rgb(good_images[name])
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).mean() < 3


def test_16_bit_pngs_are_scaled_to_8_bits(good_images: dict) -> None:
    """PIL clips 16-bit grey to 255 instead of scaling, so the reference is the ramp itself."""
    ours = _native.decode(good_images["rgb16.png"]).astype(int)
    ramp = np.linspace(0, 65535, 300 * 280 * 3).reshape(280, 300, 3)
    assert np.abs(ours - ramp / 257).max() <= 1
    grey = _native.decode(good_images["gray16.png"]).astype(int)
    ramp = np.linspace(0, 65535, 300 * 270).reshape(270, 300)
    assert np.abs(grey - (ramp / 257)[..., None]).max() <= 1


def test_palette_transparency_composites_on_the_background(good_images: dict) -> None:
    path = good_images["palette.png"]
    white = _native.decode(path).astype(int)
    assert (white[:, :150] == 255).all() and (white[:, 150:] == [10, 200, 30]).all()
    black = _native.decode(path, background=(0, 0, 0))
    assert (black[:, :150] == 0).all()
    info = _native.probe(path)
    assert (info["width"], info["height"], info["has_alpha"]) == (300, 260, True)
