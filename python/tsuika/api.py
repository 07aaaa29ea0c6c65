"""The Python entry points of the user-facing contract (re-exported by ``tsuika``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tsuika.config import RunConfig, as_run_config


def train(
    config: str | os.PathLike[str] | dict[str, Any] | RunConfig,
    *,
    overrides: list[str] | None = None,
    resume: str | Path | bool | None = None,
) -> dict[str, Any]:
    """Train as ``tsuika train`` does and return the run's summary (``summary.json``).

    ``config`` is a TOML path, a dict of sections (relative paths against the
    current folder) or a :class:`tsuika.config.RunConfig`. ``overrides`` are
    ``"section.key=value"`` strings; ``resume=True`` continues from the newest
    checkpoint in ``output.dir``, a path from that checkpoint.
    """
    from tsuika.training.loop import train as run

    return run(as_run_config(config, overrides), resume=resume)


def cv(
    config: str | os.PathLike[str] | dict[str, Any] | RunConfig,
    *,
    folds: int = 5,
    steps: int | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Cross-validate as ``tsuika cv`` does: ``folds`` short runs of ``steps`` (default
    ``training.steps``) on disjoint folds; returns the curves, their mean and spread, and
    ``recommended_steps`` (see :mod:`tsuika.training.cv`)."""
    from tsuika.training.cv import cross_validate

    return cross_validate(as_run_config(config, overrides), folds, steps)


def lr_find(
    config: str | os.PathLike[str] | dict[str, Any] | RunConfig,
    *,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = 200,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """The learning-rate range test of ``tsuika lr-find``; returns the swept rates, losses
    and ``suggested_lr``, and writes ``lr_find.png`` in ``output.dir``."""
    from tsuika.training.lr_find import lr_range_test

    return lr_range_test(as_run_config(config, overrides), start=start, end=end, steps=steps)
