"""LoRA settings: one dataclass, validated when built, errors naming the field."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from tsuika.methods.options import option_error as _fail
from tsuika.methods.options import reject_unknown

# UNet target groups: which modules each name in ``targets`` wraps (see inject.py).
UNET_TARGET_GROUPS = ("attention", "proj", "ff")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, f"must be an integer, got {value!r}")
    if value < low:
        raise _fail(name, f"must be >= {low}, got {value}")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, f"must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise _fail(name, f"must be a finite number > 0, got {value}")


def _check_probability(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, f"must be a number, got {value!r}")
    if not 0.0 <= value < 1.0:
        raise _fail(name, f"must be in [0, 1), got {value}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(name, f"must be true or false, got {value!r}")


@dataclass
class LoraConfig:
    """What a LoRA trains and how (kohya's names in brackets).

    * ``rank`` [network_dim], ``alpha`` [network_alpha]: the update is scaled
      by ``alpha / rank``.
    * ``dropout`` on the input of the down projection (peft's
      ``lora_dropout``); ``rank_dropout`` and ``module_dropout`` as kohya's
      ``networks/lora.py``: drop rank channels (rescaling by ``1/(1-p)``) or
      the whole module, in training only.
    * ``train_text_encoder``; ``text_encoder_lr`` (``None``: the UNet's).
    * ``conv_rank`` [conv_dim] (0 = off), ``conv_alpha`` [conv_alpha, kohya's
      default 1]: LoCon on ResNet convolutions and down/up-samplers. As in
      kohya, 1x1 convolutions take ``rank``/``alpha``, k x k ones
      ``conv_rank``/``conv_alpha``.
    * ``dora``: weight-decomposed LoRA (Liu et al. 2024).
    * ``targets``: UNet target groups, any of ``attention`` (to_q, to_k, to_v,
      to_out.0), ``proj`` (proj_in, proj_out), ``ff`` (ff.net.0.proj, ff.net.2).
    """

    rank: int = 16
    alpha: float = 8.0
    dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    train_text_encoder: bool = False
    text_encoder_lr: float | None = None
    conv_rank: int = 0
    conv_alpha: float = 1.0
    dora: bool = False
    targets: tuple[str, ...] = ("attention",)

    def __post_init__(self) -> None:
        _check_int("rank", self.rank, 1)
        _check_positive("alpha", self.alpha)
        for name in ("dropout", "rank_dropout", "module_dropout"):
            _check_probability(name, getattr(self, name))
        _check_bool("train_text_encoder", self.train_text_encoder)
        _check_bool("dora", self.dora)
        if self.text_encoder_lr is not None:
            lr = self.text_encoder_lr
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
                raise _fail("text_encoder_lr", f"must be a number >= 0 or absent, got {lr!r}")
        _check_int("conv_rank", self.conv_rank, 0)
        _check_positive("conv_alpha", self.conv_alpha)
        self._check_targets()

    def _check_targets(self) -> None:
        targets = self.targets
        if isinstance(targets, str) or not isinstance(targets, (list, tuple)):
            raise _fail("targets", f"must be a list of names, got {targets!r}")
        unknown = [t for t in targets if t not in UNET_TARGET_GROUPS]
        if unknown:
            raise _fail(
                "targets",
                f"unknown target(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(UNET_TARGET_GROUPS)}",
            )
        if not targets:
            raise _fail("targets", f"must name at least one of {', '.join(UNET_TARGET_GROUPS)}")
        self.targets = tuple(dict.fromkeys(targets))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> LoraConfig:
        """Build from a ``[method]`` table without ``name``; unknown keys are an error."""
        reject_unknown("lora", table, [f.name for f in fields(cls)])
        values = dict(table)
        if isinstance(values.get("targets"), list):
            values["targets"] = tuple(values["targets"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["targets"] = list(self.targets)
        return out
