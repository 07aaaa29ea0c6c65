"""Ctrl-C during training: finish the step, save a checkpoint, say how to resume.

The first SIGINT only sets a flag; the loop calls :func:`stop_if_requested`
between steps, where the state is whole (a step is never cut in half, so
the checkpoint resumes to the same result as an uninterrupted run). A second
Ctrl-C while the step finishes stops at once, without a checkpoint, as
Python normally would.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_requested = threading.Event()


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after saving ``checkpoint`` at ``step``."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved: {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


def _handle(signum: int, frame: Any) -> None:
    if _requested.is_set():
        raise KeyboardInterrupt
    _requested.set()
    print(
        "\ntsuika: Ctrl-C: saving a checkpoint after this step (press again to stop at once)",
        file=sys.stderr,
        flush=True,
    )


@contextmanager
def on_sigint() -> Iterator[None]:
    """Within the block, Ctrl-C asks the loop to stop at the next step boundary.

    Only the main thread can own signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    previous = signal.signal(signal.SIGINT, _handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def stop_if_requested(trainer: Any) -> None:
    """After a Ctrl-C: save a checkpoint at the current step (unless one was
    just saved there) and raise :class:`TrainingInterrupted`."""
    if not _requested.is_set():
        return
    done = trainer.checkpoints and Path(trainer.checkpoints[-1]).name == f"step-{trainer.step}"
    if not done:
        trainer.save_checkpoint()
    path = Path(trainer.checkpoints[-1]) if trainer.checkpoints else Path(trainer.out_dir)
    raise TrainingInterrupted(trainer.step, path)


def resume_command(config: str, overrides: Sequence[str] = ()) -> str:
    """The shell command that continues an interrupted ``tsuika train`` run."""
    args = ["tsuika", "train", config]
    for item in overrides:
        args += ["--set", item]
    return shlex.join([*args, "--resume"])
