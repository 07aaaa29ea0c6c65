"""The deterministic validation loss and validation during a run.

Which images are held out (``validation.split`` / ``validation.folder``) is
dataset logic: :mod:`tsuika.data.split`.

Loss: every validation image (centre crop, no flip, no augmentation, its
caption as written) is VAE-encoded once; each evaluation noises it at
``validation.timesteps`` fixed timesteps spread over the schedule
(``t_j = floor((j + 1/2) T / K)``), ``validation.draws`` times each, with
noise from a generator seeded by (seed, image path, slot, draw), and takes
the plain MSE against the training target (epsilon or v), averaged over
images, timesteps and draws -- the run's own training objective
(:mod:`tsuika.training.objective`) with the plain UNet module. With
``validation.metric = "caption_gain"`` the same noised latents are also
denoised with an empty caption, and early stopping follows the difference
(loss with the caption minus loss without). It runs in
:func:`tsuika.torch_utils.isolated_eval`: under ``torch.no_grad()`` with every module in eval mode (LoRA, rank and module
dropout off) inside ``torch.random.fork_rng``, then each module's mode is
restored: the training RNG streams and the global RNG are never touched, so a
run with validation ends with the same weights as the same run without.
With several processes every process computes the same full loss.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Protocol

import torch

from tsuika import _native
from tsuika.config import RunConfig
from tsuika.data.buckets import BucketSpec, group_by_bucket
from tsuika.data.scan import DatasetIndex
from tsuika.data.split import item_key
from tsuika.methods.base import Method
from tsuika.models.base import BaseModel
from tsuika.torch_utils import isolated_eval, seeded_noise
from tsuika.training.early_stop import EarlyStopping
from tsuika.training.objective import DiffusionObjective, SampleSize


class Run(Protocol):
    """What validation reads from a run in progress (the loop's ``Trainer``)."""

    cfg: RunConfig
    model: BaseModel
    method: Method
    objective: DiffusionObjective
    out_dir: Path
    fmt: str
    accelerator: Any

    def caption_for(self, caption: str, class_tokens: str, rng: random.Random) -> str: ...

    def metadata(self) -> dict[str, str]: ...


# --------------------------------------------------------------------------- loss


def fixed_timesteps(count: int, num_train_timesteps: int) -> list[int]:
    """``count`` timesteps spread evenly over the schedule (the middle of equal slices)."""
    return [int((j + 0.5) * num_train_timesteps / count) for j in range(count)]


def noise_seed(seed: int, key: str, slot: int, draw: int = 0) -> int:
    # draw 0 keeps the seeds of the one-draw validation, so its curves do not move
    name = f"{slot}" if draw == 0 else f"{slot}.{draw}"
    digest = hashlib.blake2b(f"tsuika:valnoise:{seed}:{key}:{name}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


class Validator:
    """The validation images of a run, encoded once, and their deterministic loss."""

    def __init__(self, trainer: Run, index: DatasetIndex) -> None:
        cfg, m = trainer.cfg, trainer.model
        self.modules = tuple(
            x for x in (m.unet, m.text_encoder, m.text_encoder_2, m.vae) if x is not None
        )
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
        # The plain UNet: every process computes the same loss, outside DDP.
        self.objective = trainer.objective.with_unet(m.unet)
        self.timesteps = fixed_timesteps(cfg.validation.timesteps, self.objective.num_timesteps)
        self.draws = cfg.validation.draws
        self.unconditional = cfg.validation.metric == "caption_gain"
        self.by_timestep: list[float] = []  # of the last loss(), one per fixed timestep
        self.empty_by_timestep: list[float] = []  # the same with empty captions
        self.latents: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def captions(self) -> list[str]:
        """Every caption validation conditions on: each image's (and the empty one for
        the ``caption_gain`` metric)."""
        return [caption for _, _, caption in self.items] + ([""] if self.unconditional else [])

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
            for pos, latent in zip(chunk, self.objective.encode(pixels), strict=True):
                latents[pos] = latent.cpu()
        return [x for x in latents if x is not None]

    def _chunk_loss(self, chunk: list[int], captions: list[str]) -> list[float]:
        """The summed loss of ``chunk``'s images, conditioned on ``captions``, at each
        fixed timestep."""
        obj = self.objective
        latents = torch.stack([self.latents[p] for p in chunk]).to(obj.device)  # type: ignore[index]
        width, height = self.items[chunk[0]][1]
        sizes = [SampleSize.uncropped(height, width)] * len(chunk)
        conditions = obj.condition(captions, sizes)
        sums = [0.0] * len(self.timesteps)
        for slot, t in enumerate(self.timesteps):
            steps = torch.full((len(chunk),), t, dtype=torch.long)
            for draw in range(self.draws):
                seeds = [noise_seed(self.seed, self.items[p][0], slot, draw) for p in chunk]
                noise = seeded_noise(tuple(latents.shape[1:]), seeds).to(obj.device)
                sums[slot] += float(obj.per_sample_loss(latents, noise, steps, conditions).sum())
        return sums

    def _mean_by_timestep(self, per_chunk: list[list[float]]) -> list[float]:
        count = len(self.items) * self.draws
        return [sum(sums) / count for sums in zip(*per_chunk, strict=True)]

    def loss(self) -> float:
        """The mean validation loss over images, fixed timesteps and noise draws; the
        mean at each timestep is kept in ``by_timestep``. For the ``caption_gain``
        metric the same losses with empty captions go to ``empty_by_timestep``."""
        groups = self._groups()
        with isolated_eval(*self.modules, device=self.objective.device):
            if self.latents is None:
                self.latents = self._encode_all()
            per_chunk = [self._chunk_loss(c, [self.items[p][2] for p in c]) for c in groups]
            if self.unconditional:
                empty = [self._chunk_loss(c, [""] * len(c)) for c in groups]
                self.empty_by_timestep = self._mean_by_timestep(empty)
        self.by_timestep = self._mean_by_timestep(per_chunk)
        return sum(self.by_timestep) / len(self.timesteps)

    def caption_gain(self) -> float:
        """Of the last :meth:`loss`: the loss with captions minus the loss without."""
        if not self.empty_by_timestep:
            raise RuntimeError("caption_gain needs validation.metric = 'caption_gain'")
        diffs = [a - b for a, b in zip(self.by_timestep, self.empty_by_timestep, strict=True)]
        return sum(diffs) / len(diffs)


# --------------------------------------------------------------------------- during a run


class ValidationRun:
    """Validation inside a run: when to evaluate, the curve, early stopping, ``-best``."""

    def __init__(self, trainer: Run, index: DatasetIndex) -> None:
        v = trainer.cfg.validation
        self.trainer = trainer
        self.every = v.every
        self.index = index
        self.validator = Validator(trainer, index)
        self.early = EarlyStopping(v.patience, v.min_delta, v.smoothing, v.min_steps)
        self.metric = v.metric
        self.history: list[list[float]] = []
        # [[step, metric value]] when the metric is not the loss (else ``history``)
        self.scores: list[list[float]] = []
        self.by_timestep: list[list[Any]] = []  # [[step, [loss at each fixed timestep]], ...]
        self.best_file: str | None = None
        self.stopped_early = False

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    def evaluate(self, step: int) -> bool:
        """Evaluate at ``step``; write ``-best`` on a new best; True when the run should stop."""
        tr = self.trainer
        loss = value = self.validator.loss()
        self.history.append([step, loss])
        self.by_timestep.append([step, list(self.validator.by_timestep)])
        if self.metric == "caption_gain":
            value = self.validator.caption_gain()
            self.scores.append([step, value])
        if self.early.update(step, value) and tr.accelerator.is_main_process:
            name = f"{tr.cfg.output.name}-best"
            self.best_file = str(tr.method.save(tr.out_dir, name, tr.fmt, tr.metadata()))
        self.stopped_early = self.early.should_stop
        return self.stopped_early

    def state(self) -> dict[str, Any]:
        return {
            "val_loss": self.history,
            "val_loss_by_timestep": self.by_timestep,
            "val_score": self.scores,
            "best_file": self.best_file,
            **self.early.state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = [list(x) for x in state.get("val_loss", [])]
        self.by_timestep = [[s, list(x)] for s, x in state.get("val_loss_by_timestep", [])]
        self.scores = [list(x) for x in state.get("val_score", [])]
        self.best_file = state.get("best_file")
        self.early.load_state(state)

    def summary(self) -> dict[str, Any]:
        return {
            "val_loss": self.history,
            "val_loss_timesteps": self.validator.timesteps,
            "val_loss_by_timestep": self.by_timestep,
            "val_metric": self.metric,
            "val_score": self.scores if self.metric != "loss" else self.history,
            "best_step": self.early.best_step,
            # of the metric early stopping minimises (smoothed, with validation.smoothing)
            "best_val_loss": self.early.best_loss if self.early.best_step is not None else None,
            "best_file": self.best_file,
            "stopped_early": self.stopped_early,
            "validation_images": len(self.validator),
        }
