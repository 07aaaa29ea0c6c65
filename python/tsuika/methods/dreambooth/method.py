"""The DreamBooth method: the whole UNet (optionally the text encoder) trains on the
instance pictures, with class pictures for prior preservation; the file is a full model.

With ``lora = true`` (DreamBooth-LoRA) the same data and loss train LoRA modules
instead: a :class:`tsuika.methods.lora.LoraMethod` does the hooking in, the state
and the LoRA file.

Hooks for the loop (see :class:`tsuika.methods.base.Method`): ``configure`` takes
``training.seed`` as the seed of the class-picture draw; ``transform_caption``
puts in the instance prompt; ``prior_loss_weight`` and ``paired_batch`` give the
class pictures of every batch, ``use_class_pictures`` takes a dataset TOML's
``is_reg`` ones, and
:func:`tsuika.training.losses.prior_preservation_loss` combines the halves.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tsuika.errors import ConfigError
from tsuika.methods.base import Method
from tsuika.models.base import BaseModel

from .class_images import ClassImages, ensure_class_images
from .config import DreamBoothConfig

DEFAULT_FORMAT = "diffusers+single"
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# component -> attribute on BaseModel; the adapter-state key prefix is "<component>."
TRAINED = ("unet", "text_encoder")
# model kind -> the components that train (the UNet, then the text encoders)
KIND_TRAINED: dict[str, tuple[str, ...]] = {"sdxl": ("unet", "text_encoder", "text_encoder_2")}


class DreamBoothMethod(Method):
    """DreamBooth (Ruiz et al. 2023) full fine-tuning, or DreamBooth-LoRA."""

    name = "dreambooth"

    def __init__(self, config: DreamBoothConfig) -> None:
        self.config = config
        self.prior_loss_weight = float(config.prior_loss_weight)
        # The seed of the paired class-picture draw (:meth:`paired_batch`). In a run,
        # :meth:`configure` sets it to ``training.seed``; a method used on its own (no
        # loop) draws from ``class_generation_seed``.
        self.seed = config.class_generation_seed
        self.model: BaseModel | None = None
        self.lora = None  # LoraMethod when config.lora
        self.class_images: ClassImages | None = None
        self.steps = 0
        self.saved: dict[str, Path] = {}
        self._max_norm = 0.0

    # --- hooking in -------------------------------------------------------------------------

    @property
    def components(self) -> tuple[str, ...]:
        """The trained components: the UNet, and with ``train_text_encoder`` every text
        encoder of the model (both on SDXL)."""
        kind = self.model.kind if self.model is not None else "sd1"
        trained = KIND_TRAINED.get(kind, TRAINED)
        return trained if self.config.train_text_encoder else trained[:1]

    def prepare(self, model: BaseModel, *, device: torch.device | str | None = None) -> None:
        """Top up the class pictures (with the base model, before anything trains), then
        make the UNet (+ text encoder) trainable, or wrap LoRA modules; the VAE stays frozen.

        ``device``: where missing class pictures are generated (default: CUDA when present).
        """
        self.model = model
        if self.class_images is None:  # not handed over from the dataset's is_reg subsets
            self.config.check_class_source(from_dataset=False)
            if self.config.prior_preservation:
                self.class_images = ensure_class_images(model, self.config, device=device)
        if self.config.lora:
            from tsuika.methods.lora import LoraMethod

            self.lora = LoraMethod(self.config.lora_config(), max_norm=self._max_norm)
            self.lora.prepare(model)
            return
        for part in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
            if part is not None:
                part.requires_grad_(False)
        for component in self.components:
            getattr(model, component).requires_grad_(True)

    def configure(self, *, seed: int, max_norm: float) -> None:
        """The run's ``training.seed`` becomes the seed of the class-picture draw."""
        self.seed = seed
        super().configure(seed=seed, max_norm=max_norm)

    def set_max_norm(self, max_norm: float) -> None:
        self.max_norm = max_norm

    @property
    def max_norm(self) -> float:
        return self._max_norm

    @max_norm.setter
    def max_norm(self, value: float) -> None:
        """``training.max_norm`` (kohya's scale_weight_norms) applies to LoRA modules only."""
        if not self.config.lora:
            if value > 0:
                raise ValueError(
                    "training.max_norm applies to LoRA modules only: set method.lora = true "
                    "or training.max_norm = 0"
                )
            return
        self._max_norm = float(value)
        if self.lora is not None:
            self.lora.max_norm = self._max_norm

    def _trained_modules(self) -> dict[str, nn.Module]:
        self._require_prepared()
        return {c: getattr(self.model, c) for c in self.components}

    def param_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        if self.config.lora:
            self._require_prepared()
            return self.lora.param_groups(learning_rate)
        te_lr = self.config.text_encoder_lr
        text_lr = learning_rate if te_lr is None else te_lr
        return [
            {
                "params": [p for p in module.parameters() if p.requires_grad],
                "lr": learning_rate if c == "unet" else text_lr,
                "name": c,
            }
            for c, module in self._trained_modules().items()
        ]

    # --- the loop's hooks -------------------------------------------------------------------

    def use_class_pictures(self, pictures: Sequence[Any]) -> None:
        """The dataset TOML's ``is_reg`` pictures are the class pictures
        (none are generated; ``class_data`` must then be unset). With none, the config
        must name ``class_data`` and ``class_prompt`` for prior preservation."""
        self.config.check_class_source(from_dataset=bool(pictures))
        if pictures:
            self.class_images = ClassImages.from_items(pictures, self.config.class_prompt)

    def transform_caption(self, caption: str, class_tokens: str, rng: random.Random) -> str:
        """The instance prompt; with ``use_captions``, the picture's own caption when it has
        one (a caption equal to the folder's class tokens, or empty, counts as none)."""
        own = caption.strip()
        if self.config.use_captions and own and own != class_tokens.strip():
            return caption
        return self.config.instance_prompt

    def class_captions(self) -> list[str]:
        """The class pictures' captions while prior preservation is on."""
        if self.class_images is None or self.prior_loss_weight <= 0:
            return []
        return list(dict.fromkeys(self.class_images.captions))

    def paired_batch(self, batch: dict[str, Any], step: int) -> dict[str, Any] | None:
        """As many class pictures as ``batch`` has instance pictures, at its size, drawn from
        (seed, step, batch["epoch"], batch["batch"]); None when prior preservation is off."""
        if self.class_images is None or self.prior_loss_weight <= 0:
            return None
        n, width, height = self._batch_size(batch)
        key = (step, batch.get("epoch", 0), batch.get("batch", 0))
        indices = self.class_images.pick(n, self.seed, *key)
        return {
            "pixels": self.class_images.load(indices, width, height),
            "captions": [self.class_images.captions[i] for i in indices],
        }

    def _batch_size(self, batch: dict[str, Any]) -> tuple[int, int, int]:
        """(pictures, width, height) of an instance batch of pixels or cached latents."""
        if "pixels" in batch:
            n, _, h, w = batch["pixels"].shape
            return int(n), int(w), int(h)
        if "latents" in batch:
            self._require_prepared()
            n, _, h, w = batch["latents"].shape
            scale = self.model.vae_scale_factor
            return int(n), int(w) * scale, int(h) * scale
        raise KeyError("paired_batch: the batch has neither 'pixels' nor 'latents'")

    def after_step(self) -> None:
        self.steps += 1
        if self.lora is not None:
            self.lora.after_step()

    # --- state ------------------------------------------------------------------------------

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """LoRA: the kohya-keyed tensors. Full: ``unet.<param>`` (and ``text_encoder.<param>``)
        for every trained parameter, as CPU copies."""
        if self.config.lora:
            self._require_prepared()
            return self.lora.adapter_state()
        return {
            f"{c}.{name}": p.detach().to("cpu", copy=True)
            for c, module in self._trained_modules().items()
            for name, p in module.named_parameters()
        }

    @torch.no_grad()
    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.config.lora:
            self._require_prepared()
            self.lora.load_adapter_state(state)
            return
        params = {
            f"{c}.{name}": p
            for c, module in self._trained_modules().items()
            for name, p in module.named_parameters()
        }
        unexpected, missing = sorted(set(state) - set(params)), sorted(set(params) - set(state))
        if unexpected or missing:
            raise ValueError(
                "adapter state: parameters do not match the trained modules; "
                f"unexpected: {unexpected[:5]}, missing: {missing[:5]}"
            )
        for key, param in params.items():
            if state[key].shape != param.shape:
                raise ValueError(
                    f"adapter state: {key} has shape {tuple(state[key].shape)}, "
                    f"the model {tuple(param.shape)}"
                )
            param.copy_(state[key])

    # --- files ------------------------------------------------------------------------------

    def metadata(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        cfg = self.config
        out = {
            "tsuika_method": "dreambooth",
            "ss_training_comment": "trained with tsuika",
            "ss_steps": str(self.steps),
            "dreambooth_instance_prompt": cfg.instance_prompt,
            "dreambooth_prior_loss_weight": str(cfg.prior_loss_weight),
            "dreambooth_train_text_encoder": str(cfg.train_text_encoder),
        }
        if cfg.prior_preservation:
            out["dreambooth_class_prompt"] = str(cfg.class_prompt)
            out["dreambooth_num_class_images"] = str(cfg.num_class_images)
        out.update({str(k): str(v) for k, v in (extra or {}).items()})
        return out

    def check_format(self, fmt: str) -> None:
        """A full-model format (:data:`FULL_FORMATS`), or with ``lora = true`` a LoRA one."""
        if self.config.lora:
            from tsuika.methods.lora.method import check_lora_format

            if fmt != DEFAULT_FORMAT:
                check_lora_format(fmt, dora=self.config.lora_config().dora)
        elif fmt not in FULL_FORMATS:
            raise ConfigError(
                f"output.format = {fmt!r} is not a DreamBooth format; allowed: "
                f"{', '.join(FULL_FORMATS)} (with method.lora = true: kohya, diffusers)"
            )

    def save(self, out_dir: Path, name: str, fmt: str, metadata: dict[str, str]) -> Path:
        """Full model: ``diffusers+single`` (default) writes ``{out_dir}/{name}/`` (diffusers)
        and ``{out_dir}/{name}.safetensors`` (original SD layout) and returns the latter;
        ``diffusers`` / ``single`` write one of them. LoRA: the LoRA method's formats
        (``kohya``, ``diffusers``), where the default means ``kohya``."""
        self._require_prepared()
        out_dir = Path(out_dir)
        self.check_format(fmt)
        if self.config.lora:
            fmt = "kohya" if fmt == DEFAULT_FORMAT else fmt
            path = self.lora.save(out_dir, name, fmt, self.metadata(metadata))
            self.saved = {"lora": path}
            return path
        savers = FULL_FORMATS[fmt]
        self.saved = {kind: SAVERS[kind](self, out_dir, name, metadata) for kind in savers}
        return self.saved[savers[-1]]

    def _require_prepared(self) -> None:
        if self.model is None or (self.config.lora and self.lora is None):
            raise RuntimeError("DreamBoothMethod.prepare(model) has not been called")


def _save_folder(method: DreamBoothMethod, out_dir: Path, name: str, _: dict[str, str]) -> Path:
    from tsuika.models import save_diffusers

    return save_diffusers(method.model, out_dir / name)


def _save_single(
    method: DreamBoothMethod, out_dir: Path, name: str, metadata: dict[str, str]
) -> Path:
    from tsuika.models import save_single_file

    dtype = SAVE_DTYPES[method.config.save_precision]
    path = out_dir / f"{name}.safetensors"
    return save_single_file(method.model, path, dtype=dtype, metadata=method.metadata(metadata))


SAVERS: dict[str, Callable[[DreamBoothMethod, Path, str, dict[str, str]], Path]] = {
    "folder": _save_folder,
    "single": _save_single,
}
# output.format -> what is written, in order; the last one is the returned final file
FULL_FORMATS: dict[str, tuple[str, ...]] = {
    DEFAULT_FORMAT: ("folder", "single"),
    "diffusers": ("folder",),
    "single": ("single",),
}
