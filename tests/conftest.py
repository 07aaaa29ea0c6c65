"""Shared pytest fixtures: small drawn datasets and a corpus of awkward image files.

Everything is drawn by the test itself (PIL, hand-written bytes); nothing is downloaded.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Pixel layout of the EXIF-rotated picture: stored 400 wide x 300 high with a red
# block in the stored top-left corner; orientation 6 shows it 300 x 400, block top-right.
EXIF_STORED_SIZE = (400, 300)
EXIF_MARKER = 80


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 over type + data (PNG spec, section 5.3)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(
    width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None
) -> bytes:
    """A PNG file: IHDR as given, one IDAT of ``rows`` (None: no IDAT), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    chunks = png_chunk(b"IHDR", ihdr)
    if rows is not None:
        chunks += png_chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + chunks + png_chunk(b"IEND", b"")


def rgb16_png(pixels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (PIL cannot write one) from a uint16 [H, W, 3] array."""
    height, width, _ = pixels.shape
    big_endian = pixels.astype(">u2").tobytes()
    stride = width * 6
    rows = b"".join(b"\x00" + big_endian[y * stride : (y + 1) * stride] for y in range(height))
    return png_bytes(width, height, 16, 2, rows)


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth random picture (blurred noise) that perceptual hashes can tell apart."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def write_good_files(folder: Path) -> dict[str, Path]:
    """Unusual but valid files: CMYK JPEG, 16-bit PNGs, palette PNG with transparency,
    an EXIF-rotated JPEG, a plain JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        name: folder / name
        for name in ("plain.jpg", "cmyk.jpg", "rgb16.png", "gray16.png", "palette.png", "exif6.jpg")
    }
    noise_image((320, 288), 1).save(paths["plain.jpg"], quality=90)
    Image.new("CMYK", (320, 256), (200, 30, 0, 20)).save(paths["cmyk.jpg"], quality=95)
    ramp = np.linspace(0, 65535, 300 * 280 * 3).reshape(280, 300, 3).astype(np.uint16)
    paths["rgb16.png"].write_bytes(rgb16_png(ramp))
    gray = np.linspace(0, 65535, 300 * 270).reshape(270, 300).astype(np.uint16)
    Image.fromarray(gray).save(paths["gray16.png"])
    palette = Image.new("P", (300, 260), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    palette.paste(0, (0, 0, 150, 260))  # left half: index 0, transparent
    palette.save(paths["palette.png"], transparency=0)
    stored = Image.new("RGB", EXIF_STORED_SIZE, (30, 60, 200))
    stored.paste((230, 20, 20), (0, 0, EXIF_MARKER, EXIF_MARKER))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(paths["exif6.jpg"], quality=95, exif=exif)
    return paths


def write_bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken files and the problem kind ``_native.scan`` must report for each.

    Unreadable as root: chmod 000 does not stop root, so the corpus uses a
    dangling symlink (ENOENT) and a symlink to itself (ELOOP), which fail for
    every user.
    """
    folder.mkdir(parents=True, exist_ok=True)
    bad: dict[str, tuple[Path, str]] = {}

    def add(name: str, kind: str) -> Path:
        bad[name] = (folder / name, kind)
        return folder / name

    add("zero.jpg", "empty").write_bytes(b"")
    whole = folder / ".whole.jpg"
    noise_image((400, 300), 2).save(whole, quality=90)
    data = whole.read_bytes()
    whole.unlink()
    add("truncated.jpg", "corrupt").write_bytes(data[: len(data) // 3])
    add("text.jpg", "unsupported").write_text("this is a caption, not a picture\n")
    add("bomb.png", "too_large").write_bytes(png_bytes(100_000, 100_000, 8, 2, None))
    webp = b"VP8 " + struct.pack("<I", 64) + bytes(range(64))
    add("corrupt.webp", "corrupt").write_bytes(
        b"RIFF" + struct.pack("<I", 4 + len(webp)) + b"WEBP" + webp
    )
    add("dangling.png", "unreadable").symlink_to(folder / "no-such-file.png")
    loop = add("loop.jpg", "unreadable")
    loop.symlink_to(loop)
    return bad


@pytest.fixture
def good_images(tmp_path: Path) -> dict[str, Path]:
    return write_good_files(tmp_path / "good")


@pytest.fixture
def sample_dataset(tmp_path: Path) -> Path:
    from tsuika.data.sample import draw_sample_dataset

    return draw_sample_dataset(tmp_path / "sample", n=9, seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: the tiny models run fastest so, and a
    small shared machine thrashes on more. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1-shaped model (random weights, seed 0) saved as a diffusers folder."""
    from tsuika.models import build_tiny_model, save_diffusers

    return save_diffusers(build_tiny_model(seed=0), tmp_path_factory.mktemp("model") / "tiny")
