"""Bucket batch sampler: every batch holds images of one bucket only.

Per epoch (after kohya-ss/sd-scripts' bucket batching, made deterministic):

1. each item is expanded ``repeats`` times into *samples*; sample ``k`` of
   item ``i`` has the stable key ``offset[i] + k`` (``offset`` = running sum
   of repeats), used to seed its augmentation and caption draws;
2. the samples of each bucket are shuffled with an RNG of (seed, epoch,
   bucket) and cut into batches of ``batch_size`` (the last one smaller,
   or dropped with ``drop_last``);
3. the list of all batches is shuffled with an RNG of (seed, epoch).

So an item with N repeats appears exactly N times per epoch, ``len()`` does
not depend on the epoch, and (seed, epoch, batch index) names a batch for
resuming.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from itertools import count


@dataclass(frozen=True)
class Batch:
    """One batch: where it sits, its bucket, its items and their sample keys."""

    epoch: int
    index: int  # batch index within the epoch
    bucket: Hashable
    indices: tuple[int, ...]  # item indices into the dataset index
    keys: tuple[int, ...]  # sample keys (unique within an epoch) for augmentation draws


def _rng(*parts: object) -> random.Random:
    text = ":".join(str(p) for p in ("sampler", *parts))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


class BucketBatchSampler:
    """Deterministic batches of one bucket each, repeats honoured, resumable."""

    def __init__(
        self,
        buckets: Sequence[Hashable],
        repeats: Sequence[int] | None = None,
        batch_size: int = 1,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        repeats = [1] * len(buckets) if repeats is None else list(repeats)
        if len(repeats) != len(buckets):
            raise ValueError(f"{len(repeats)} repeat counts for {len(buckets)} items")
        if any(r < 1 for r in repeats):
            raise ValueError("every item needs repeats >= 1")
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self._samples: dict[Hashable, list[tuple[int, int]]] = {}
        key = 0
        for item, (bucket, n) in enumerate(zip(buckets, repeats, strict=True)):
            self._samples.setdefault(bucket, []).extend((item, key + k) for k in range(n))
            key += n
        self._order = sorted(self._samples, key=repr)
        self._cache: tuple[int, list[Batch]] | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        bs = self.batch_size
        sizes = (len(s) for s in self._samples.values())
        if self.drop_last:
            return sum(n // bs for n in sizes)
        return sum(-(-n // bs) for n in sizes)

    @property
    def num_samples(self) -> int:
        """Samples per epoch (items times repeats)."""
        return sum(len(s) for s in self._samples.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_batches(self, epoch: int) -> list[Batch]:
        """All batches of ``epoch``, in order."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        groups = []
        for bucket in self._order:
            samples = list(self._samples[bucket])
            if self.shuffle:
                _rng(self.seed, epoch, repr(bucket)).shuffle(samples)
            for start in range(0, len(samples), self.batch_size):
                chunk = samples[start : start + self.batch_size]
                if self.drop_last and len(chunk) < self.batch_size:
                    continue
                groups.append((bucket, chunk))
        if self.shuffle:
            _rng(self.seed, epoch).shuffle(groups)
        batches = [
            Batch(epoch, i, bucket, tuple(s[0] for s in chunk), tuple(s[1] for s in chunk))
            for i, (bucket, chunk) in enumerate(groups)
        ]
        self._cache = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        """Item indices of each batch of the current epoch (torch ``batch_sampler`` style)."""
        for batch in self.epoch_batches(self.epoch):
            yield list(batch.indices)

    def iterate(
        self, start_epoch: int = 0, start_batch: int = 0, epochs: int | None = None
    ) -> Iterator[Batch]:
        """Batches from (start_epoch, start_batch) on, through ``epochs`` epochs (None = forever)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} out of range 0..{len(self)}")
        last = None if epochs is None else start_epoch + epochs
        for epoch in count(start_epoch):
            if last is not None and epoch >= last:
                return
            batches = self.epoch_batches(epoch)
            yield from batches[start_batch if epoch == start_epoch else 0 :]

    def position(self, step: int, start_epoch: int = 0) -> tuple[int, int]:
        """(epoch, batch index) of the ``step``-th batch counted from ``start_epoch``'s start."""
        if len(self) == 0:
            raise ValueError("the sampler holds no batch")
        epoch, batch = divmod(step, len(self))
        return start_epoch + epoch, batch
