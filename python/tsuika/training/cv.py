"""K-fold cross-validation of a run (``tsuika cv CONFIG --folds K``).

The images of ``data.path`` are dealt into K disjoint folds that cover the
dataset (:func:`tsuika.data.split.fold_indices`, seeded by
``training.seed``). Fold k trains a short run (``steps``, default
``training.steps``) on the other folds and validates on fold k every
``validation.every`` steps (when that is more than ``steps``, ``steps // 5``
or 1) and at the last step, without early stopping, in
``{output.dir}/cv/fold-{k}``; the latent cache is shared by all folds.

Report: per evaluated step, the mean validation loss over folds and its
spread (the sample standard deviation, ``ddof = 1``). The recommended step
count follows the one-standard-error rule (Hastie, Tibshirani & Friedman,
"The Elements of Statistical Learning", 2nd ed., sec. 7.10): the smallest
evaluated step whose mean validation loss is within one standard error
(``std / sqrt(K)``) of the lowest mean, which prefers the shorter run when
the curves cannot tell the two apart. ``best_step`` (the plain minimum) is
reported beside it. Each fold trains on ``(K-1)/K`` of the images, so the
full run sees each image a little less often per step; the step counts are
still the right order of magnitude for it.
"""

from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path
from typing import Any

from tsuika.atomic import write_json_atomic
from tsuika.config import RunConfig
from tsuika.data.split import DataSplit, fold_indices, item_key, subset
from tsuika.training.data import run_images
from tsuika.training.plot import SMOOTH_COLOUR, Chart, Series, line_chart

FOLD_COLOURS = [(150, 150, 150), (170, 190, 150), (190, 160, 150), (150, 170, 200)]


def aggregate(curves: list[list[list[float]]]) -> list[dict[str, float]]:
    """Mean and sample std of the validation loss at each step that every fold evaluated."""
    common = set.intersection(*({int(s) for s, _ in c} for c in curves)) if curves else set()
    rows = []
    for step in sorted(common):
        values = [v for c in curves for s, v in c if int(s) == step]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append({"step": step, "mean": statistics.fmean(values), "std": std, "n": len(values)})
    return rows


def recommend(rows: list[dict[str, float]]) -> dict[str, Any]:
    """The one-standard-error step and the plain minimum (see the module docstring)."""
    if not rows:
        raise ValueError("cross-validation produced no evaluated step common to all folds")
    best = min(rows, key=lambda r: r["mean"])
    se = best["std"] / math.sqrt(best["n"])
    chosen = next(r for r in rows if r["mean"] <= best["mean"] + se)
    return {
        "best_step": int(best["step"]),
        "best_mean_val_loss": best["mean"],
        "standard_error": se,
        "recommended_steps": int(chosen["step"]),
    }


def fold_config(cfg: RunConfig, out_dir: Path, steps: int) -> RunConfig:
    """The run of one fold: ``steps`` steps, validation every few steps, nothing else written."""
    run = copy.deepcopy(cfg)
    run.training.steps, run.training.save_every, run.sample.every = steps, 0, 0
    v = run.validation
    v.split, v.folder, v.patience = 0.0, None, None
    if v.every > steps:
        v.every = max(1, steps // 5)
    run.output.dir = out_dir
    return run


def cross_validate(cfg: RunConfig, folds: int, steps: int | None = None) -> dict[str, Any]:
    """Train ``folds`` short runs on disjoint folds; return curves, spread and the recommendation."""
    from tsuika.training.loop import Trainer

    steps = steps or cfg.training.steps
    index = run_images(cfg)
    parts = fold_indices(index, folds, cfg.training.seed)
    root = Path(cfg.output.dir) / "cv"
    curves, dirs, every = [], [], 1
    for k, held in enumerate(parts):
        run = fold_config(cfg, root / f"fold-{k}", steps)
        every = run.validation.every
        held_set = set(held)
        train = [i for i in range(len(index)) if i not in held_set]
        trainer = Trainer(run, split=DataSplit(subset(index, train), subset(index, held)))
        trainer.cache_dir = Path(cfg.output.dir) / "cache" / "latents"
        try:
            summary = trainer.run()
        finally:
            trainer.close()
        curves.append(summary.get("val_loss", []))
        dirs.append(str(run.output.dir))
    rows = aggregate(curves)
    result: dict[str, Any] = {
        "folds": folds,
        "steps": steps,
        "every": every,
        "fold_sizes": [len(p) for p in parts],
        "fold_images": [[item_key(index, i) for i in p] for p in parts],
        "fold_dirs": dirs,
        "curves": curves,
        "mean_val_loss": rows,
        **recommend(rows),
    }
    result["message"] = describe(result)
    result["plot"] = str(plot_cv(result, root / "cv.png"))
    write_json_atomic(root / "cv.json", result)
    return result


def describe(result: dict[str, Any]) -> str:
    """The recommendation in words."""
    return (
        f"{result['folds']}-fold cross-validation over {sum(result['fold_sizes'])} images, "
        f"{result['steps']} steps per fold: the mean validation loss is lowest at step "
        f"{result['best_step']} ({result['best_mean_val_loss']:.5f}); the smallest step within "
        f"one standard error ({result['standard_error']:.5f}) of it is "
        f"{result['recommended_steps']}. Recommended: training.steps = "
        f"{result['recommended_steps']} for the full run."
    )


def plot_cv(result: dict[str, Any], path: Path) -> Path:
    """Each fold's validation curve and their mean."""
    series = [
        Series(f"fold {k}", [s for s, _ in c], [v for _, v in c], FOLD_COLOURS[k % 4], width=1)
        for k, c in enumerate(result["curves"])
    ]
    rows = result["mean_val_loss"]
    series.append(
        Series(
            "mean",
            [r["step"] for r in rows],
            [r["mean"] for r in rows],
            SMOOTH_COLOUR,
            markers=True,
        )
    )
    chart = Chart("cross-validation", "step", "validation loss", series)
    chart.vlines.append((result["recommended_steps"], "recommended", (200, 60, 30)))
    return line_chart(chart, path)
