"""What a training method is: the contract between ``tsuika.training`` (the one
loop) and each method in ``tsuika.methods``.

A method says which parameters train, how it hooks into the model, and how
its file is written -- nothing else. The loop owns data, noise, loss,
optimizer, schedules, validation, checkpoints and sampling.

Every hook the loop calls is declared on :class:`Method`, with a default, and
every method derives from it: a method's whole surface is its own class plus
this file, and the loop never asks a method what it can do (no ``hasattr``).
The loop calls, in this order:

1. :meth:`Method.configure` once, with the run's ``training.seed`` and
   ``training.max_norm``, before anything else;
2. :meth:`Method.use_class_pictures` with the dataset's ``is_reg`` pictures
   (maybe none), then :meth:`Method.prepare` with the base model;
3. :meth:`Method.param_groups` to build the optimizer;
4. per micro-batch :meth:`Method.transform_caption` on every caption and,
   when :attr:`Method.prior_loss_weight` > 0, :meth:`Method.paired_batch`;
5. :meth:`Method.after_step` after every optimizer step;
6. :meth:`Method.adapter_state` / :meth:`Method.load_adapter_state` for
   checkpoints, and :meth:`Method.save` for the final (and ``-best``) file.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tsuika.models.base import BaseModel


class Method:
    """One additional-training method (lora, textual_inversion, ...).

    Subclasses set :attr:`name` and implement the abstract hooks (``prepare``,
    ``param_groups``, ``adapter_state``, ``load_adapter_state``, ``save``); the
    others have defaults that mean "this method does not use it".
    """

    name: str = ""
    prior_loss_weight: float = 0.0
    """Prior preservation (DreamBooth): the weight of the class half of every
    batch. 0 (the default) means no paired batch is asked for. The loop combines
    the per-sample losses as

        loss = mean(instance half) + prior_loss_weight * mean(class half),

    with any per-sample weighting (min-SNR) computed for each sample from its
    own timestep before the halves are averaged."""
    caption_draws: bool = False
    """Whether :meth:`transform_caption` draws from its ``rng`` (Textual Inversion's
    templates): the captions it gives are then not known before the run, and the
    loop keeps the text encoders on the device."""

    # --- run settings --------------------------------------------------------------------

    def configure(self, *, seed: int, max_norm: float) -> None:
        """The run's settings a method may use, handed over once before :meth:`prepare`.

        ``seed`` is ``training.seed`` (the default ignores it; DreamBooth draws its
        paired class pictures from it). ``max_norm`` is ``training.max_norm``, passed
        on to :meth:`set_max_norm`.
        """
        self.set_max_norm(max_norm)

    def set_max_norm(self, max_norm: float) -> None:
        """``training.max_norm`` (kohya's ``scale_weight_norms``), applied in
        :meth:`after_step` by methods that support it. The default refuses any
        value above 0, so a setting that would do nothing is an error."""
        if max_norm > 0:
            raise ValueError(
                f"training.max_norm is not supported by method {self.name!r}; set it to 0"
            )

    # --- hooking in ----------------------------------------------------------------------

    def prepare(self, model: BaseModel) -> None:
        """Freeze the base model and hook the method's trainable parts into it."""
        raise NotImplementedError

    def param_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (each a dict with ``params`` and ``lr``)."""
        raise NotImplementedError

    # --- per step ------------------------------------------------------------------------

    def transform_caption(self, caption: str, class_tokens: str, rng: random.Random) -> str:
        """The caption to train on, given the dataset's caption and class tokens
        (Textual Inversion's templates and placeholder, DreamBooth's instance
        prompt). The loop calls it on every caption it encodes, validation with a
        fixed ``rng`` per image. Default: the caption unchanged."""
        return caption

    def paired_batch(self, batch: dict[str, Any], step: int) -> dict[str, Any] | None:
        """Class pictures for ``batch`` (prior preservation): a dict with ``pixels``
        (same shape as ``batch["pixels"]``) and ``captions`` (the class prompt per
        picture), or None for no prior term at this step. Asked for only while
        :attr:`prior_loss_weight` > 0. Default: None."""
        return None

    def class_captions(self) -> list[str]:
        """Every caption :meth:`paired_batch` can give (prior preservation's class
        prompts), known once :meth:`prepare` ran: the loop encodes them into its text
        cache before the first step. Default: none."""
        return []

    def use_class_pictures(self, pictures: Sequence[Any]) -> None:
        """A dataset TOML's ``is_reg`` pictures (kohya's regularisation pictures, as
        ``ImageItem``: path and caption; maybe none), handed over once before
        :meth:`prepare`. DreamBooth trains its prior term on them; the default refuses
        any, so they are never trained as pictures of the concept. Raise ValueError
        when they conflict with the method's settings."""
        if pictures:
            raise ValueError(
                f"{len(pictures)} is_reg (class) picture(s), e.g. {pictures[0].path}: "
                f"method {self.name!r} has no use for regularisation pictures (only "
                "dreambooth trains on them, for prior preservation); remove the is_reg subsets"
            )

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. to restore frozen rows, max-norm)."""

    # --- state and files -----------------------------------------------------------------

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Everything the method trains, for checkpoints (cloned tensors)."""
        raise NotImplementedError

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`adapter_state` returned."""
        raise NotImplementedError

    def check_format(self, fmt: str) -> None:
        """Refuse (``ValueError`` naming ``output.format``) a format :meth:`save` cannot
        write with these options; the loop asks before the first step, so a run is not
        lost at its end. Default: every format is left to :meth:`save`."""

    def save(self, out_dir: Path, name: str, fmt: str, metadata: dict[str, str]) -> Path:
        """Write the user-facing file(s); return the final file's path."""
        raise NotImplementedError


def hand_class_pictures(method: Method, pictures: Sequence[Any], source: object) -> None:
    """:meth:`Method.use_class_pictures` with a refusal as a :class:`DatasetError`
    naming the dataset ``source``."""
    from tsuika.data.index import DatasetError

    try:
        method.use_class_pictures(pictures)
    except DatasetError:
        raise
    except ValueError as exc:
        raise DatasetError(f"{source}: {exc}") from exc
