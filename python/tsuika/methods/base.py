"""What a training method is: the contract between ``tsuika.training`` (the one
loop) and each method in ``tsuika.methods``.

A method says which parameters train, how it hooks into the model, and how
its file is written -- nothing else. The loop owns data, noise, loss,
optimizer, schedules, validation, checkpoints and sampling.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Protocol

import torch

from tsuika.models.base import BaseModel


class Method(Protocol):
    """One additional-training method (lora, textual_inversion, ...)."""

    name: str

    def prepare(self, model: BaseModel) -> None:
        """Freeze the base model and hook the method's trainable parts into it."""

    def param_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (each a dict with ``params`` and ``lr``)."""

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Everything the method trains, for checkpoints (cloned tensors)."""

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`adapter_state` returned."""

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. to restore frozen rows, max-norm)."""

    def save(self, out_dir: Path, name: str, fmt: str, metadata: dict[str, str]) -> Path:
        """Write the user-facing file(s); return the final file's path."""


class CaptionHook(Protocol):
    """Optional: a method that rewrites training captions (Textual Inversion's
    templates and placeholder substitution, DreamBooth's instance prompt).
    The loop calls it, when the method has it, on every caption it encodes."""

    def transform_caption(self, caption: str, class_tokens: str, rng: random.Random) -> str:
        """The caption to train on, given the dataset's caption and class tokens."""


class PriorHook(Protocol):
    """Optional: prior preservation (DreamBooth). For every training batch the
    loop asks for a paired batch of class pictures at the same size, appends
    it to the batch, and combines the per-sample losses as

        loss = mean(instance half) + prior_loss_weight * mean(class half),

    with any per-sample weighting (min-SNR) computed for each sample from its
    own timestep before the halves are averaged."""

    prior_loss_weight: float

    def paired_batch(self, batch: dict[str, Any], step: int) -> dict[str, Any] | None:
        """Class pictures for ``batch``: a dict with ``pixels`` (same shape as
        ``batch["pixels"]``) and ``captions`` (the class prompt per picture),
        or None for no prior term at this step."""
