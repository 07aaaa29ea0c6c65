"""The training / validation split and the cross-validation folds of a dataset.

Split (``validation.split``): each image gets the key
``blake2b("{seed}:{relative path}")``; the images with the smallest keys are
held out (``round(split * N)``, at least one, and at least one image is left
to train on). The choice depends only on the seed and the paths, never on
the file system's listing order. ``validation.folder`` is the alternative: a
dataset folder of its own, which must not share images with ``data.path``.
Cross-validation folds (:func:`fold_indices`) use the same keys: sorted by
key, image ``r`` goes to fold ``r % K``, so the folds are disjoint and cover
the dataset.

This is dataset logic: the training loop, validation, ``lr-find`` and ``cv``
all read it from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tsuika.data.scan import (
    DatasetError,
    DatasetIndex,
    ImageItem,
    require_images,
    scan_dataset,
    split_class_pictures,
)


def item_key(index: DatasetIndex, i: int) -> str:
    """Image ``i``'s path relative to the dataset root (absolute when outside it)."""
    path = Path(index[i].path)
    try:
        return path.relative_to(index.root).as_posix()
    except ValueError:
        return path.as_posix()


def _hash(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"tsuika:split:{seed}:{key}".encode(), digest_size=16).digest()


def hashed_order(index: DatasetIndex, seed: int) -> list[int]:
    """Item indices sorted by the seeded hash of their relative path."""
    return sorted(range(len(index)), key=lambda i: (_hash(seed, item_key(index, i)), i))


def split_indices(index: DatasetIndex, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) item indices for ``validation.split = fraction``, each sorted."""
    n = len(index)
    n_val = max(1, round(fraction * n))
    if n - n_val < 1:
        raise DatasetError(
            f"{index.root}: validation.split = {fraction} of {n} image(s) leaves none to train on"
        )
    order = hashed_order(index, seed)
    return sorted(order[n_val:]), sorted(order[:n_val])


def fold_indices(index: DatasetIndex, folds: int, seed: int) -> list[list[int]]:
    """``folds`` disjoint lists of item indices that together cover the dataset."""
    if not 2 <= folds <= len(index):
        raise DatasetError(
            f"{index.root}: --folds {folds} needs 2 <= folds <= the number of images ({len(index)})"
        )
    out: list[list[int]] = [[] for _ in range(folds)]
    for rank, i in enumerate(hashed_order(index, seed)):
        out[rank % folds].append(i)
    return [sorted(f) for f in out]


def subset(index: DatasetIndex, indices: Sequence[int]) -> DatasetIndex:
    """The index restricted to ``indices`` (same root, subsets and options)."""
    return dataclasses.replace(index, items=tuple(index.items[i] for i in indices))


@dataclass(frozen=True)
class DataSplit:
    """The images a run trains on and the ones it validates on (None: no validation), and
    the dataset TOML's ``is_reg`` class pictures (for DreamBooth's prior preservation)."""

    train: DatasetIndex
    val: DatasetIndex | None = None
    class_pictures: tuple[ImageItem, ...] = ()


def scan_training_data(path: str | Path | None, caption_extension: str = ".txt") -> DatasetIndex:
    """Scan the dataset at ``data.path``; a clear error when it is unset or holds no image."""
    if path is None:
        raise ValueError("data.path is required: the dataset folder or dataset TOML")
    return require_images(scan_dataset(path, caption_extension=caption_extension))


def make_split(
    path: str | Path | None,
    *,
    caption_extension: str = ".txt",
    folder: str | Path | None = None,
    fraction: float = 0.0,
    seed: int = 0,
) -> DataSplit:
    """Scan ``data.path`` (``path``) and read ``validation.folder`` (``folder``), or hold
    out ``validation.split`` (``fraction``) of it by ``training.seed`` (``seed``). The
    dataset's ``is_reg`` pictures are set apart as class pictures, never split or trained
    on as the concept's."""
    if path is None:
        raise ValueError("data.path is required: the dataset folder or dataset TOML")
    index, reg = split_class_pictures(scan_dataset(path, caption_extension=caption_extension))
    index = require_images(index)
    if folder is not None:
        val = require_images(scan_dataset(folder, caption_extension=caption_extension))
        shared = {Path(p).resolve() for p in index.paths} & {Path(p).resolve() for p in val.paths}
        if shared:
            names = ", ".join(sorted(str(p) for p in shared)[:3])
            raise DatasetError(
                f"validation.folder {folder} shares {len(shared)} image(s) with data.path "
                f"{path} ({names}); validation images must not be trained on"
            )
        return DataSplit(index, val, reg)
    if fraction > 0:
        train, held = split_indices(index, fraction, seed)
        return DataSplit(subset(index, train), subset(index, held), reg)
    return DataSplit(index, class_pictures=reg)
