"""Notice dataset files that vanish or change while a run reads them.

Pictures are stamped (size, modification time) when the loader starts; before
each batch is read, its files are checked against their stamps. What then
happens is the user's choice (``data.on_missing``):

* ``"stop"`` (default) -- raise :class:`DatasetChangedError` naming the file;
  the latest checkpoint is intact, so the run can be fixed and resumed.
* ``"skip"`` -- report the file once and train on without it: in each later
  batch its place is taken by another picture of the same batch (so batch
  shapes stay the same); a batch with no picture left is skipped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tsuika.data.scan import DatasetError

ON_MISSING = ("stop", "skip")


class DatasetChangedError(DatasetError):
    """A dataset file vanished, or changed, during training; the message names it."""


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _report(message: str) -> None:
    print(f"tsuika: warning: {message}", file=sys.stderr, flush=True)


class DatasetWatch:
    """The files of a dataset, their stamps, and the ones dropped so far."""

    def __init__(
        self,
        paths: Sequence[Path],
        on_missing: str = "stop",
        report: Callable[[str], None] = _report,
    ) -> None:
        if on_missing not in ON_MISSING:
            raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
        self.paths = [Path(p) for p in paths]
        self.stamps = [_stamp(p) for p in self.paths]
        self.on_missing = on_missing
        self.report = report
        self.dropped: dict[int, str] = {}

    def problem(self, item: int) -> str | None:
        """Why item ``item`` cannot be used any more, or None."""
        now = _stamp(self.paths[item])
        if now is None:
            return "vanished (deleted or moved)"
        if now != self.stamps[item]:
            return "changed (its size or modification time differ from the start of the run)"
        return None

    def drop(self, item: int, reason: str) -> None:
        """Apply the policy to an item found unusable (by a stamp or a failed read)."""
        if item in self.dropped:
            return
        message = f"{self.paths[item]}: dataset file {reason} during training"
        if self.on_missing == "stop":
            raise DatasetChangedError(
                f'{message}; set data.on_missing = "skip" to train on without it'
            )
        self.dropped[item] = reason
        self.report(f'{message}; training goes on without it (data.on_missing = "skip")')

    def usable(self, items: Sequence[int]) -> list[int]:
        """``items`` minus the dropped ones, after checking each against its stamp."""
        for item in items:
            if item not in self.dropped:
                reason = self.problem(item)
                if reason is not None:
                    self.drop(item, reason)
        return [i for i in items if i not in self.dropped]
