"""Batch loader: shapes, value range, prefetch == direct call, no copy, augmentations, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tsuika import _native
from tsuika.data.buckets import BucketSpec, group_by_bucket
from tsuika.data.captions import CaptionOptions
from tsuika.data.loader import AugmentOptions, BatchLoader
from tsuika.data.sample import SHAPES, draw_shape
from tsuika.data.sampler import BucketBatchSampler
from tsuika.data.scan import scan_dataset


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """Seven small captioned pictures in three aspect ratios, repeats 2 and 1."""
    sizes = [(320, 320), (384, 256), (256, 384), (320, 320), (384, 256), (256, 384), (300, 300)]
    for i, size in enumerate(sizes):
        folder = tmp_path / "small" / ("2_thing" if i % 2 else "1_thing")
        folder.mkdir(parents=True, exist_ok=True)
        draw_shape(size, SHAPES[i % 3], "red", "white").save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"thing, shape {i}, red, white background")
    return tmp_path / "small"


def make_loader(dataset: Path, **kwargs) -> BatchLoader:
    index = scan_dataset(dataset)
    groups = group_by_bucket(index, BucketSpec(256, 128, 512, 64))
    sampler = BucketBatchSampler(groups.buckets, groups.repeats, 2, seed=5)
    return BatchLoader(index, groups.buckets, sampler, seed=5, threads=1, **kwargs)


def collect(loader: BatchLoader, epochs: int = 1) -> list[dict]:
    with loader:
        return list(loader.iterate(0, 0, epochs))


def test_batches_have_bucket_shapes_and_range(small_dataset: Path) -> None:
    loader = make_loader(small_dataset)
    batches = collect(loader)
    assert len(batches) == len(loader) > 0
    seen = []
    for batch in batches:
        w, h = batch["bucket"]
        pixels = batch["pixels"]
        assert pixels.dtype == torch.float32
        assert tuple(pixels.shape) == (len(batch["indices"]), 3, h, w)
        assert -1.0 <= pixels.min() and pixels.max() <= 1.0
        assert pixels.max() - pixels.min() > 0.5  # a shape on a background, not a flat fill
        assert len(batch["captions"]) == len(batch["indices"])
        seen.extend(batch["indices"])
    index = loader.index
    assert sorted(seen) == sorted(i for i, item in enumerate(index) for _ in range(item.repeats))


def test_prefetch_gives_the_same_batches_as_direct_calls(small_dataset: Path) -> None:
    augment = AugmentOptions(flip=True, rotation=10.0, color_jitter=0.3, random_crop=True)
    fetched = collect(make_loader(small_dataset, augment=augment, prefetch=3), epochs=2)
    direct = collect(make_loader(small_dataset, augment=augment, prefetch=0), epochs=2)
    assert len(fetched) == len(direct)
    for a, b in zip(fetched, direct, strict=True):
        assert (a["epoch"], a["batch"], a["bucket"], a["indices"]) == (
            b["epoch"],
            b["batch"],
            b["bucket"],
            b["indices"],
        )
        assert torch.equal(a["pixels"], b["pixels"])
        assert a["captions"] == b["captions"]


def test_pixels_share_memory_with_the_native_array(small_dataset: Path, monkeypatch) -> None:
    arrays: list[np.ndarray] = []
    real = _native.load_batch

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        arrays.append(result[0] if kwargs.get("with_info") else result)
        return result

    monkeypatch.setattr(_native, "load_batch", spy)
    batch = next(iter(collect(make_loader(small_dataset, prefetch=2))))
    source = next(a for a in arrays if a.shape == tuple(batch["pixels"].shape))
    assert batch["pixels"].data_ptr() == source.ctypes.data
    assert np.shares_memory(batch["pixels"].numpy(), source)


def test_augment_options_reach_the_engine(small_dataset: Path, monkeypatch) -> None:
    calls: list[dict] = []
    real = _native.load_batch

    def spy(paths, width, height, **kwargs):
        calls.append(kwargs)
        return real(paths, width, height, **kwargs)

    monkeypatch.setattr(_native, "load_batch", spy)
    augment = AugmentOptions(flip=True, rotation=5.0, color_jitter=0.2, random_crop=True)
    loader = make_loader(small_dataset, augment=augment, prefetch=0)
    batches = collect(loader, epochs=2)
    assert len(calls) == len(batches)
    for kwargs, batch in zip(calls, batches, strict=True):
        assert kwargs["flip"] == "random" and kwargs["crop"] == "random"
        assert kwargs["rotation"] == 5.0 and kwargs["color_jitter"] == 0.2
        assert kwargs["seed"] == 5 and kwargs["epoch"] == batch["epoch"]
    keys = [tuple(k["indices"]) for k in calls]
    sampler = loader.sampler
    assert keys == [b.keys for e in range(2) for b in sampler.epoch_batches(e)]


def _kohya_cover(bucket: tuple[int, int], w: int, h: int) -> tuple[int, int]:
    """kohya-ss/sd-scripts ``BucketManager.select_bucket``'s cover size, with int(x + 0.5)."""
    bw, bh = bucket
    scale = bh / h if w / h > bw / bh else bw / w
    return max(int(w * scale + 0.5), bw), max(int(h * scale + 0.5), bh)


