"""DreamBooth settings: one dataclass, validated when built, errors naming the field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from tsuika.methods.options import option_error as _fail
from tsuika.methods.options import reject_unknown

# Keys passed through to LoraConfig when ``lora = true`` (DreamBooth-LoRA).
# ``train_text_encoder`` and ``text_encoder_lr`` are DreamBooth keys that LoRA shares.
LORA_KEYS = (
    "rank",
    "alpha",
    "dropout",
    "rank_dropout",
    "module_dropout",
    "conv_rank",
    "conv_alpha",
    "dora",
    "targets",
)
SAVE_PRECISIONS = ("fp32", "fp16", "bf16")


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise _fail(name, f"must be a non-empty string, got {value!r}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, f"must be an integer, got {value!r}")
    if value < low:
        raise _fail(name, f"must be >= {low}, got {value}")


def _check_number(name: str, value: Any, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(name, f"must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise _fail(name, f"must be {'> 0' if positive else '>= 0'}, got {value}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(name, f"must be true or false, got {value!r}")


@dataclass
class DreamBoothConfig:
    """What DreamBooth (Ruiz et al. 2023, "DreamBooth: Fine Tuning Text-to-Image
    Diffusion Models for Subject-Driven Generation") trains and how.

    * ``instance_prompt``: the prompt with the rare identifier ("a photo of sks
      dog"). ``use_captions = false`` (diffusers' DreamBooth): every instance
      picture trains on it. ``use_captions = true`` (kohya's habit): a picture's
      own caption file is used when it has one, the instance prompt otherwise.
    * Prior preservation is on when ``prior_loss_weight`` > 0 (0 turns it off).
      Then ``class_prompt`` ("a photo of a dog") and ``class_data`` (a folder)
      are required; when the folder holds fewer than ``num_class_images``
      pictures, the missing ones are generated with the base model
      (``class_generation_steps`` DDIM steps, guidance ``class_generation_cfg``,
      picture ``i`` from seed ``class_generation_seed + i``, ``class_resolution``
      pixels square, default the model's native size) and kept for later runs.
    * ``train_text_encoder`` (and ``text_encoder_lr``, default the UNet's).
    * ``lora = true``: DreamBooth-LoRA, the same data and loss on LoRA modules;
      the LoRA keys (``rank``, ``alpha``, ... see :data:`LORA_KEYS`) are only
      allowed then.
    * ``save_precision``: dtype of the single ``.safetensors`` file (full model).
    """

    instance_prompt: str
    class_prompt: str | None = None
    class_data: str | None = None
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    train_text_encoder: bool = False
    text_encoder_lr: float | None = None
    use_captions: bool = False
    lora: bool = False
    class_generation_steps: int = 30
    class_generation_cfg: float = 7.5
    class_generation_seed: int = 0
    class_generation_batch: int = 4
    class_resolution: int | None = None
    save_precision: str = "fp32"
    lora_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_text("instance_prompt", self.instance_prompt)
        _check_number("prior_loss_weight", self.prior_loss_weight)
        for name in ("train_text_encoder", "use_captions", "lora"):
            _check_bool(name, getattr(self, name))
        if self.text_encoder_lr is not None:
            _check_number("text_encoder_lr", self.text_encoder_lr)
        _check_int("num_class_images", self.num_class_images, 1)
        _check_int("class_generation_steps", self.class_generation_steps, 1)
        _check_number("class_generation_cfg", self.class_generation_cfg)
        _check_int("class_generation_seed", self.class_generation_seed, 0)
        _check_int("class_generation_batch", self.class_generation_batch, 1)
        if self.class_resolution is not None:
            _check_int("class_resolution", self.class_resolution, 8)
        if self.save_precision not in SAVE_PRECISIONS:
            raise _fail(
                "save_precision",
                f"must be one of {', '.join(SAVE_PRECISIONS)}, got {self.save_precision!r}",
            )
        if self.prior_preservation:
            for name, example in (("class_prompt", "a photo of a dog"), ("class_data", "data/dog")):
                if getattr(self, name) is None:
                    raise _fail(
                        name,
                        f"is required with prior preservation (e.g. {example!r}); "
                        "set method.prior_loss_weight = 0 to train without class pictures",
                    )
                _check_text(name, getattr(self, name))
        self._check_lora_options()

    def _check_lora_options(self) -> None:
        if self.lora_options and not self.lora:
            keys = ", ".join(sorted(self.lora_options))
            raise _fail(sorted(self.lora_options)[0], f"LoRA option(s) {keys} need lora = true")
        if self.lora:
            self.lora_config()  # LoraConfig raises ValueError("method.<key>: ...")

    @property
    def prior_preservation(self) -> bool:
        return self.prior_loss_weight > 0

    def lora_config(self):  # -> LoraConfig (imported lazily: the registry must stay cheap)
        from tsuika.methods.lora import LoraConfig

        values = dict(self.lora_options)
        if isinstance(values.get("targets"), list):
            values["targets"] = tuple(values["targets"])
        return LoraConfig(
            train_text_encoder=self.train_text_encoder,
            text_encoder_lr=self.text_encoder_lr,
            **values,
        )

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> DreamBoothConfig:
        """Build from a ``[method]`` table without ``name``; unknown keys are an error."""
        own = [f.name for f in fields(cls) if f.name != "lora_options"]
        reject_unknown("dreambooth", table, own + list(LORA_KEYS))
        if "instance_prompt" not in table:
            raise _fail("instance_prompt", "is required for dreambooth (e.g. 'a photo of sks dog')")
        values = {k: v for k, v in table.items() if k in own}
        lora_options = {k: v for k, v in table.items() if k in LORA_KEYS}
        return cls(**values, lora_options=lora_options)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lora_options"}
        out.update(self.lora_options)
        return out
