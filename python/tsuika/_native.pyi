# Type stubs for tsuika._native (the Rust data engine).
# Checked against the binding by tests/test_native_stubs.py.
from collections.abc import Sequence
from os import PathLike
from typing import Literal, overload

import numpy as np
import numpy.typing as npt

from tsuika.errors import TsuikaError

StrPath = str | PathLike[str]

DEFAULT_MAX_PIXELS: int

class ImageError(ValueError, TsuikaError):
    """Base class: an image file that cannot be used. ``path`` names it, ``kind`` says why."""

    path: str | None
    kind: str

class EmptyImageError(ImageError): ...
class UnsupportedImageError(ImageError): ...
class CorruptImageError(ImageError): ...
class DecompressionBombError(ImageError): ...

def probe(path: StrPath, *, max_pixels: int = ...) -> dict[str, object]:
    """Header-only info: {"format", "width", "height", "orientation", "has_alpha"} (upright size)."""

def decode(
    path: StrPath, *, max_pixels: int = ..., background: tuple[int, int, int] = (255, 255, 255)
) -> npt.NDArray[np.uint8]:
    """Full-size upright RGB8 picture as an [H, W, 3] uint8 array."""

def bucket_table(
    resolution: int | tuple[int, int], min_size: int = 256, max_size: int = 1024, step: int = 64
) -> list[tuple[int, int]]:
    """kohya's bucket table as (width, height) pairs."""

def assign_buckets(
    sizes: Sequence[tuple[int, int]],
    resolution: int | tuple[int, int],
    min_size: int = 256,
    max_size: int = 1024,
    step: int = 64,
    *,
    no_upscale: bool = False,
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """For each (width, height): ((bucket_w, bucket_h), (resized_w, resized_h))."""

def scan(
    paths: Sequence[StrPath],
    *,
    max_pixels: int = ...,
    full_decode: bool = True,
    hashes: bool = False,
    threads: int | None = None,
) -> list[dict[str, object]]:
    """Validate many files in parallel without stopping at the first problem.

    Each entry: {"path", "ok", "format", "width", "height", "orientation",
    "has_alpha", "dhash", "phash" (with hashes=True), "error", "kind"}.
    """

# load_batch / load_batch_u8: with_info=True returns (pixels, info) instead of
# pixels. The last overload of each is the one tests/test_native_stubs.py reads.
@overload
def load_batch(
    paths: Sequence[StrPath],
    width: int,
    height: int,
    *,
    flip: bool | str | Sequence[bool] = False,
    crop: str = "center",
    threads: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    indices: Sequence[int] | None = None,
    rotation: float = 0.0,
    color_jitter: float = 0.0,
    max_pixels: int = ...,
    background: tuple[int, int, int] = (255, 255, 255),
    with_info: Literal[True],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
@overload
def load_batch(
    paths: Sequence[StrPath],
    width: int,
    height: int,
    *,
    flip: bool | str | Sequence[bool] = False,
    crop: str = "center",
    threads: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    indices: Sequence[int] | None = None,
    rotation: float = 0.0,
    color_jitter: float = 0.0,
    max_pixels: int = ...,
    background: tuple[int, int, int] = (255, 255, 255),
    with_info: Literal[False] = False,
) -> npt.NDArray[np.float32]:
    """Decode, cover-resize into width x height, crop, augment, normalise.

    Returns float32 [B, 3, H, W] in [-1, 1]. ``flip``: False/True for all,
    a per-image sequence, or "random" (p=1/2 from (seed, epoch, index)).
    ``crop``: "center" or "random". ``indices`` (default 0..B-1) key the
    deterministic augmentation draws.

    ``with_info=True`` returns ``(pixels, info)``: info is int64 [B, 4] of
    (original_h, original_w, crop_top, crop_left) per picture, SDXL's
    ``add_time_ids`` conditioning. The original size is the upright file size
    before any resizing; the crop offset is in the pixels of the picture
    resized to cover the bucket (kohya's cover rounding), as the output shows
    it: a flipped picture reports its mirrored window (kohya:
    ``resized_w - crop_right``). The pixel buffer comes from a pool and goes
    back to it when the last array viewing it is gone.
    """

@overload
def load_batch_u8(
    paths: Sequence[StrPath],
    width: int,
    height: int,
    *,
    flip: bool | str | Sequence[bool] = False,
    crop: str = "center",
    threads: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    indices: Sequence[int] | None = None,
    rotation: float = 0.0,
    color_jitter: float = 0.0,
    max_pixels: int = ...,
    background: tuple[int, int, int] = (255, 255, 255),
    with_info: Literal[True],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]: ...
@overload
def load_batch_u8(
    paths: Sequence[StrPath],
    width: int,
    height: int,
    *,
    flip: bool | str | Sequence[bool] = False,
    crop: str = "center",
    threads: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    indices: Sequence[int] | None = None,
    rotation: float = 0.0,
    color_jitter: float = 0.0,
    max_pixels: int = ...,
    background: tuple[int, int, int] = (255, 255, 255),
    with_info: Literal[False] = False,
) -> npt.NDArray[np.uint8]:
    """Same as load_batch, as uint8 [B, H, W, 3]."""

def export_images(
    items: Sequence[tuple[StrPath, StrPath, int, int]],
    *,
    quality: int = 95,
    crop: str = "center",
    max_pixels: int = ...,
    background: tuple[int, int, int] = (255, 255, 255),
    threads: int | None = None,
) -> list[str | None]:
    """For each (src, dst, bucket_w, bucket_h): cover-resize + crop and write dst
    atomically (format from dst's extension: .png, .jpg/.jpeg, .webp). Returns
    None per success or the error message."""

def dhash(path: StrPath, *, max_pixels: int = ...) -> int: ...
def phash(path: StrPath, *, max_pixels: int = ...) -> int: ...
def hamming(a: int, b: int) -> int: ...
