"""``tsuika cv`` end to end: disjoint folds that cover the data, curves, a recommendation."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner
from test_train_cli import draw_dataset, run_config, write_config
from tsuika.cli import main
from tsuika.models import build_tiny_model, save_diffusers


def test_cv_cli_trains_each_fold_and_recommends_an_evaluated_step(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = save_diffusers(build_tiny_model(seed=0), tmp_path / "tiny")
    data = draw_dataset(tmp_path / "data", n=4)
    out = tmp_path / "out"
    cfg = run_config(
        model,
        data,
        out,
        training={"gradient_accumulation": 1, "save_every": 0, "batch_size": 1},
        validation={"every": 1, "split": 0.25, "patience": 1},  # cv replaces these per fold
    )
    config = write_config(tmp_path / "run.toml", cfg)
    result = CliRunner().invoke(main, ["cv", str(config), "--folds", "2", "--steps", "2", "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(result.stdout)  # one JSON document; progress goes to stderr
    folds = [set(f) for f in report["fold_images"]]
    assert len(folds) == 2 and not folds[0] & folds[1]
    assert folds[0] | folds[1] == {f"2_sks shape/{i}.png" for i in range(4)}
    assert report["fold_sizes"] == [2, 2]
    assert [[s for s, _ in c] for c in report["curves"]] == [[1, 2], [1, 2]]  # no early stop
    assert [r["step"] for r in report["mean_val_loss"]] == [1, 2]
    for r in report["mean_val_loss"]:
        values = [c[r["step"] - 1][1] for c in report["curves"]]
        assert abs(r["mean"] - sum(values) / 2) < 1e-9
    assert report["recommended_steps"] in (1, 2) and report["best_step"] in (1, 2)
    assert report["recommended_steps"] <= report["best_step"]
    assert "Recommended: training.steps" in report["message"]
    for k, folder in enumerate(report["fold_dirs"]):
        assert Path(folder) == out / "cv" / f"fold-{k}"
        summary = json.loads((Path(folder) / "summary.json").read_text())
        assert summary["validation_images"] == 2 and summary["steps_done"] == 2
    assert (out / "cv" / "cv.png").is_file() and (out / "cv" / "cv.json").is_file()
    words = CliRunner().invoke(main, ["cv", str(config), "--folds", "5", "--steps", "1"])
    assert words.exit_code == 1 and "--folds 5" in words.output
