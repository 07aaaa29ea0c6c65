"""Pure parts of the overfitting controls: split, folds, early stopping, the warning, plots."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image
from tsuika.data.scan import DatasetError, DatasetIndex, ImageItem
from tsuika.data.split import fold_indices, item_key, split_indices
from tsuika.training.cv import aggregate, recommend
from tsuika.training.early_stop import EarlyStopping, overfit_warning, replay
from tsuika.training.plot import Chart, Series, line_chart, nice_ticks, plot_losses
from tsuika.training.validation import fixed_timesteps


def fake_index(names: list[str], root: Path = Path("/data")) -> DatasetIndex:
    items = tuple(ImageItem(root / "1_x" / n, f"caption {n}", 1, "x", "1_x") for n in names)
    return DatasetIndex(root, items)


NAMES = [f"img{i:02d}.png" for i in range(20)]


def keys(index: DatasetIndex, indices: list[int]) -> set[str]:
    return {item_key(index, i) for i in indices}


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5])
def test_split_is_disjoint_sized_and_independent_of_listing_order(fraction: float) -> None:
    forward, backward = fake_index(NAMES), fake_index(NAMES[::-1])
    train, val = split_indices(forward, fraction, seed=7)
    assert not set(train) & set(val) and sorted(train + val) == list(range(20))
    assert len(val) == max(1, round(fraction * 20))
    train_b, val_b = split_indices(backward, fraction, seed=7)
    assert keys(forward, val) == keys(backward, val_b)  # same images, whatever the order
    assert keys(forward, train) == keys(backward, train_b)


def test_split_depends_on_the_seed_and_keeps_one_image_to_train() -> None:
    index = fake_index(NAMES)
    vals = {frozenset(split_indices(index, 0.25, seed)[1]) for seed in range(5)}
    assert len(vals) > 1
    with pytest.raises(DatasetError, match="leaves none to train on"):
        split_indices(fake_index(["a.png"]), 0.5, seed=0)


@pytest.mark.parametrize("folds", [2, 3, 5, 20])
def test_folds_are_disjoint_cover_the_data_and_are_balanced(folds: int) -> None:
    index = fake_index(NAMES)
    parts = fold_indices(index, folds, seed=1)
    assert len(parts) == folds
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(20))  # cover, and disjoint (no repeats)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    backward = fake_index(NAMES[::-1])
    again = fold_indices(backward, folds, seed=1)
    assert [keys(index, p) for p in parts] == [keys(backward, p) for p in again]


def test_too_many_folds_is_an_error() -> None:
    with pytest.raises(DatasetError, match="--folds 5"):
        fold_indices(fake_index(NAMES[:3]), 5, seed=0)


def test_fixed_timesteps_spread_over_the_schedule() -> None:
    assert fixed_timesteps(4, 1000) == [125, 375, 625, 875]
    assert fixed_timesteps(1, 1000) == [500]


@pytest.mark.parametrize(
    ("curve", "patience", "min_delta", "stop_at", "best_step"),
    [
        ([1.0, 0.9, 1.0, 1.1, 1.2], 2, 0.0, 4, 2),  # rising curve fires after 2 bad evals
        ([1.0, 0.9, 0.8, 0.7, 0.6], 2, 0.0, None, 5),  # always improving: never stops
        ([1.0, 0.99, 0.98, 0.97], 2, 0.05, 3, 1),  # improvements smaller than min_delta
        ([1.0, math.nan, math.nan], 2, 0.0, 3, 1),  # NaN never improves
        ([1.0, 1.1, 1.2, 1.3], None, 0.0, None, 1),  # no patience: never stops
    ],
)
def test_early_stopping(
    curve: list[float], patience: int | None, min_delta: float, stop_at: int | None, best_step: int
) -> None:
    early = EarlyStopping(patience, min_delta)
    stopped = None
    for step, loss in enumerate(curve, start=1):
        early.update(step, loss)
        if early.should_stop:
            stopped = step
            break
    assert stopped == stop_at and early.best_step == best_step
    restored = EarlyStopping(patience, min_delta)
    restored.load_state(early.state())
    assert restored == early


# A falling curve with one lucky dip at step 2 (a noisy evaluation) before the true
# minimum at step 5; the raw rule keeps the dip and stops at step 4.
DIP = [[1, 1.0], [2, 0.6], [3, 0.8], [4, 0.75], [5, 0.62], [6, 0.66], [7, 0.7], [8, 0.8]]


@pytest.mark.parametrize(
    ("patience", "smoothing", "min_steps", "kept", "stop"),
    [
        (2, 0.0, 0, 2, 4),  # raw: the dip wins, the run stops two evaluations later
        (2, 0.5, 0, 6, 8),  # EMA 1.0 .8 .8 .775 .6975 .67875 .689: lags the minimum by one
        (2, 0.0, 3, 5, 7),  # evaluations before step 3 are no candidates
        (None, 0.0, 0, 2, None),  # no patience: the lowest raw value, no stop
    ],
)
def test_smoothing_and_min_steps_skip_a_lucky_dip(
    patience: int | None, smoothing: float, min_steps: int, kept: int, stop: int | None
) -> None:
    assert replay(DIP, patience, 0.0, smoothing, min_steps) == (kept, stop)
    early = EarlyStopping(patience, 0.0, smoothing, min_steps)  # the loop's incremental use
    for step, loss in DIP[:4]:
        early.update(step, loss)
    restored = EarlyStopping(patience, 0.0, smoothing, min_steps)
    restored.load_state(early.state())  # resumed mid-run, the smoothed value goes with it
    for step, loss in DIP[4:]:
        early.update(step, loss)
        restored.update(step, loss)
    assert restored == early and early.best_step == kept


def test_smoothed_curve_ignores_nan_and_still_counts_it_as_no_improvement() -> None:
    early = EarlyStopping(2, 0.0, 0.5)
    for step, loss in [[1, 1.0], [2, math.nan], [3, math.nan]]:
        early.update(step, loss)
    assert early.smoothed == 1.0 and early.best_step == 1 and early.should_stop


TRAIN_FALLING = [[s, 1.0 - 0.01 * s] for s in range(1, 51)]
TRAIN_FLAT = [[s, 0.5] for s in range(1, 51)]


@pytest.mark.parametrize(
    ("train", "val", "window", "fires"),
    [
        (TRAIN_FALLING, [[10, 0.5], [20, 0.4], [30, 0.45], [40, 0.5], [50, 0.55]], 3, True),
        (TRAIN_FALLING, [[10, 0.5], [20, 0.4], [30, 0.45], [40, 0.5], [50, 0.55]], 4, False),
        (TRAIN_FALLING, [[10, 0.5], [20, 0.4], [30, 0.45], [40, 0.44], [50, 0.55]], 3, False),
        (TRAIN_FLAT, [[10, 0.5], [20, 0.4], [30, 0.45], [40, 0.5], [50, 0.55]], 3, False),
        (TRAIN_FALLING, [[10, 0.5], [20, 0.6]], 1, True),
        (TRAIN_FALLING, [[10, 0.5]], 1, False),
    ],
)
def test_overfit_warning(train: list, val: list, window: int, fires: bool) -> None:
    message = overfit_warning(train, val, window)
    assert (message is not None) == fires
    if fires:
        assert "overfitting" in message and f"last {window} evaluations" in message


@pytest.mark.parametrize(
    ("curves", "best", "recommended"),
    [
        # fold means 1.0, 0.8, 0.79, 0.9 with a wide spread: step 20 is within one SE of step 30
        (
            [
                [[10, 1.0], [20, 0.7], [30, 0.69], [40, 0.8]],
                [[10, 1.0], [20, 0.9], [30, 0.89], [40, 1.0]],
            ],
            30,
            20,
        ),
        # identical folds (no spread): the minimum itself
        ([[[10, 1.0], [20, 0.7], [30, 0.6]], [[10, 1.0], [20, 0.7], [30, 0.6]]], 30, 30),
    ],
)
def test_cv_recommendation_is_the_one_standard_error_step(
    curves: list, best: int, recommended: int
) -> None:
    rows = aggregate(curves)
    assert [r["step"] for r in rows] == sorted({s for c in curves for s, _ in c})
    out = recommend(rows)
    assert out["best_step"] == best and out["recommended_steps"] == recommended


def test_aggregate_keeps_steps_common_to_all_folds() -> None:
    rows = aggregate([[[1, 1.0], [2, 2.0]], [[1, 3.0]]])
    assert rows == [{"step": 1, "mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2}]


def test_nice_ticks_cover_the_range_with_round_steps() -> None:
    ticks = nice_ticks(0.13, 0.87)
    assert ticks[0] >= 0.13 - 1e-12 and ticks[-1] <= 0.87 + 1e-12 and len(ticks) >= 3
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1 and steps.pop() in (0.1, 0.2, 0.05)


@pytest.mark.parametrize(
    ("low", "high"),
    [(1.0, 1.0), (0.0, 0.0), (1e6, 1e6 + 1e-10), (-3.5, -3.5), (0.1, 0.1 + 1e-15), (2.0, 1e9)],
)
def test_nice_ticks_end_on_degenerate_and_float_tight_ranges(low: float, high: float) -> None:
    """A range narrower than float steps at its magnitude (one loss value, a flat
    curve) once looped forever adding a step that rounded to nothing."""
    ticks = nice_ticks(low, high)
    assert 2 <= len(ticks) <= 12
    assert ticks == sorted(set(ticks))
    assert ticks[0] <= max(low, ticks[0]) and ticks[-1] >= min(high, ticks[-1])


def test_charts_are_pngs_with_the_series_drawn(tmp_path: Path) -> None:
    path = plot_losses([[1, 1.0], [2, 0.8], [3, 0.7]], [[2, 0.9], [3, 0.95]], tmp_path / "l.png")
    with Image.open(path) as img:
        assert img.size == (800, 480) and img.format == "PNG"
        colours = {c for _, c in img.getcolors(1 << 16)}
    assert (220, 90, 30) in colours  # the validation series
    chart = Chart(
        "lr",
        "lr",
        "loss",
        [Series("s", [1e-6, 1e-3, 1.0], [2.0, 1.0, math.inf], (0, 0, 0))],
        log_x=True,
    )
    with Image.open(line_chart(chart, tmp_path / "lr.png")) as img:
        assert img.size == (800, 480)
