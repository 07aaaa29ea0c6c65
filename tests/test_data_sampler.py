"""Bucket batch sampler: one bucket per batch, exact repeats, deterministic, resumable."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from tsuika.data.sampler import BucketBatchSampler

rng = random.Random(7)
BUCKETS = [rng.choice([(512, 512), (640, 384), (384, 640), (768, 320)]) for _ in range(57)]
REPEATS = [rng.choice([1, 1, 2, 3, 10]) for _ in range(57)]


def make(batch_size: int = 4, **kwargs) -> BucketBatchSampler:
    return BucketBatchSampler(BUCKETS, REPEATS, batch_size, seed=11, **kwargs)


@pytest.mark.parametrize("batch_size", [1, 3, 4, 16])
@pytest.mark.parametrize("drop_last", [False, True])
def test_one_bucket_per_batch_and_exact_repeats(batch_size: int, drop_last: bool) -> None:
    sampler = make(batch_size, drop_last=drop_last)
    for epoch in range(3):
        batches = sampler.epoch_batches(epoch)
        assert len(batches) == len(sampler)
        seen: Counter[int] = Counter()
        keys = []
        for b, batch in enumerate(batches):
            assert batch.index == b and batch.epoch == epoch
            assert {BUCKETS[i] for i in batch.indices} == {batch.bucket}
            assert 1 <= len(batch.indices) <= batch_size
            assert not drop_last or len(batch.indices) == batch_size
            seen.update(batch.indices)
            keys.extend(batch.keys)
        assert len(keys) == len(set(keys))  # every sample key once
        if not drop_last:
            assert seen == Counter({i: r for i, r in enumerate(REPEATS)})
            assert sum(seen.values()) == sampler.num_samples == sum(REPEATS)


def test_len_counts_partial_batches_per_bucket() -> None:
    per_bucket = Counter()
    for bucket, r in zip(BUCKETS, REPEATS, strict=True):
        per_bucket[bucket] += r
    assert len(make(4)) == sum(-(-n // 4) for n in per_bucket.values())
    assert len(make(4, drop_last=True)) == sum(n // 4 for n in per_bucket.values())


def test_deterministic_per_seed_and_epoch_and_epochs_differ() -> None:
    a, b = make(), make()
    assert a.epoch_batches(2) == b.epoch_batches(2)
    order = [batch.indices for batch in a.epoch_batches(0)]
    assert order != [batch.indices for batch in a.epoch_batches(1)]
    other_seed = BucketBatchSampler(BUCKETS, REPEATS, 4, seed=12)
    assert order != [batch.indices for batch in other_seed.epoch_batches(0)]
    # the batch order is shuffled across buckets, not grouped bucket after bucket
    buckets = [batch.bucket for batch in a.epoch_batches(0)]
    changes = sum(x != y for x, y in zip(buckets, buckets[1:], strict=False))
    assert changes > len(set(buckets))


def test_no_shuffle_is_item_order() -> None:
    sampler = BucketBatchSampler([0, 0, 1, 0], [1, 2, 1, 1], 2, shuffle=False)
    assert [b.indices for b in sampler.epoch_batches(5)] == [(0, 1), (1, 3), (2,)]
    assert [b.keys for b in sampler.epoch_batches(5)] == [(0, 1), (2, 4), (3,)]


def test_resume_from_a_position_continues_the_same_stream() -> None:
    sampler = make(3)
    full = list(sampler.iterate(0, 0, epochs=3))
    assert len(full) == 3 * len(sampler)
    step = len(sampler) + 5
    epoch, batch = sampler.position(step)
    assert (epoch, batch) == (1, 5)
    resumed = list(make(3).iterate(epoch, batch, epochs=3 - epoch))
    assert resumed == full[step:]


def test_iter_follows_set_epoch() -> None:
    sampler = make()
    sampler.set_epoch(4)
    assert list(sampler) == [list(b.indices) for b in sampler.epoch_batches(4)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([(1, 1)], [1], 0), "batch_size"),
        (([(1, 1)], [1, 2], 1), "repeat counts"),
        (([(1, 1)], [0], 1), "repeats >= 1"),
    ],
)
def test_invalid_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BucketBatchSampler(*args)
    with pytest.raises(ValueError, match="start_batch"):
        list(make().iterate(0, len(make()) + 1, epochs=1))
