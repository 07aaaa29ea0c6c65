"""The learning-rate range test: the sweep, the suggestion, and ``tsuika lr-find`` end to end."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_train_cli import draw_dataset, run_config, write_config
from tsuika.cli import main
from tsuika.models import build_tiny_model, save_diffusers
from tsuika.training.lr_find import smooth, suggest, sweep


def test_sweep_is_exponential_from_start_to_end() -> None:
    lrs = sweep(1e-6, 1e-2, 5)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1e-2)
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert ratios == pytest.approx([10.0] * 4)
    with pytest.raises(ValueError, match="start < end"):
        sweep(1e-2, 1e-6, 5)


def test_suggestion_is_the_steepest_descent_of_the_smoothed_loss() -> None:
    lrs = sweep(1e-7, 1.0, 71)
    # a loss that falls fastest at lr = 1e-4 (a logistic step in log10(lr)), then explodes
    loss = [1.0 - 0.8 / (1 + math.exp(-4 * (math.log10(lr) + 4))) for lr in lrs]
    out = suggest(lrs, loss)
    assert out["rule"].startswith("steepest") and out["suggested_lr"] == pytest.approx(
        1e-4, rel=0.3
    )


@pytest.mark.parametrize("seed", range(6))
def test_suggestion_lies_inside_the_swept_range(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 60)
    lrs = sweep(1e-6, 1e-1, n)
    loss = smooth([rng.uniform(0.0, 2.0) for _ in range(n)], 0.9)
    out = suggest(lrs, loss)
    for key in ("suggested_lr", "lr_at_min_loss", "min_loss_lr_over_10"):
        assert lrs[0] <= out[key] <= lrs[-1]
    assert out["suggested_lr"] in lrs or out["suggested_lr"] == out["min_loss_lr_over_10"]


def test_rising_curve_falls_back_to_the_minimum_over_ten() -> None:
    lrs = sweep(1e-5, 1e-1, 20)
    out = suggest(lrs, [float(i) for i in range(20)])
    assert out["rule"].endswith("/ 10") and out["suggested_lr"] == lrs[0]  # clamped to the sweep


def test_lr_find_cli_writes_the_plot_and_suggests_a_swept_rate(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = save_diffusers(build_tiny_model(seed=0), tmp_path / "tiny")
    data = draw_dataset(tmp_path / "data")
    out = tmp_path / "out"
    cfg = run_config(model, data, out, training={"gradient_accumulation": 1, "save_every": 0})
    config = write_config(tmp_path / "run.toml", cfg)
    args = ["lr-find", str(config), "--start", "1e-5", "--end", "10", "--steps", "8"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "suggested learning rate:" in result.output
    with Image.open(out / "lr_find.png") as img:
        assert img.format == "PNG" and img.size == (800, 480)
    found = json.loads((out / "lr_find.json").read_text())
    assert 2 <= found["steps_done"] <= 8 and len(found["loss"]) == found["steps_done"]
    assert found["lr"] == pytest.approx(sweep(1e-5, 10, 8)[: found["steps_done"]])
    assert 1e-5 <= found["suggested_lr"] <= 10 and found["suggested_lr"] <= found["lr"][-1]
    assert f"{found['suggested_lr']:.3g}" in result.output
    as_json = CliRunner().invoke(main, [*args, "--steps", "3", "--json"])
    assert json.loads(as_json.stdout)["steps"] == 3
    assert not (out / "tiny_lora.safetensors").exists()  # nothing but the plot and the numbers
    bad = CliRunner().invoke(main, ["lr-find", str(config), "--start", "1", "--end", "0.1"])
    assert bad.exit_code == 2 and "start < end" in bad.output
