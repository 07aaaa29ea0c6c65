"""The validation set and the deterministic validation loss.

Split (``validation.split``): each image gets the key
``blake2b("{seed}:{relative path}")``; the images with the smallest keys are
held out (``round(split * N)``, at least one, and at least one image is left
to train on). The choice depends only on the seed and the paths, never on
the file system's listing order. ``validation.folder`` is the alternative: a
dataset folder of its own, which must not share images with ``data.path``.
Cross-validation folds (:func:`fold_indices`) use the same keys: sorted by
key, image ``r`` goes to fold ``r % K``, so the folds are disjoint and cover
the dataset.

Loss: every validation image (centre crop, no flip, no augmentation, its
caption as written) is VAE-encoded once; each evaluation noises it at
``validation.timesteps`` fixed timesteps spread over the schedule
(``t_j = floor((j + 1/2) T / K)``) with noise from a generator seeded by
(seed, image path, slot), and takes the plain MSE against the training
target (epsilon or v), averaged over images and timesteps. It runs under
``torch.no_grad()`` with every module in eval mode (LoRA, rank and module
dropout off) inside ``torch.random.fork_rng``, then restores each module's
mode: the training RNG streams and the global RNG are never touched, so a
run with validation ends with the same weights as the same run without.
With several processes every process computes the same full loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tsuika import _native
from tsuika.config import RunConfig
from tsuika.data.buckets import BucketSpec, group_by_bucket
from tsuika.data.scan import DatasetError, DatasetIndex, require_images, scan_dataset
from tsuika.training.early_stop import EarlyStopping
from tsuika.training.noise import add_noise, training_target

if TYPE_CHECKING:
    from tsuika.training.loop import Trainer


# --------------------------------------------------------------------------- split


def item_key(index: DatasetIndex, i: int) -> str:
    """Image ``i``'s path relative to the dataset root (absolute when outside it)."""
    path = Path(index[i].path)
    try:
        return path.relative_to(index.root).as_posix()
    except ValueError:
        return path.as_posix()


def _hash(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"tsuika:split:{seed}:{key}".encode(), digest_size=16).digest()


def hashed_order(index: DatasetIndex, seed: int) -> list[int]:
    """Item indices sorted by the seeded hash of their relative path."""
    return sorted(range(len(index)), key=lambda i: (_hash(seed, item_key(index, i)), i))


