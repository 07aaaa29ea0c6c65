"""Checkpoints with the full training state, written atomically, for ``--resume``.

``{output.dir}/checkpoints/step-{N}/`` holds:

* ``adapter.safetensors`` -- :meth:`Method.adapter_state` (what the method trains)
* ``state.pt`` -- optimizer, LR scheduler, RNG states (python, numpy, torch,
  cuda), data position, step, loss history, validation curve and early-stopping
  state; loadable with ``weights_only=True``
* ``config.json`` -- the run configuration that produced it
* ``manifest.json`` -- size and SHA-256 of the three files above, written last

The folder is written under a temporary name, flushed to disk and renamed
into place, so a crash never leaves a half-written ``step-N``. The manifest
catches what the rename cannot: a folder damaged later (a disk that lost
unflushed data on power loss, a copy cut short). :func:`resume_target`
checks it and falls back to the previous checkpoint, saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from tsuika.atomic import fsync_path, remove_temporaries, write_failure
from tsuika.errors import TsuikaError
from tsuika.formats.safetensors_check import load_file_checked

_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^\.step-\d+\.(tmp|old)-\d+$")
MANIFEST = "manifest.json"
PAYLOAD = ("adapter.safetensors", "state.pt", "config.json")
# Test hook: seconds to pause after each file of a checkpoint, so that a test
# can kill the process while a checkpoint is being written.
SLOW_WRITE_ENV = "TSUIKA_TEST_SLOW_CHECKPOINT"


class CheckpointError(TsuikaError, RuntimeError):
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
    """Write ``checkpoints/step-{state.step}`` atomically; return its path.

    Leftovers of writes cut short by an earlier crash are removed first.
    """
    final = checkpoint_dir(out_dir, state.step)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final.parent)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        _write_payload(tmp, adapter_state, state, config)
        fsync_path(tmp)
        _put_in_place(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(final, exc)
        if failure is not None:
            raise failure from exc
        raise
    return final


def _write_payload(
    folder: Path,
    adapter_state: dict[str, torch.Tensor],
    state: TrainingState,
    config: dict[str, Any],
) -> None:
    """The three files, each flushed, then the manifest that vouches for them."""
    pause = float(os.environ.get(SLOW_WRITE_ENV) or 0)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in adapter_state.items()}
    writers: dict[str, Callable[[Path], None]] = {
        "adapter.safetensors": lambda f: save_file(tensors, str(f)),
        "state.pt": lambda f: torch.save(state.__dict__, f),
        "config.json": lambda f: f.write_text(
            json.dumps(config, indent=2, default=str), encoding="utf-8"
        ),
    }
    for name in PAYLOAD:
        writers[name](folder / name)
        fsync_path(folder / name)
        if pause:
            time.sleep(pause)
    manifest = {"step": state.step, "files": {n: _describe(folder / n) for n in PAYLOAD}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    fsync_path(folder / MANIFEST)


def _put_in_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``, replacing an existing ``final`` (same step saved twice)."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old)


def _describe(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def remove_leftovers(root: Path) -> list[Path]:
    """Delete ``.step-N.tmp-PID`` / ``.step-N.old-PID`` folders left by a killed writer.

    An ``.old`` folder whose ``step-N`` is missing (killed between the two
    renames of a replacement) is renamed back instead of deleted.
    """
    removed = []
    for child in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        if not (_LEFTOVER.match(child.name) and child.is_dir()):
            continue
        final = child.parent / child.name[1:].split(".")[0]
        if ".old-" in child.name and not final.exists():
            os.replace(child, final)
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with the checkpoint folder ``path``, or None when it is whole."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (it is written last, so the checkpoint was cut short)"
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is unreadable ({exc})"
    for name in PAYLOAD:
        file = path / name
        if name not in listed or not file.is_file():
            return f"{name} is missing"
        want = listed[name]
        if file.stat().st_size != want.get("bytes"):
            return f"{name} has {file.stat().st_size} bytes, the manifest says {want.get('bytes')}"
        if _describe(file)["sha256"] != want.get("sha256"):
            return f"{name} does not match its SHA-256 in the manifest (damaged)"
    return None


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
    """The newest checkpoint folder in ``out_dir``, whole or not."""
    found = list_checkpoints(out_dir)
    if not found:
        raise CheckpointError(
            f"--resume: no checkpoint found under {Path(out_dir) / 'checkpoints'}"
        )
    return found[-1][1]


def resume_target(
    out_dir: Path, target: str | Path | bool, say: Callable[[str], None] = print
) -> Path:
    """The checkpoint to resume from, checked against its manifest.

    ``True``, ``""`` or ``"latest"``: the newest whole checkpoint under
    ``out_dir``; a damaged or cut-short one is skipped with a message through
    ``say`` and the one before it is used. An explicit folder must be whole.
    """
    if target not in (True, "", "latest"):
        path = Path(str(target))
        problem = verify_checkpoint(path) if path.is_dir() else None
        if problem:
            raise CheckpointError(f"{path}: checkpoint cannot be used: {problem}")
        return path
    remove_leftovers(Path(out_dir) / "checkpoints")
    remove_temporaries(out_dir)
    latest_checkpoint(out_dir)  # raises when there is none at all
    for _, path in reversed(list_checkpoints(out_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        say(f"skipping checkpoint {path}: {problem}; trying the previous one")
    raise CheckpointError(
        f"--resume: no whole checkpoint under {Path(out_dir) / 'checkpoints'} (see the messages above)"
    )


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], TrainingState]:
    """Read a checkpoint folder: (adapter state, training state)."""
    path = Path(path)
    if not (path / "state.pt").is_file() or not (path / "adapter.safetensors").is_file():
        raise CheckpointError(
            f"{path}: not a tsuika checkpoint (expected adapter.safetensors and state.pt)"
        )
    adapter = load_file_checked(path / "adapter.safetensors")
    try:
        raw = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path / 'state.pt'}: refused: the pickle needs Python objects beyond tensors "
            f"and plain values, and loading it could run code ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path / 'state.pt'}: not a readable torch file ({exc})") from None
    return adapter, TrainingState(**raw)


def checkpoint_config(path: Path) -> dict[str, Any]:
    """The run configuration stored with a checkpoint (``{}`` if absent)."""
    file = Path(path) / "config.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