@pytest.fixture
def gradient_dataset(tmp_path: Path) -> Path:
    """Pictures that no flip leaves alone (a left-to-right gradient), in sizes
    whose cover leaves an odd number of pixels to trim."""
    folder = tmp_path / "gradients" / "1_ramp"
    folder.mkdir(parents=True)
    for i, (w, h) in enumerate([(301, 200), (200, 301), (333, 250), (417, 260), (250, 250)]):
        ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
        Image.fromarray(ramp.astype(np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a ramp")
    return tmp_path / "gradients"


def test_batches_carry_original_size_and_crop_top_left(gradient_dataset: Path) -> None:
    """Per picture: (h, w) of the file, and the centre window's (top, left) in the
    cover-resized picture, mirrored for the pictures the flip draw mirrored."""
    plain = collect(make_loader(gradient_dataset), epochs=2)
    flipped = collect(make_loader(gradient_dataset, augment=AugmentOptions(flip=True)), epochs=2)
    index = make_loader(gradient_dataset).index
    odd = 0
    mirrored = 0
    for a, b in zip(plain, flipped, strict=True):
        bw, bh = a["bucket"]
        assert len(a["original_size"]) == len(a["crop_top_left"]) == len(a["indices"])
        for k, item in enumerate(a["indices"]):
            with Image.open(index[item].path) as im:
                w, h = im.size
            cw, ch = _kohya_cover((bw, bh), w, h)
            centre = ((ch - bh) // 2, (cw - bw) // 2)
            assert a["original_size"][k] == b["original_size"][k] == (h, w)
            assert a["crop_top_left"][k] == centre
            odd += (cw - bw) % 2
            if torch.equal(a["pixels"][k], b["pixels"][k]):
                assert b["crop_top_left"][k] == centre
            else:
                mirrored += 1
                assert b["crop_top_left"][k] == (centre[0], (cw - bw) - centre[1])
    assert mirrored > 0 and odd > 0


def test_flip_and_epochs_change_pixels_deterministically(small_dataset: Path) -> None:
    flip = AugmentOptions(flip=True)
    first = collect(make_loader(small_dataset, augment=flip), epochs=3)
    again = collect(make_loader(small_dataset, augment=flip), epochs=3)
    plain = collect(make_loader(small_dataset), epochs=3)
    assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(first, again, strict=True))
    mirrored = same = 0
    for a, p in zip(first, plain, strict=True):
        for x, y in zip(a["pixels"], p["pixels"], strict=True):
            if torch.equal(x, y):
                same += 1
            elif torch.allclose(x, y.flip(-1), atol=1e-6):
                mirrored += 1
    assert mirrored > 0 and same > 0 and mirrored + same == sum(len(a["indices"]) for a in first)


def test_captions_are_processed_per_sample(small_dataset: Path) -> None:
    loader = make_loader(small_dataset, captions=CaptionOptions(prefix="tsuika", shuffle=True))
    for batch in collect(loader):
        for caption, i in zip(batch["captions"], batch["indices"], strict=True):
            assert caption.startswith("tsuika")
            assert sorted(caption.split(", ")[1:]) == sorted(
                t.strip() for t in loader.index[i].caption.split(",") if t.strip()
            )


def test_resume_matches_the_uninterrupted_stream(small_dataset: Path) -> None:
    full = collect(make_loader(small_dataset, augment=AugmentOptions(flip=True)), epochs=2)
    loader = make_loader(small_dataset, augment=AugmentOptions(flip=True))
    start = len(loader) + 1
    with loader:
        resumed = list(loader.iterate(1, 1, 1))
    assert [b["indices"] for b in resumed] == [b["indices"] for b in full[start:]]
    assert all(
        torch.equal(a["pixels"], b["pixels"]) for a, b in zip(resumed, full[start:], strict=True)
    )


def test_close_stops_worker_threads(small_dataset: Path) -> None:
    loader = make_loader(small_dataset, prefetch=3)
    stream = loader.iterate(0, 0, None)
    next(stream)
    assert any(t.name.startswith("tsuika-loader") for t in threading.enumerate())
    stream.close()
    loader.close()
    assert not any(t.name.startswith("tsuika-loader") for t in threading.enumerate())


def test_a_broken_file_fails_with_its_path(tmp_path: Path) -> None:
    folder = tmp_path / "1_x"
    folder.mkdir()
    (folder / "bad.png").write_text("not a picture")
    index = scan_dataset(tmp_path)
    sampler = BucketBatchSampler([(256, 256)], [1], 1)
    with (
        BatchLoader(index, [(256, 256)], sampler) as loader,
        pytest.raises(_native.ImageError, match="bad.png"),
    ):
        next(iter(loader))


@pytest.mark.parametrize(
    ("kwargs", "key"), [({"rotation": -1.0}, "rotation"), ({"color_jitter": 2.0}, "color_jitter")]
)
def test_augment_options_validate(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        AugmentOptions(**kwargs)
