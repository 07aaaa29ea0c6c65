"""LoRA settings: one dataclass, validated when built, errors naming the field."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from tsuika.checks import Rule
from tsuika.methods.options import check_options, reject_unknown
from tsuika.methods.options import option_error as _fail

# UNet target groups: which modules each name in ``targets`` wraps (see inject.py).
UNET_TARGET_GROUPS = ("attention", "proj", "ff")


PROBABILITY = Rule(float, low=0.0, high=1.0, open_high=True)
# Every scalar field's rule (targets has its own check below).
RULES = {
    "rank": Rule(int, low=1),
    "alpha": Rule(float, low=0.0, open_low=True, finite=True),
    "dropout": PROBABILITY,
    "rank_dropout": PROBABILITY,
    "module_dropout": PROBABILITY,
    "train_text_encoder": Rule(bool),
    "dora": Rule(bool),
    "text_encoder_lr": Rule(float | None, low=0.0, finite=True),
    "conv_rank": Rule(int, low=0),
    "conv_alpha": Rule(float, low=0.0, open_low=True, finite=True),
}


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
        check_options(self, RULES)
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
