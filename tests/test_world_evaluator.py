"""The tiny world's evaluator: the shipped classifier reads fresh pictures correctly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tsuika.world.evaluator import (
    DEFAULT_PATH,
    Evaluator,
    EvaluatorError,
    EvaluatorNet,
    accuracy,
    load_evaluator,
    save_evaluator,
    to_model_input,
)
from tsuika.world.fit import HELDOUT_SEED, LABELS, augment, train_evaluator
from tsuika.world.render import render, sample_scenes

FRESH_SEED = 20_240_917  # neither the training seed nor the recorded held-out seed
# Held-out bars: a broken renderer (shapes swapped, colours shifted) or a stale or
# corrupted evaluator falls far below these.
BARS = {"shape": 0.95, "colour": 0.95, "style": 0.9, "background": 0.9}


@pytest.fixture(scope="module")
def evaluator():
    return load_evaluator()


@pytest.fixture(scope="module")
def fresh():
    scenes = sample_scenes(200, FRESH_SEED)
    return scenes, np.stack([render(s) for s in scenes])


def test_shipped_files_are_small_and_match_the_renderers_vocabulary(evaluator) -> None:
    assert DEFAULT_PATH.stat().st_size < 2_000_000
    assert evaluator.labels == LABELS  # a new shape or colour needs a retrained evaluator
    doc = json.loads(DEFAULT_PATH.with_suffix(".json").read_text())
    assert doc["heldout"]["seed"] == HELDOUT_SEED
    assert min(doc["heldout"]["accuracy"].values()) >= 0.9


def test_shipped_evaluator_reads_fresh_scenes(evaluator, fresh) -> None:
    scenes, images = fresh
    assert FRESH_SEED not in (0, HELDOUT_SEED)
    got = accuracy(evaluator, scenes)
    for head, bar in BARS.items():
        assert got[head] >= bar, (head, got)


def test_predictions_agree_across_input_layouts(evaluator, fresh) -> None:
    _, images = fresh
    as_uint8 = evaluator.predict(images[:16])
    as_float = evaluator.predict(torch.from_numpy(images[:16]).permute(0, 3, 1, 2) / 127.5 - 1)
    one = evaluator.predict(images[3])
    assert [p["shape"] for p in as_uint8] == [p["shape"] for p in as_float]
    assert one[0]["colour"] == as_uint8[3]["colour"]
    probs = as_uint8[0]["probabilities"]
    assert set(probs) == set(LABELS)
    assert abs(sum(probs["shape"].values()) - 1) < 1e-4
    assert probs["shape"][as_uint8[0]["shape"]] == max(probs["shape"].values())


def test_score_is_the_fraction_matching_every_named_head(evaluator) -> None:
    reds = sample_scenes(20, 1, shapes=["circle"], colours=["red"], styles=["solid"])
    images = np.stack([render(s) for s in reds])
    assert evaluator.score(images, {"shape": "circle", "colour": "red"}) >= 0.95
    assert evaluator.score(images, {"colour": "blue"}) == 0.0
    mixed = {"background": [s.background for s in reds]}
    assert evaluator.score(images, mixed) >= 0.9
    with pytest.raises(EvaluatorError, match="unknown label 'gray'"):
        evaluator.score(images, {"colour": "gray"})
    with pytest.raises(EvaluatorError, match="unknown head 'size'"):
        evaluator.score(images, {"size": "big"})
    with pytest.raises(EvaluatorError, match="2 labels for 20 pictures"):
        evaluator.score(images, {"shape": ["circle", "star"]})


def test_bad_inputs_and_files_are_refused(tmp_path) -> None:
    with pytest.raises(EvaluatorError, match=r"\[N, 3, H, W\]"):
        to_model_input(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_evaluator(tmp_path / "nowhere.safetensors")
    bigger = to_model_input(np.zeros((1, 128, 128, 3), np.uint8))
    assert bigger.shape == (1, 3, 64, 64) and float(bigger.max()) == -1.0


def test_augment_keeps_pictures_close_and_in_range() -> None:
    images = np.stack([render(s) for s in sample_scenes(8, 4)])
    x = to_model_input(images)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert 0.0 < (y - x).abs().mean() < 0.25


def test_save_and_load_round_trip(tmp_path) -> None:
    """The loaded net gives the saved net's logits. Weights are stored in fp16, so the saved
    net's are rounded to fp16 first; its heads are scaled so that the logits spread far more
    than the tolerance (an untrained net's are all near zero)."""
    torch.manual_seed(0)
    net = EvaluatorNet({h: len(v) for h, v in LABELS.items()}, (8, 8, 16, 16)).eval()
    with torch.no_grad():
        for head in net.heads.values():
            head.weight.mul_(50)
    net.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                         for k, v in net.state_dict().items()})  # fmt: skip
    saved = Evaluator(net, LABELS, {"note": "untrained"})
    weights = save_evaluator(saved, tmp_path / "ev.json")
    assert weights == tmp_path / "ev.safetensors" and weights.is_file()
    loaded = load_evaluator(tmp_path / "ev")
    assert loaded.labels == LABELS and loaded.info == {"note": "untrained"}
    x = to_model_input(np.stack([render(s) for s in sample_scenes(4, 9)]))
    with torch.no_grad():
        a, b = saved.net(x), loaded.net(x)
    tolerance = 1e-5
    for head in LABELS:
        assert (a[head] - a[head].mean()).abs().max() > 100 * tolerance, head
        torch.testing.assert_close(b[head], a[head], atol=tolerance, rtol=0)
    doc = json.loads((tmp_path / "ev.json").read_text())
    (tmp_path / "ev.json").write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(EvaluatorError, match="ev.json: format"):
        load_evaluator(tmp_path / "ev")


@pytest.mark.slow
def test_training_writes_a_loadable_evaluator(tmp_path) -> None:
    trained = train_evaluator(
        tmp_path / "ev.safetensors", n_train=48, steps=2, batch_size=8, n_heldout=16, log=None
    )
    loaded = load_evaluator(tmp_path / "ev")
    assert loaded.labels == LABELS == trained.labels
    assert loaded.info["training"]["steps"] == 2
    assert set(loaded.info["heldout"]["accuracy"]) == set(LABELS)
