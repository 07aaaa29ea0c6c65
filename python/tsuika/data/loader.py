"""Batches of pixels from the Rust engine, prefetched in background threads.

``tsuika._native.load_batch`` decodes, cover-resizes, crops, augments and
normalises a whole batch in Rust with the GIL released, so a few Python
threads keep the next K batches ready while the model computes. The float32
array is wrapped with ``torch.from_numpy`` (no copy). The engine also says,
per picture, its size before resizing and where the bucket crop fell
(``with_info=True``): SDXL's ``add_time_ids`` conditioning.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tsuika import _native
from tsuika.data.captions import CaptionOptions, process_caption
from tsuika.data.sampler import Batch, BucketBatchSampler
from tsuika.data.scan import DatasetIndex, Subset
from tsuika.data.watch import DatasetWatch


@dataclass(frozen=True)
class AugmentOptions:
    """The [data] augmentations: flip (p = 1/2), rotation (degrees), color_jitter (0..1), random_crop."""

    flip: bool = False
    rotation: float = 0.0
    color_jitter: float = 0.0
    random_crop: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.rotation <= 180.0:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0.0 <= self.color_jitter <= 1.0:
            raise ValueError(f"color_jitter must be in [0, 1], got {self.color_jitter}")

    @classmethod
    def from_config(cls, data: object) -> AugmentOptions:
        names = ("flip", "rotation", "color_jitter", "random_crop")
        return cls(**{name: getattr(data, name) for name in names if hasattr(data, name)})

    def native_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``_native.load_batch``."""
        return {
            "flip": "random" if self.flip else False,
            "rotation": float(self.rotation),
            "color_jitter": float(self.color_jitter),
            "crop": "random" if self.random_crop else "center",
        }


def subset_caption_options(subset: Subset | None, base: CaptionOptions) -> CaptionOptions:
    """``base`` with a subset's own caption settings (dataset TOML) taking precedence."""
    if subset is None:
        return base
    return CaptionOptions(
        prefix=subset.caption_prefix or base.prefix,
        suffix=subset.caption_suffix or base.suffix,
        shuffle=subset.shuffle_caption or base.shuffle,
        keep_tokens=subset.keep_tokens or base.keep_tokens,
        tag_dropout=subset.caption_tag_dropout_rate or base.tag_dropout,
        caption_dropout=subset.caption_dropout_rate or base.caption_dropout,
    )