def split_indices(index: DatasetIndex, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) item indices for ``validation.split = fraction``, each sorted."""
    n = len(index)
    n_val = max(1, round(fraction * n))
    if n - n_val < 1:
        raise DatasetError(
            f"{index.root}: validation.split = {fraction} of {n} image(s) leaves none to train on"
        )
    order = hashed_order(index, seed)
    return sorted(order[n_val:]), sorted(order[:n_val])


def fold_indices(index: DatasetIndex, folds: int, seed: int) -> list[list[int]]:
    """``folds`` disjoint lists of item indices that together cover the dataset."""
    if not 2 <= folds <= len(index):
        raise DatasetError(
            f"{index.root}: --folds {folds} needs 2 <= folds <= the number of images ({len(index)})"
        )
    out: list[list[int]] = [[] for _ in range(folds)]
    for rank, i in enumerate(hashed_order(index, seed)):
        out[rank % folds].append(i)
    return [sorted(f) for f in out]


def subset(index: DatasetIndex, indices: Sequence[int]) -> DatasetIndex:
    """The index restricted to ``indices`` (same root, subsets and options)."""
    return dataclasses.replace(index, items=tuple(index.items[i] for i in indices))


@dataclass(frozen=True)
class DataSplit:
    """The images a run trains on and the ones it validates on (None: no validation)."""

    train: DatasetIndex
    val: DatasetIndex | None = None


def make_split(cfg: RunConfig) -> DataSplit:
    """Scan ``data.path`` and hold out ``validation.split`` or read ``validation.folder``."""
    d, v = cfg.data, cfg.validation
    if d.path is None:
        raise ValueError("data.path is required: the dataset folder or dataset TOML")
    index = require_images(scan_dataset(d.path, caption_extension=d.caption_extension))
    if v.folder is not None:
        val = require_images(scan_dataset(v.folder, caption_extension=d.caption_extension))
        shared = {Path(p).resolve() for p in index.paths} & {Path(p).resolve() for p in val.paths}
        if shared:
            names = ", ".join(sorted(str(p) for p in shared)[:3])
            raise DatasetError(
                f"validation.folder {v.folder} shares {len(shared)} image(s) with data.path "
                f"{d.path} ({names}); validation images must not be trained on"
            )
        return DataSplit(index, val)
    if v.split > 0:
        train, held = split_indices(index, v.split, cfg.training.seed)
        return DataSplit(subset(index, train), subset(index, held))
    return DataSplit(index)


# --------------------------------------------------------------------------- loss


def fixed_timesteps(count: int, num_train_timesteps: int) -> list[int]:
    """``count`` timesteps spread evenly over the schedule (the middle of equal slices)."""
    return [int((j + 0.5) * num_train_timesteps / count) for j in range(count)]


def noise_seed(seed: int, key: str, slot: int) -> int:
    digest = hashlib.blake2b(f"tsuika:valnoise:{seed}:{key}:{slot}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Every sub-module in eval mode; each one's own mode restored afterwards."""
    modes = [(m, m.training) for root in modules for m in root.modules()]
    try:
        for root in modules:
            root.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class Validator:
    """The validation images of a run, encoded once, and their deterministic loss."""

    def __init__(self, trainer: Trainer, index: DatasetIndex) -> None:
        cfg = trainer.cfg
        self.trainer = trainer
        self.seed = cfg.training.seed
        self.batch_size = cfg.training.batch_size
        buckets = group_by_bucket(index, BucketSpec.from_config(cfg.data)).buckets
        keys = [item_key(index, i) for i in range(len(index))]
        # Captions go through the method's caption hook (Textual Inversion's
        # placeholder, DreamBooth's instance prompt) with a fixed draw per image.
        self.items: list[tuple[str, tuple[int, int], str]] = [
            (
                keys[i],
                buckets[i],
                trainer.caption_for(
                    index[i].caption,
                    index[i].class_tokens,
                    random.Random(noise_seed(self.seed, keys[i], -1)),
                ),
            )
            for i in range(len(index))
        ]
        self.paths = [index[i].path for i in range(len(index))]
        self.timesteps = fixed_timesteps(cfg.validation.timesteps, len(trainer.alphas_cumprod))
        self.latents: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _groups(self) -> list[list[int]]:
        """Item positions grouped by bucket, in chunks of ``batch_size``."""
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for pos, (_, bucket, _) in enumerate(self.items):
            by_bucket.setdefault(bucket, []).append(pos)
        return [
            chunk[s : s + self.batch_size]
            for _, chunk in sorted(by_bucket.items())
            for s in range(0, len(chunk), self.batch_size)
        ]

    def _encode_all(self) -> list[torch.Tensor]:
        latents: list[torch.Tensor | None] = [None] * len(self.items)
        for chunk in self._groups():
            width, height = self.items[chunk[0]][1]
            paths = [str(self.paths[p]) for p in chunk]
            pixels = torch.from_numpy(
                _native.load_batch(paths, width, height, flip=False, crop="center")
            )
            for pos, latent in zip(chunk, self.trainer._encode_pixels(pixels), strict=True):
                latents[pos] = latent.cpu()
        return [x for x in latents if x is not None]

    def _chunk_loss(self, chunk: list[int]) -> float:
        tr = self.trainer
        latents = torch.stack([self.latents[p] for p in chunk]).to(tr.device)  # type: ignore[index]
        hidden = tr._text_states([self.items[p][2] for p in chunk])
        total = 0.0
        for slot, t in enumerate(self.timesteps):
            noise = torch.stack(
                [
                    torch.randn(
                        latents.shape[1:],
                        generator=torch.Generator().manual_seed(
                            noise_seed(self.seed, self.items[p][0], slot)
                        ),
                    )
                    for p in chunk
                ]
            ).to(tr.device)
            steps = torch.full((len(chunk),), t, dtype=torch.long)
            noisy = add_noise(latents, noise, steps, tr.alphas_cumprod)
            with tr.accelerator.autocast():
                pred = tr.model.unet(
                    noisy.to(tr.weight_dtype),
                    steps.to(tr.device),
                    encoder_hidden_states=hidden.to(tr.weight_dtype),
                ).sample
            target = training_target(
                tr.model.prediction_type, latents, noise, steps, tr.alphas_cumprod
            )
            total += float((pred.float() - target.float()).pow(2).flatten(1).mean(1).sum())
        return total

    def loss(self) -> float:
        """The mean validation loss over images and fixed timesteps."""
        tr = self.trainer
        cuda = [tr.device.index or 0] if tr.device.type == "cuda" else []
        modules = (tr.model.unet, tr.model.text_encoder, tr.model.vae)
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), eval_mode(*modules):
            if self.latents is None:
                self.latents = self._encode_all()
            total = sum(self._chunk_loss(chunk) for chunk in self._groups())
        return total / (len(self.items) * len(self.timesteps))


# --------------------------------------------------------------------------- during a run


class ValidationRun:
    """Validation inside a run: when to evaluate, the curve, early stopping, ``-best``."""

    def __init__(self, trainer: Trainer, index: DatasetIndex) -> None:
        v = trainer.cfg.validation
        self.trainer = trainer
        self.every = v.every
        self.index = index
        self.validator = Validator(trainer, index)
        self.early = EarlyStopping(v.patience, v.min_delta)
        self.history: list[list[float]] = []
        self.best_file: str | None = None
        self.stopped_early = False

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    def evaluate(self, step: int) -> bool:
        """Evaluate at ``step``; write ``-best`` on a new best; True when the run should stop."""
        tr = self.trainer
        loss = self.validator.loss()
        self.history.append([step, loss])
        if self.early.update(step, loss) and tr.accelerator.is_main_process:
            name = f"{tr.cfg.output.name}-best"
            self.best_file = str(tr.method.save(tr.out_dir, name, tr.fmt, tr.metadata()))
        self.stopped_early = self.early.should_stop
        return self.stopped_early

    def state(self) -> dict[str, Any]:
        return {"val_loss": self.history, "best_file": self.best_file, **self.early.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = [list(x) for x in state.get("val_loss", [])]
        self.best_file = state.get("best_file")
        self.early.load_state(state)

    def summary(self) -> dict[str, Any]:
        return {
            "val_loss": self.history,
            "best_step": self.early.best_step,
            "best_val_loss": self.early.best_loss if self.early.best_step is not None else None,
            "best_file": self.best_file,
            "stopped_early": self.stopped_early,
            "validation_images": len(self.validator),
        }
