"""What a run reports: TensorBoard scalars, peak memory, and ``summary.json``."""

from __future__ import annotations

import resource
import sys
import warnings
from pathlib import Path

import torch

__all__ = ["Scalars", "peak_memory"]


class Scalars:
    """TensorBoard scalars under ``{output.dir}/logs``; a no-op without tensorboard."""

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional dependency
            warnings.warn("tensorboard is not installed; no TensorBoard logs", stacklevel=2)
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def add(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def peak_memory() -> dict[str, int]:
    """Peak resident memory of this process (bytes) and, on CUDA, peak allocated."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}
    if torch.cuda.is_available():
        out["cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    return out