class BatchLoader:
    """Iterate batches ``{"pixels", "captions", "indices", "bucket", "epoch", "batch",
    "original_size", "crop_top_left"}``.

    ``original_size[i]`` is picture i's (height, width) before resizing and
    ``crop_top_left[i]`` the (top, left) of its bucket window in the resized
    picture, mirrored when flipped: the conventions of SDXL's ``add_time_ids``
    (see ``tsuika._native.load_batch``).

    ``buckets[i]`` is item i's (width, height) bucket (see ``buckets.group_by_bucket``).
    ``prefetch`` batches are loaded ahead in as many threads; ``threads`` is the
    Rust pool size per batch. Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        index: DatasetIndex,
        buckets: Sequence[tuple[int, int]],
        sampler: BucketBatchSampler,
        *,
        augment: AugmentOptions | None = None,
        captions: CaptionOptions | None = None,
        seed: int = 0,
        prefetch: int = 2,
        threads: int | None = None,
        on_missing: str = "stop",
    ) -> None:
        if len(buckets) != len(index):
            raise ValueError(f"{len(buckets)} buckets for {len(index)} images")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.index = index
        self.buckets = list(buckets)
        self.sampler = sampler
        self.augment = augment or AugmentOptions()
        self.seed = seed
        self.prefetch = prefetch
        self.threads = threads
        base = captions or CaptionOptions()
        self._caption_options = {
            name: subset_caption_options(subset, base) for name, subset in index.subsets.items()
        }
        self._base_captions = base
        self._pool: ThreadPoolExecutor | None = None
        self.watch = DatasetWatch([item.path for item in index], on_missing)

    def load_pixels(self, batch: Batch) -> tuple[Batch, tuple[np.ndarray, np.ndarray]]:
        """``batch`` without vanished or changed files (see :mod:`tsuika.data.watch`),
        its float32 [B, 3, H, W] array and its int64 [B, 4] info (original_h,
        original_w, crop_top, crop_left); runs in a worker thread."""
        while True:
            batch = self._without_dropped(batch)
            try:
                return batch, self._read(batch)
            except _native.ImageError as exc:
                item = self._item_of(batch, getattr(exc, "path", None))
                if item is None or self.watch.problem(item) is None:
                    raise
                self.watch.drop(item, self.watch.problem(item) or "unreadable")

    def _without_dropped(self, batch: Batch) -> Batch:
        """The same batch with each dropped item replaced by a usable one of it."""
        keep = self.watch.usable(batch.indices)
        if len(keep) == len(batch.indices):
            return batch
        if not keep:
            raise _StopBatch
        slots = [i if i in keep else keep[n % len(keep)] for n, i in enumerate(batch.indices)]
        return replace(batch, indices=tuple(slots))

    def _item_of(self, batch: Batch, path: str | None) -> int | None:
        return next((i for i in batch.indices if str(self.index[i].path) == path), None)

    def _read(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        width, height = batch.bucket
        paths = [str(self.index[i].path) for i in batch.indices]
        return _native.load_batch(
            paths,
            width,
            height,
            threads=self.threads,
            seed=self.seed,
            epoch=batch.epoch,
            indices=list(batch.keys),
            with_info=True,
            **self.augment.native_kwargs(),
        )

    def captions(self, batch: Batch) -> list[str]:
        out = []
        for item_index, key in zip(batch.indices, batch.keys, strict=True):
            item = self.index[item_index]
            options = self._caption_options.get(item.subset, self._base_captions)
            out.append(
                process_caption(item.caption, options, seed=self.seed, epoch=batch.epoch, index=key)
            )
        return out

    def fixed_captions(self) -> list[str] | None:
        """Each item's caption as every epoch gives it, or None when a caption option
        draws anew per epoch (shuffle, tag dropout, caption dropout) for some item."""
        out = []
        for item in self.index:
            options = self._caption_options.get(item.subset, self._base_captions)
            if options.shuffle or options.tag_dropout > 0 or options.caption_dropout > 0:
                return None
            out.append(process_caption(item.caption, options, seed=self.seed, epoch=0, index=0))
        return out

    def _assemble(self, batch: Batch, loaded: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        pixels, info = loaded
        rows = info.tolist()
        return {
            "pixels": _torch().from_numpy(pixels),
            "captions": self.captions(batch),
            "indices": list(batch.indices),
            "bucket": tuple(batch.bucket),
            "epoch": batch.epoch,
            "batch": batch.index,
            "original_size": [(h, w) for h, w, _, _ in rows],
            "crop_top_left": [(top, left) for _, _, top, left in rows],
        }

    def iterate(
        self, start_epoch: int = 0, start_batch: int = 0, epochs: int | None = 1
    ) -> Iterator[dict[str, Any]]:
        """Batches from (start_epoch, start_batch), ``epochs`` epochs (None = forever)."""
        batches = self.sampler.iterate(start_epoch, start_batch, epochs)
        if self.prefetch == 0:
            for batch in batches:
                yield from self._assembled(lambda b=batch: self.load_pixels(b))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.prefetch, thread_name_prefix="tsuika-loader")
        pending: deque[tuple[Batch, Future[tuple[Batch, tuple[np.ndarray, np.ndarray]]]]] = deque()
        try:
            for batch in batches:
                pending.append((batch, self._pool.submit(self.load_pixels, batch)))
                if len(pending) > self.prefetch:
                    yield from self._assembled(pending.popleft()[1].result)
            while pending:
                yield from self._assembled(pending.popleft()[1].result)
        finally:
            for _, future in pending:
                future.cancel()

    def _assembled(self, load: Any) -> Iterator[dict[str, Any]]:
        """The assembled batch ``load()`` gives; nothing when all its files are gone."""
        try:
            batch, loaded = load()
        except _StopBatch:
            return
        yield self._assemble(batch, loaded)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """One epoch: the sampler's current epoch."""
        return self.iterate(self.sampler.epoch, 0, 1)

    def __len__(self) -> int:
        return len(self.sampler)

    def close(self) -> None:
        """Stop the worker threads (waits for running loads, cancels queued ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StopBatch(Exception):
    """Every file of a batch was dropped (``on_missing = "skip"``): the batch is skipped."""


def _torch():
    """torch, imported on first use: ``tsuika prep`` and ``tsuika --help`` load
    this package without needing it."""
    import torch

    return torch
