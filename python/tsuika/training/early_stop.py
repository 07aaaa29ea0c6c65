"""Early stopping and the overfitting warning: pure bookkeeping over loss curves.

* Early stopping (as Keras' ``EarlyStopping`` / kohya's absence of it): an
  evaluation *improves* when its loss is below the best so far by more than
  ``min_delta``; after ``patience`` evaluations in a row without an
  improvement the run stops. A NaN loss never improves. The loss it compares
  is the raw validation loss, or with ``smoothing`` s its exponential moving
  average ``m_k = s m_{k-1} + (1 - s) loss_k`` (``m_1 = loss_1``; a NaN
  loss leaves ``m`` as it was and counts as no improvement). Evaluations
  before ``min_steps`` update the average but neither count as best nor use
  up patience: the first steps of a run, before the concept is learned, are
  not candidates (a DreamBooth's loss can be lowest at its very first
  evaluation, ``benches/README.md``). :func:`replay` runs the
  same rule over a recorded curve (validation never disturbs training, so a
  run without patience records every choice a run with it would make).
* The overfitting warning: validation loss rose at each of the last ``K``
  evaluations (``K + 1`` strictly increasing values) while the mean training
  loss of the steps leading to the last evaluation is below that of the
  steps leading to the first of them. ``K = 3`` by default
  (``validation.overfit_window``): one or two rises are common noise on a
  few validation images; three in a row rarely are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

Curve = list[list[float]]  # [[step, value], ...]


@dataclass
class EarlyStopping:
    """Best loss, best step and evaluations without improvement; ``patience=None`` never stops."""

    patience: int | None = None
    min_delta: float = 0.0
    smoothing: float = 0.0
    min_steps: int = 0
    best_loss: float = math.inf
    best_step: int | None = None
    bad_evals: int = 0
    smoothed: float | None = None

    def update(self, step: int, loss: float) -> bool:
        """Record one evaluation; True when it is a new best."""
        nan = math.isnan(loss)
        if not nan:
            s = self.smoothing
            self.smoothed = loss if self.smoothed is None else s * self.smoothed + (1 - s) * loss
        if step < self.min_steps:
            return False
        if not nan and self.smoothed < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.bad_evals = float(self.smoothed), int(step), 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience

    def state(self) -> dict[str, Any]:
        return asdict(self)

    def load_state(self, state: dict[str, Any]) -> None:
        for key in ("best_loss", "best_step", "bad_evals", "smoothed"):
            if key in state:
                setattr(self, key, state[key])


def replay(curve: Curve, patience: int | None, min_delta: float = 0.0, smoothing: float = 0.0,
           min_steps: int = 0) -> tuple[int | None, int | None]:  # fmt: skip
    """(the step kept as best, the step the run would stop at or None) over ``curve``."""
    early = EarlyStopping(patience, min_delta, smoothing, min_steps)
    for step, loss in curve:
        early.update(int(step), float(loss))
        if early.should_stop:
            return early.best_step, int(step)
    return early.best_step, None


def _segment_mean(train: Curve, after: float, upto: float) -> float | None:
    values = [v for s, v in train if after < s <= upto]
    return sum(values) / len(values) if values else None


def overfit_warning(train: Curve, val: Curve, window: int = 3) -> str | None:
    """A plain sentence when validation loss rose ``window`` times in a row while
    training loss fell (see the module docstring); else None."""
    if window < 1 or len(val) < window + 1:
        return None
    last = val[-(window + 1) :]
    if not all(b[1] > a[1] for a, b in zip(last, last[1:], strict=False)):
        return None
    first_step, last_step = last[0][0], last[-1][0]
    previous = {s: p for (p, _), (s, _) in zip([[0, 0.0], *val], val, strict=False)}
    before = _segment_mean(train, previous[first_step], first_step)
    after = _segment_mean(train, previous[last_step], last_step)
    if before is None or after is None or not after < before:
        return None
    return (
        f"validation loss rose for the last {window} evaluations "
        f"(step {first_step:g}: {last[0][1]:.4g} -> step {last_step:g}: {last[-1][1]:.4g}) "
        f"while training loss fell ({before:.4g} -> {after:.4g}): the model is likely "
        "overfitting; use the -best file, fewer steps, a lower learning rate or more data"
    )
