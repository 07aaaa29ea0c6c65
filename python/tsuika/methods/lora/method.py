"""The LoRA training method: which parameters train, how they hook in, how the file is written."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tsuika.errors import ConfigError
from tsuika.formats.diffusers_lora import save_diffusers_lora
from tsuika.formats.kohya_lora import (
    LoraWeights,
    load_kohya_lora,
    parse_kohya_state_dict,
    save_kohya_lora,
    training_metadata,
)
from tsuika.methods.base import Method
from tsuika.models.base import BaseModel

from . import inject
from .config import LoraConfig
from .layers import LoraLayer
from .names import kohya_name

# the text encoders a model may have (attributes on BaseModel; SDXL has both)
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


class LoraMethod(Method):
    """LoRA / LoCon / DoRA on the UNet (and optionally the text encoder(s): both on SDXL).

    ``max_norm`` > 0 applies kohya's ``scale_weight_norms`` after every step.
    """

    name = "lora"

    def __init__(self, config: LoraConfig | None = None, *, max_norm: float = 0.0) -> None:
        self.config = config if config is not None else LoraConfig()
        self.max_norm = float(max_norm)
        self.model: BaseModel | None = None
        self.layers: dict[str, dict[str, LoraLayer]] = {}  # component -> module path -> layer
        self.steps = 0
        self.last_norms: tuple[int, float, float] | None = None

    def set_max_norm(self, max_norm: float) -> None:
        """``training.max_norm``: applied to every module in :meth:`after_step`."""
        self.max_norm = float(max_norm)

    # --- hooking in -------------------------------------------------------------------------

    def prepare(self, model: BaseModel) -> None:
        """Freeze the base model and wrap the target modules (idempotent)."""
        self.model = model
        for part in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
            if isinstance(part, nn.Module):
                part.requires_grad_(False)
        make = inject.layer_factory(self.config)
        self.layers = {"unet": inject.inject(model.unet, inject.unet_patterns(self.config), make)}
        if self.config.train_text_encoder:
            for component in TEXT_ENCODERS:
                root = getattr(model, component)
                if root is not None:
                    self.layers[component] = inject.inject(root, inject.TEXT_ENCODER_TARGETS, make)
        for layers in self.layers.values():
            for layer in layers.values():
                for param in _own_params(layer):
                    param.requires_grad_(True)
        for component, layers in self.layers.items():
            if not layers:
                raise ValueError(f"LoRA found no target modules in the {component}")

    @property
    def wrapped_modules(self) -> dict[str, list[str]]:
        """The wrapped module paths per component."""
        return {c: sorted(layers) for c, layers in self.layers.items()}

    def named_layers(self) -> Iterator[tuple[str, LoraLayer]]:
        """``(kohya module name, layer)`` for every wrapped module (names per model family,
        see :mod:`tsuika.methods.lora.names`)."""
        model = self.model
        if model is None:
            return
        for component, layers in self.layers.items():
            for path, layer in layers.items():
                yield kohya_name(model, component, path), layer

    def parameters(self, component: str | None = None) -> list[nn.Parameter]:
        comps = [component] if component else list(self.layers)
        return [
            p
            for c in comps
            for layer in self.layers.get(c, {}).values()
            for p in _own_params(layer)
        ]

    def param_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        self._require_prepared()
        te_lr = self.config.text_encoder_lr
        text_lr = learning_rate if te_lr is None else te_lr
        return [
            {
                "params": self.parameters(c),
                "lr": learning_rate if c == "unet" else text_lr,
                "name": c,
            }
            for c in self.layers
            if self.parameters(c)
        ]

    # --- state ------------------------------------------------------------------------------

    def lora_weights(self) -> dict[str, LoraWeights]:
        """``{kohya module name: LoraWeights}`` (detached clones)."""
        return {name: layer.weights() for name, layer in self.named_layers()}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The kohya-keyed tensors (``{name}.lora_down.weight``, ...), cloned."""
        from tsuika.formats.kohya_lora import kohya_state_dict

        self._require_prepared()
        return kohya_state_dict(self.lora_weights())

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        self._load_modules(parse_kohya_state_dict(state, source="adapter state"), "adapter state")

    def load_file(self, path: str | Path) -> None:
        """Load a kohya LoRA file into the wrapped layers (every module must match)."""
        self._load_modules(load_kohya_lora(path), str(path))

    def _load_modules(self, modules: dict[str, LoraWeights], source: str) -> None:
        self._require_prepared()
        layers = dict(self.named_layers())
        unexpected = sorted(set(modules) - set(layers))
        missing = sorted(set(layers) - set(modules))
        if unexpected or missing:
            raise ValueError(
                f"{source}: modules do not match the wrapped model; "
                f"unexpected: {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
                f"missing: {missing[:5]}{'...' if len(missing) > 5 else ''}"
            )
        for name, weights in modules.items():
            layers[name].load_weights(weights, name=f"{source}: {name}")

    # --- per-step hooks ---------------------------------------------------------------------

    def after_step(self) -> None:
        self.steps += 1
        if self.max_norm > 0:
            self.last_norms = self.apply_max_norm(self.max_norm)

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """Scale each module so ``||dW|| <= max_norm`` (kohya ``max_norm_regularization``).

        ``up`` and ``down`` are both multiplied by ``sqrt(max_norm / ||dW||)``.
        Returns ``(modules scaled, mean norm, max norm)`` after scaling.
        """
        if max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        scaled, norms = 0, []
        for _, layer in self.named_layers():
            norm = float(layer.delta_weight().float().norm())
            if norm > max_norm:
                factor = (max_norm / norm) ** 0.5
                layer.lora_up.weight.mul_(factor)
                layer.lora_down.weight.mul_(factor)
                scaled += 1
                norm = max_norm
            norms.append(norm)
        if not norms:
            return 0, 0.0, 0.0
        return scaled, sum(norms) / len(norms), max(norms)

    # --- merge / remove ---------------------------------------------------------------------

    def merge(self) -> None:
        for _, layer in self.named_layers():
            layer.merge()

    def unmerge(self) -> None:
        for _, layer in self.named_layers():
            layer.unmerge()

    def remove(self) -> None:
        """Put every base layer back; the model is the base model again."""
        if self.model is not None:
            for component in self.layers:
                inject.remove(getattr(self.model, component))
        self.layers = {}

    # --- files ------------------------------------------------------------------------------

    def metadata(self, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        cfg = self.config
        kind = self.model.kind if self.model is not None else "sd1"
        return training_metadata(
            rank=cfg.rank,
            alpha=cfg.alpha,
            conv_rank=cfg.conv_rank,
            conv_alpha=cfg.conv_alpha,
            dora=cfg.dora,
            base_model=kind,
            output_name=name,
            steps=self.steps,
            comment="trained with tsuika",
            extra=extra,
        )

    def check_format(self, fmt: str) -> None:
        check_lora_format(fmt, dora=self.config.dora)

    def save(self, out_dir: Path, name: str, fmt: str, metadata: dict[str, str]) -> Path:
        """Write ``{out_dir}/{name}.safetensors`` in ``fmt`` (see :data:`SAVERS`)."""
        self._require_prepared()
        self.check_format(fmt)
        saver = SAVERS[fmt]
        return saver(self, Path(out_dir) / f"{name}.safetensors", self.metadata(name, metadata))

    def _require_prepared(self) -> None:
        if not self.layers:
            raise RuntimeError("LoraMethod.prepare(model) has not been called")


def check_lora_format(fmt: str, *, dora: bool) -> None:
    """A LoRA format (:data:`SAVERS`); DoRA only in kohya's (diffusers would drop
    ``dora_scale``, see :mod:`tsuika.formats.diffusers_lora`)."""
    if fmt not in SAVERS:
        raise ConfigError(
            f"output.format = {fmt!r} is not a LoRA format; allowed: {', '.join(SAVERS)}"
        )
    if dora and fmt == "diffusers":
        raise ConfigError(
            "output.format = 'diffusers' cannot hold DoRA (diffusers drops kohya's "
            "dora_scale): DoRA cannot be saved in the diffusers format; use 'kohya'"
        )


def _own_params(layer: LoraLayer) -> list[nn.Parameter]:
    params = [layer.lora_down.weight, layer.lora_up.weight]
    return params + ([layer.dora_scale] if layer.dora_scale is not None else [])


def _save_kohya(method: LoraMethod, path: Path, metadata: dict[str, str]) -> Path:
    return save_kohya_lora(path, method.lora_weights(), metadata)


def _save_diffusers(method: LoraMethod, path: Path, metadata: dict[str, str]) -> Path:
    components = {
        component: {p: layer.weights() for p, layer in layers.items()}
        for component, layers in method.layers.items()
    }
    return save_diffusers_lora(path, components, metadata)


SAVERS: dict[str, Callable[[LoraMethod, Path, dict[str, str]], Path]] = {
    "kohya": _save_kohya,
    "diffusers": _save_diffusers,
}
