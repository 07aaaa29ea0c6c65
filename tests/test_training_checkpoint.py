"""Checkpoints (atomic, newest found, RNG restored) and the encoder caches."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tsuika.training import checkpoint as ckpt
from tsuika.training.cache import LatentCache, TextCache, latent_key, module_digest


def _state(step: int) -> ckpt.TrainingState:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.ones(3)
    opt.step()
    return ckpt.TrainingState(
        step=step,
        epoch=1,
        batch_index=2,
        optimizer=opt.state_dict(),
        rng=ckpt.capture_rng(),
        train_loss=[[1, 0.5]],
    )


def test_save_load_and_latest(tmp_path: Path) -> None:
    adapter = {"a.weight": torch.arange(6.0).reshape(2, 3)}
    for step in (5, 20, 10):
        ckpt.save_checkpoint(tmp_path, adapter, _state(step), {"method": {"name": "lora"}})
    # a half-written temp folder and a folder without state.pt are ignored
    (tmp_path / "checkpoints" / ".step-30.tmp-1").mkdir()
    (tmp_path / "checkpoints" / "step-40").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-20"
    loaded, state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "step-10")
    assert torch.equal(loaded["a.weight"], adapter["a.weight"])
    assert (state.step, state.epoch, state.batch_index) == (10, 1, 2)
    assert state.optimizer["state"][0]["step"] == 1
    assert ckpt.checkpoint_config(tmp_path / "checkpoints" / "step-10")["method"]["name"] == "lora"
    # re-saving a step replaces it
    ckpt.save_checkpoint(tmp_path, {"a.weight": torch.zeros(1)}, _state(10), {})
    loaded, _ = ckpt.load_checkpoint(tmp_path / "checkpoints" / "step-10")
    assert loaded["a.weight"].shape == (1,)
    assert not list((tmp_path / "checkpoints").glob(".step-10*"))


def test_missing_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint found"):
        ckpt.latest_checkpoint(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="not a tsuika checkpoint"):
        ckpt.load_checkpoint(tmp_path)


def test_rng_states_round_trip() -> None:
    state = ckpt.capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_latent_key_changes_with_every_part() -> None:
    base = latent_key("img", "vae", (64, 64), "center", False)
    assert base == latent_key("img", "vae", (64, 64), "center", False)
    others = [
        latent_key("img2", "vae", (64, 64), "center", False),
        latent_key("img", "vae2", (64, 64), "center", False),
        latent_key("img", "vae", (64, 32), "center", False),
        latent_key("img", "vae", (64, 64), "random", False),
        latent_key("img", "vae", (64, 64), "center", True),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_module_digest_sees_weight_changes() -> None:
    layer = torch.nn.Linear(3, 2)
    before = module_digest(layer)
    assert module_digest(layer) == before
    with torch.no_grad():
        layer.weight[0, 0] += 1e-6
    assert module_digest(layer) != before


def test_latent_cache_fill_encodes_only_missing(tmp_path: Path) -> None:
    images = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(bytes([i]) * 10)
        images.append(path)
    calls: list[int] = []

    def load(paths, bucket, flips):
        pixels = [torch.full((3, bucket[1], bucket[0]), float(p.name[0])) for p in paths]
        return torch.stack(pixels), [(bucket[1], bucket[0], 0, 0)] * len(paths)

    def encode(pixels):
        calls.append(len(pixels))
        return pixels[:, :1, ::8, ::8] * 2

    cache = LatentCache(tmp_path / "cache", "vae")
    reqs = [(cache.key(p, (16, 8), "center", False), p, (16, 8), False) for p in images]
    cache.fill(reqs, load, encode, batch_size=2)
    assert calls == [2, 1] and cache.encoded == 3 and cache.hits == 0
    assert torch.equal(cache.load_entry(reqs[2][0])[0], torch.full((1, 1, 2), 4.0))
    again = LatentCache(tmp_path / "cache", "vae")
    again.fill(reqs, load, encode, batch_size=2)
    assert calls == [2, 1] and again.hits == 3 and again.encoded == 0


def test_text_cache_encodes_each_caption_once() -> None:
    seen: list[list[str]] = []

    def encode(captions):
        seen.append(list(captions))
        return torch.stack([torch.full((2, 3), float(len(c))) for c in captions])

    cache = TextCache(max_entries=2)
    out = cache.get(["a", "bb", "a"], encode)
    assert out.shape == (3, 2, 3) and out[1, 0, 0] == 2.0
    cache.get(["bb"], encode)
    assert seen == [["a"], ["bb"]]
    cache.get(["ccc"], encode)  # evicts the least recently used ("a")
    cache.get(["a"], encode)
    assert seen[-1] == ["a"]
