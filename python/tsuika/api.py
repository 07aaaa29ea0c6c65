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
