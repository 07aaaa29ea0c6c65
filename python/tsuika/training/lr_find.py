"""The learning-rate range test (``tsuika lr-find``).

After Leslie N. Smith, "Cyclical Learning Rates for Training Neural
Networks" (WACV 2017, sec. 3.3, the "LR range test") and fastai's
``lr_find``: train from the run's starting point while the learning rate
grows exponentially from ``start`` to ``end`` over ``steps`` optimizer steps
(``lr_i = start * (end / start) ** (i / (steps - 1))``; a text-encoder group
with its own rate keeps its ratio to ``training.learning_rate``), smooth the
loss with a bias-corrected exponential moving average (``beta``, 0.98 as
fastai), and stop early once the smoothed loss exceeds ``diverge`` (4) times
its minimum or becomes NaN.

Suggestion: the learning rate where the smoothed loss falls fastest
against ``log10(lr)`` (the most negative finite difference, fastai's
"steep" point), leaving out the first 10% and the last 5% of the points
(the start is still warming the average; the end is diverging). When fewer
than 5 points remain, or the curve never falls, the fallback is the rate at
the minimum smoothed loss divided by 10 (fastai's ``lr_min``), clamped to
the swept range. Both values are reported; the suggestion always lies
inside the swept range. Diffusion losses are noisy (random timesteps), so
read the plot as well as the number.

Nothing is saved except ``{output.dir}/lr_find.png`` and ``lr_find.json``;
the model is not changed on disk.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from tsuika.atomic import write_json_atomic
from tsuika.config import RunConfig
from tsuika.training.plot import (
    SMOOTH_COLOUR,
    TRAIN_COLOUR,
    VAL_COLOUR,
    Chart,
    Series,
    line_chart,
)
from tsuika.training.plot import ema as smooth  # noqa: F401 - the smoothing used here


def sweep(start: float, end: float, steps: int) -> list[float]:
    """``steps`` learning rates growing exponentially from ``start`` to ``end``."""
    if not 0 < start < end:
        raise ValueError(f"lr-find needs 0 < start < end, got start={start}, end={end}")
    if steps < 2:
        raise ValueError(f"lr-find needs at least 2 steps, got {steps}")
    return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, Any]:
    """The steepest-descent learning rate (see the module docstring) and the min/10 fallback."""
    n = len(lrs)
    if n == 0:
        raise ValueError("lr-find recorded no loss")
    finite = [i for i in range(n) if math.isfinite(smoothed[i])]
    i_min = min(finite, key=lambda i: smoothed[i]) if finite else 0
    min_over_10 = min(max(lrs[i_min] / 10, lrs[0]), lrs[-1])
    lo, hi = n // 10, n - max(1, n // 20)
    slopes = [
        ((smoothed[i + 1] - smoothed[i]) / (math.log10(lrs[i + 1]) - math.log10(lrs[i])), i)
        for i in range(lo, min(hi, n - 1))
        if math.isfinite(smoothed[i]) and math.isfinite(smoothed[i + 1])
    ]
    steepest = min(slopes) if len(slopes) >= 4 else None
    if steepest is not None and steepest[0] < 0:
        suggestion, rule = lrs[steepest[1]], "steepest descent of the smoothed loss"
    else:
        suggestion, rule = min_over_10, "learning rate at the minimum loss / 10"
    return {
        "suggested_lr": suggestion,
        "rule": rule,
        "lr_at_min_loss": lrs[i_min],
        "min_loss_lr_over_10": min_over_10,
    }


class _Fixed:
    """Stands in for the LR schedule: the sweep sets each step's rate itself."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def step(self) -> None:
        pass

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]


def lr_range_test(
    cfg: RunConfig,
    *,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = 200,
    beta: float = 0.98,
    diverge: float = 4.0,
) -> dict[str, Any]:
    """Run the range test for ``cfg`` (its training images only); return the result dict."""
    from tqdm.auto import tqdm

    from tsuika.data.split import DataSplit
    from tsuika.training.data import run_split
    from tsuika.training.loop import Trainer

    lrs = sweep(start, end, steps)
    run = copy.deepcopy(cfg)
    run.training.steps, run.training.save_every, run.sample.every = steps, 0, 0
    trainer = Trainer(run, split=DataSplit(run_split(cfg).train))
    try:
        base = cfg.training.learning_rate or 1.0
        groups = trainer.optimizer.param_groups
        ratios = [g.get("initial_lr", g["lr"]) / base for g in groups]
        trainer.lr_schedule = _Fixed(trainer.optimizer)
        trainer.enable_latent_cache()
        batches = trainer.data.batches()
        tried, losses, smoothed, avg = [], [], [], 0.0
        main = trainer.accelerator.is_main_process
        for i, lr in enumerate(tqdm(lrs, desc="lr-find", unit="step", disable=not main)):
            for g, ratio in zip(groups, ratios, strict=True):
                g["lr"] = lr * ratio
            loss = trainer.train_step(batches)
            avg = beta * avg + (1 - beta) * loss
            tried.append(lr)
            losses.append(loss)
            smoothed.append(avg / (1 - beta ** (i + 1)))
            best = min(smoothed)
            if not math.isfinite(smoothed[-1]) or (i > 0 and smoothed[-1] > diverge * best):
                break
    finally:
        trainer.close()
    result = {
        "start": start,
        "end": end,
        "steps": steps,
        "steps_done": len(tried),
        "stopped_early": len(tried) < steps,
        "lr": tried,
        "loss": losses,
        "smoothed_loss": smoothed,
        **suggest(tried, smoothed),
    }
    out = Path(cfg.output.dir)
    if main:
        result["plot"] = str(plot_lr_find(result, out / "lr_find.png"))
        write_json_atomic(out / "lr_find.json", result)
    return result


def plot_lr_find(result: dict[str, Any], path: Path) -> Path:
    """Loss (raw and smoothed) against the learning rate on a log axis, the suggestion marked."""
    lrs = result["lr"]
    chart = Chart(
        "learning-rate range test",
        "learning rate (log scale)",
        "loss",
        [
            Series("loss", lrs, result["loss"], TRAIN_COLOUR, width=1),
            Series("smoothed", lrs, result["smoothed_loss"], SMOOTH_COLOUR),
        ],
        log_x=True,
        vlines=[(result["suggested_lr"], f"suggested {result['suggested_lr']:.2e}", VAL_COLOUR)],
    )
    return line_chart(chart, path)
