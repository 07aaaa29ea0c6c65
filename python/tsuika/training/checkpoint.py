"""Checkpoints with the full training state, written atomically, for ``--resume``.

``{output.dir}/checkpoints/step-{N}/`` holds:

* ``adapter.safetensors`` -- :meth:`Method.adapter_state` (what the method trains)
* ``state.pt`` -- optimizer, LR scheduler, RNG states (python, numpy, torch,
  cuda), data position, step, loss history, validation curve and early-stopping
  state; loadable with ``weights_only=True``
* ``config.json`` -- the run configuration that produced it

The folder is written under a temporary name and renamed into place, so a
crash never leaves a half-written ``step-N``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be used; the message names the path."""


@dataclass
class TrainingState:
    """Everything besides the adapter that a resumed run needs."""

    step: int
    epoch: int = 0
    batch_index: int = 0  # next batch of ``epoch`` to train on
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    train_loss: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0  # training time spent before this checkpoint
    validation: dict[str, Any] = field(default_factory=dict)  # curve, best step, patience


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch and (when present) CUDA RNG states as plain values/tensors."""
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step}"


def save_checkpoint(
    out_dir: Path,
    adapter_state: dict[str, torch.Tensor],
    state: TrainingState,
    config: dict[str, Any],
) -> Path:
    """Write ``checkpoints/step-{state.step}`` atomically; return its path."""
    final = checkpoint_dir(out_dir, state.step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in adapter_state.items()}
    save_file(tensors, str(tmp / "adapter.safetensors"))
    torch.save(state.__dict__, tmp / "state.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint under ``out_dir``, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / "state.pt").is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path:
    """The newest checkpoint in ``out_dir`` (for a bare ``--resume``)."""
    found = list_checkpoints(out_dir)
    if not found:
        raise CheckpointError(
            f"--resume: no checkpoint found under {Path(out_dir) / 'checkpoints'}"
        )
    return found[-1][1]


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], TrainingState]:
    """Read a checkpoint folder: (adapter state, training state)."""
    path = Path(path)
    if not (path / "state.pt").is_file() or not (path / "adapter.safetensors").is_file():
        raise CheckpointError(
            f"{path}: not a tsuika checkpoint (expected adapter.safetensors and state.pt)"
        )
    adapter = load_file(str(path / "adapter.safetensors"))
    raw = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    return adapter, TrainingState(**raw)


def checkpoint_config(path: Path) -> dict[str, Any]:
    """The run configuration stored with a checkpoint (``{}`` if absent)."""
    file = Path(path) / "config.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
