"""DreamBooth settings: one dataclass, validated when built, errors naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from tsuika.checks import Rule, check
from tsuika.methods.options import check_options, reject_unknown
from tsuika.methods.options import option_error as _fail

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


TEXT = Rule(str, nonempty=True)
NUMBER = Rule(float, low=0.0, finite=True)
# Every scalar field's rule; class_prompt / class_data are checked with prior preservation.
RULES = {
    "instance_prompt": TEXT,
    "prior_loss_weight": NUMBER,
    "train_text_encoder": Rule(bool),
    "use_captions": Rule(bool),
    "lora": Rule(bool),
    "text_encoder_lr": Rule(float | None, low=0.0, finite=True),
    "num_class_images": Rule(int, low=1),
    "class_generation_steps": Rule(int, low=1),
    "class_generation_cfg": NUMBER,
    "class_generation_seed": Rule(int, low=0),
    "class_generation_batch": Rule(int, low=1),
    "class_resolution": Rule(int | None, low=8),
    "save_precision": Rule(str, choices=SAVE_PRECISIONS),
}


@dataclass
class DreamBoothConfig:
    """What DreamBooth (Ruiz et al. 2023, "DreamBooth: Fine Tuning Text-to-Image
    Diffusion Models for Subject-Driven Generation") trains and how.

    * ``instance_prompt``: the prompt with the rare identifier ("a photo of sks
      dog"). ``use_captions = false`` (diffusers' DreamBooth): every instance
      picture trains on it. ``use_captions = true`` (kohya's habit): a picture's
      own caption file is used when it has one, the instance prompt otherwise.
    * Prior preservation is on when ``prior_loss_weight`` > 0 (0 turns it off).
      Its class pictures are a dataset TOML's ``is_reg = true`` subsets (kohya's
      regularisation pictures, each trained on its own caption or class tokens,
      else ``class_prompt``), or else ``class_prompt`` ("a photo of a dog") and
      ``class_data`` (a folder) are required (:meth:`check_class_source`); when the folder holds fewer than ``num_class_images``
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
        check_options(self, RULES)
        for name in ("class_prompt", "class_data"):
            if getattr(self, name) is not None:
                check(f"method.{name}", getattr(self, name), TEXT)
        self._check_lora_options()

    def check_class_source(self, *, from_dataset: bool) -> None:
        """Prior preservation needs one source of class pictures: ``class_data`` with
        ``class_prompt``, or the dataset TOML's ``is_reg`` subsets (``from_dataset``)."""
        if from_dataset:
            if not self.prior_preservation:
                raise _fail(
                    "prior_loss_weight",
                    "is 0 (prior preservation off), but the dataset has is_reg class "
                    "pictures; set it > 0 to train on them or remove the is_reg subsets",
                )
            if self.class_data is not None:
                raise _fail(
                    "class_data",
                    "and the dataset's is_reg subsets both give class pictures; keep one",
                )
            return
        if self.prior_preservation:
            for name, example in (("class_prompt", "a photo of a dog"), ("class_data", "data/dog")):
                if getattr(self, name) is None:
                    raise _fail(
                        name,
                        f"is required with prior preservation (e.g. {example!r}) unless the "
                        "dataset TOML has is_reg subsets; set method.prior_loss_weight = 0 "
                        "to train without class pictures",
                    )

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
