"""The training data stream: ``tsuika.data`` (scan, buckets, sampler, loader) wired
to the [data] config, with the latent cache in front of the VAE.

Batches come as dicts ``{"pixels" | "latents", "captions", "bucket", "epoch",
"batch", "original_size", "crop_top_left"}`` (cached latents carry the size and
crop the data engine reported when they were encoded); ``position`` after a batch is the (epoch, batch index) of the
next one, which a checkpoint stores. With several processes, batch ``k`` of
the stream goes to process ``k % world``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from tsuika import _native
from tsuika.config import RunConfig
from tsuika.data.buckets import BucketSpec, group_by_bucket
from tsuika.data.captions import CaptionOptions
from tsuika.data.loader import AugmentOptions, BatchLoader
from tsuika.data.sampler import Batch, BucketBatchSampler
from tsuika.data.scan import DatasetIndex, require_images, require_no_class_pictures
from tsuika.data.split import DataSplit, make_split, scan_training_data
from tsuika.training.cache import LatentCache

Encode = Callable[[torch.Tensor], torch.Tensor]


def flip_draw(seed: int, epoch: int, key: int) -> bool:
    """A fair coin per (seed, epoch, sample key), for the flip of a cached latent."""
    digest = hashlib.blake2b(f"flip:{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return bool(digest[0] & 1)


class TrainData:
    """The dataset of a run as an endless, resumable stream of batches."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        index: DatasetIndex | None = None,
        use_cache: bool | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        """``index``: the training images (default: all of ``data.path``); ``use_cache``:
        whether batches will come from the latent cache (default ``data.cache_latents``)."""
        d, t = cfg.data, cfg.training
        self.index = require_images(
            require_no_class_pictures(run_images(cfg) if index is None else index)
        )
        use_cache = d.cache_latents if use_cache is None else use_cache
        self.groups = group_by_bucket(self.index, BucketSpec.from_config(d))
        self.sampler = BucketBatchSampler(
            self.groups.buckets, self.groups.repeats, t.batch_size, seed=t.seed
        )
        captions = CaptionOptions.from_config(d)
        self.loader = BatchLoader(
            self.index,
            self.groups.buckets,
            self.sampler,
            augment=AugmentOptions.from_config(d),
            captions=captions,
            seed=t.seed,
            prefetch=0 if use_cache else 2,
            threads=d.threads,
            on_missing=d.on_missing,
        )
        self.seed, self.flip, self.rank, self.world = t.seed, d.flip, rank, world
        self.threads = d.threads
        self.cache: LatentCache | None = None
        self.position = (0, 0)

    def __len__(self) -> int:
        return len(self.sampler)

    # ------------------------------------------------------------------ latent cache

    def _cache_key(self, item: int, bucket: tuple[int, int], flip: bool) -> str:
        assert self.cache is not None
        return self.cache.key(self.index[item].path, bucket, "center", flip)

    def _load_pixels(
        self, paths: list[Path], bucket: tuple[int, int], flips: list[bool]
    ) -> tuple[torch.Tensor, Any]:
        """Pixels and per-picture info (original h, w, crop top, left), as the loader's."""
        array, info = _native.load_batch(
            [str(p) for p in paths],
            bucket[0],
            bucket[1],
            flip=flips,
            crop="center",
            threads=self.threads,
            with_info=True,
        )
        return torch.from_numpy(array), info

    def enable_cache(self, folder: Path, vae_digest: str, encode: Encode, batch_size: int) -> None:
        """Encode every (item, bucket, flip) that is not cached yet; batches then carry latents."""
        self.cache = LatentCache(folder, vae_digest)
        flips = (False, True) if self.flip else (False,)
        requests = []
        for i, bucket in enumerate(self.groups.buckets):
            for flip in flips:
                key = self._cache_key(i, bucket, flip)
                requests.append((key, self.index[i].path, bucket, flip))
        self.cache.fill(requests, self._load_pixels, encode, batch_size)

    def _cached_batch(self, batch: Batch) -> dict[str, Any]:
        assert self.cache is not None
        latents, originals, crops = [], [], []
        for item, key in zip(batch.indices, batch.keys, strict=True):
            flip = self.flip and flip_draw(self.seed, batch.epoch, key)
            latent, original, crop = self.cache.load_entry(
                self._cache_key(item, batch.bucket, flip)
            )
            latents.append(latent)
            originals.append(original)
            crops.append(crop)
        return {
            "latents": torch.stack(latents),
            "captions": self.loader.captions(batch),
            "indices": list(batch.indices),
            "bucket": tuple(batch.bucket),
            "epoch": batch.epoch,
            "batch": batch.index,
            "original_size": originals,
            "crop_top_left": crops,
        }

    # ------------------------------------------------------------------ stream

    def _stream(self, start: tuple[int, int]) -> Iterator[dict[str, Any]]:
        if self.cache is not None:
            for batch in self.sampler.iterate(start[0], start[1], None):
                yield self._cached_batch(batch)
        else:
            yield from self.loader.iterate(start[0], start[1], None)

    def batches(self, start: tuple[int, int] = (0, 0)) -> Iterator[dict[str, Any]]:
        """This process's batches from ``start`` on, forever; updates :attr:`position`.

        The stream is read in groups of ``world`` batches (one per process), and
        :attr:`position` always points past the whole group.
        """
        self.position = start
        n = len(self.sampler)
        group: list[dict[str, Any]] = []
        for batch in self._stream(start):
            group.append(batch)
            if len(group) < self.world:
                continue
            last = group[-1]
            nxt = (last["epoch"], last["batch"] + 1)
            self.position = (nxt[0] + 1, 0) if nxt[1] >= n else nxt
            mine, group = group[self.rank], []
            yield mine

    def close(self) -> None:
        self.loader.close()


def run_split(cfg: RunConfig) -> DataSplit:
    """The training and validation images of ``cfg`` (:func:`tsuika.data.split.make_split`
    with ``data.path``, ``validation.folder`` / ``validation.split`` and ``training.seed``)."""
    d, v = cfg.data, cfg.validation
    return make_split(
        d.path,
        caption_extension=d.caption_extension,
        folder=v.folder,
        fraction=v.split,
        seed=cfg.training.seed,
    )


def run_images(cfg: RunConfig) -> DatasetIndex:
    """Every image of ``data.path`` (before any split)."""
    return scan_training_data(cfg.data.path, cfg.data.caption_extension)
