"""Buckets: ``_native`` against an independent re-implementation of kohya's rules.

The reference below is written from DESIGN.md ("Aspect-ratio buckets") and
kohya-ss/sd-scripts' ``make_bucket_resolutions`` / ``BucketManager.select_bucket``
(library/model_util.py, library/train_util.py), in plain Python floats.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from tsuika import _native
from tsuika.data.buckets import BucketSpec, format_bucket_table, group_by_bucket
from tsuika.data.scan import DatasetIndex, ImageItem


def kohya_table(
    res: tuple[int, int], min_size: int, max_size: int, step: int
) -> list[tuple[int, int]]:
    max_area = res[0] * res[1]
    square = int(math.sqrt(max_area) // step) * step
    resos = {(square, square)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // step) * step)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += step
    return sorted(resos)


def kohya_select(
    table: list[tuple[int, int]], w: int, h: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Nearest aspect ratio (first of the sorted table on ties; exact size wins), cover size."""
    ar = w / h
    if (w, h) in table:
        reso = (w, h)
    else:
        errors = [abs(bw / bh - ar) for bw, bh in table]
        reso = table[errors.index(min(errors))]
    scale = reso[1] / h if ar > reso[0] / reso[1] else reso[0] / w
    return reso, (int(w * scale + 0.5), int(h * scale + 0.5))


def kohya_no_upscale(
    res: tuple[int, int], step: int, w: int, h: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    max_area = res[0] * res[1]
    ar = w / h

    def round_to_steps(x: float) -> int:
        x = int(x + 0.5)
        return x - x % step

    if w * h > max_area:
        rw = math.sqrt(max_area * ar)
        rh = max_area / rw
        bw = round_to_steps(rw)
        bh_w = round_to_steps(bw / ar)
        bh = round_to_steps(rh)
        bw_h = round_to_steps(bh * ar)
        if abs(bw / bh_w - ar) < abs(bw_h / bh - ar):
            resized = (bw, int(bw / ar + 0.5))
        else:
            resized = (int(bh * ar + 0.5), bh)
    else:
        resized = (w, h)
    return (resized[0] - resized[0] % step, resized[1] - resized[1] % step), resized


SPECS = [
    ((512, 512), 256, 1024, 64),
    ((768, 768), 256, 1536, 64),
    ((1024, 1024), 512, 2048, 64),
    ((640, 448), 320, 960, 32),
    ((512, 512), 384, 768, 128),
]


def random_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = []
    for _ in range(n):
        w = int(math.exp(rng.uniform(math.log(64), math.log(6000))))
        ar = math.exp(rng.uniform(math.log(0.2), math.log(5)))
        sizes.append((w, max(1, int(w / ar))))
    return sizes


@pytest.mark.parametrize(("res", "lo", "hi", "step"), SPECS)
def test_table_matches_kohya(res: tuple[int, int], lo: int, hi: int, step: int) -> None:
    got = [tuple(b) for b in _native.bucket_table(res, lo, hi, step)]
    assert got == kohya_table(res, lo, hi, step)


@pytest.mark.parametrize(("res", "lo", "hi", "step"), SPECS)
def test_assignment_matches_kohya_on_random_sizes(
    res: tuple[int, int], lo: int, hi: int, step: int
) -> None:
    table = kohya_table(res, lo, hi, step)
    sizes = random_sizes(1500, seed=res[0] + lo) + table + [(w * 3, h * 3) for w, h in table]
    got = _native.assign_buckets(sizes, res, lo, hi, step)
    mismatches = [
        (size, tuple(map(tuple, g)), kohya_select(table, *size))
        for size, g in zip(sizes, got, strict=True)
        if (tuple(g[0]), tuple(g[1])) != kohya_select(table, *size)
    ]
    assert mismatches == []


@pytest.mark.parametrize(("res", "step"), [((512, 512), 64), ((1024, 768), 64), ((640, 640), 32)])
def test_no_upscale_matches_kohya(res: tuple[int, int], step: int) -> None:
    sizes = random_sizes(1500, seed=3) + [
        (res[0] * 2, res[1] * 2),
        (100, 70),
        (step, step),
        (40, 30),
        (300, 20),
    ]
    got = _native.assign_buckets(sizes, res, 256, 2048, step, no_upscale=True)
    expected = [kohya_no_upscale(res, step, w, h) for w, h in sizes]
    mismatches = []
    for size, g, e in zip(sizes, got, expected, strict=True):
        (bw, bh), (rw, rh) = g
        if min(e[0]) == 0:  # kohya would make an empty bucket; tsuika uses at least one step
            assert min(bw, bh) == step and rw >= bw and rh >= bh, (size, g)
        elif ((bw, bh), (rw, rh)) != e:
            mismatches.append((size, g, e))
    assert mismatches == []


def test_every_cover_size_covers_its_bucket() -> None:
    sizes = random_sizes(500, seed=9)
    for (bw, bh), (rw, rh) in _native.assign_buckets(sizes, 512):
        assert rw >= bw and rh >= bh
        assert rw == bw or rh == bh


def item(i: int, repeats: int) -> ImageItem:
    return ImageItem(Path(f"/x/{i}.png"), "", repeats, "", "s")


def test_group_by_bucket_counts_images_and_samples() -> None:
    sizes = [(512, 512), (1000, 1000), (900, 600), (600, 900), (601, 900)]
    index = DatasetIndex(Path("/x"), tuple(item(i, r) for i, r in enumerate([1, 2, 3, 4, 5])))
    spec = BucketSpec(512)
    groups = group_by_bucket(index, spec, sizes)
    expected = [kohya_select(kohya_table((512, 512), 256, 1024, 64), *s) for s in sizes]
    assert list(groups.buckets) == [e[0] for e in expected]
    assert list(groups.resized) == [e[1] for e in expected]
    images = {}
    samples = {}
    for (bucket, _), r in zip(expected, [1, 2, 3, 4, 5], strict=True):
        images[bucket] = images.get(bucket, 0) + 1
        samples[bucket] = samples.get(bucket, 0) + r
    assert groups.image_counts() == images
    assert groups.sample_counts() == samples
    table = format_bucket_table(groups.image_counts(), groups.sample_counts())
    assert "512x512" in table and len(table.splitlines()) == len(images) + 1


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"min_bucket": 1024, "max_bucket": 512}, "max_bucket"),
        ({"bucket_step": 0}, "bucket_step"),
        ({"min_bucket": 32}, "min_bucket"),
        ({"resolution": 32}, "resolution"),
    ],
)
def test_bucket_spec_validation_names_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        BucketSpec(**kwargs)


def test_bucket_spec_from_config_reads_data_keys() -> None:
    class Data:
        resolution = 768
        min_bucket = 320
        max_bucket = 1536
        bucket_step = 64
        no_upscale = True

    assert BucketSpec.from_config(Data()) == BucketSpec(768, 320, 1536, 64, True)
