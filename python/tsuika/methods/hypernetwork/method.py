"""The hypernetwork training method: which parameters train, how they hook in, how the file is written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tsuika.errors import ConfigError
from tsuika.formats.a1111_hypernetwork import (
    EXTENSIONS,
    WRITERS,
    HypernetworkFile,
    HypernetworkFileError,
    load_hypernetwork_file,
)
from tsuika.methods.base import Method
from tsuika.models.base import BaseModel

from .config import HypernetworkConfig
from .hook import HypernetworkHook, context_widths, install
from .modules import Hypernetwork


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class HypernetworkMethod(Method):
    """AUTOMATIC1111's hypernetwork: a (K, V) pair of small MLPs per context width,
    applied to what feeds K and V of every attention of that width. The base
    model is frozen; only the hypernetwork trains.
    """

    name = "hypernetwork"

    def __init__(self, config: HypernetworkConfig | None = None) -> None:
        self.config = config if config is not None else HypernetworkConfig()
        self.model: BaseModel | None = None
        self.hypernetwork: Hypernetwork | None = None
        self.hook: HypernetworkHook | None = None
        self.steps = 0

    # --- hooking in -------------------------------------------------------------------------

    def prepare(self, model: BaseModel) -> None:
        """Freeze the base model, build fresh modules for the configured widths and hook them
        into the UNet (a second call replaces the first)."""
        self.remove()
        for part in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
            if isinstance(part, nn.Module):  # SDXL's second encoder too (SD1/SD2: None)
                part.requires_grad_(False)
        dims = self.config.resolve_dims(context_widths(model.unet))
        net = Hypernetwork(dims, self.config.structure())
        net.initialize(self.config.initialization)
        net.to(_device_of(model.unet))
        net.requires_grad_(True)
        net.train(model.unet.training)
        self.model, self.hypernetwork = model, net
        self.hook = install(model.unet, net)

    @property
    def strength(self) -> float:
        return self._require_prepared().strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._require_prepared().strength = value

    def param_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        params = list(self._require_prepared().parameters())
        return [{"params": params, "lr": learning_rate, "name": "hypernetwork"}]

    # --- state ------------------------------------------------------------------------------

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """``{"{dim}.k.linear.{i}.weight": tensor, ...}`` (cloned, CPU)."""
        return self._require_prepared().flat_state()

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        self._require_prepared().load_flat_state(state, "adapter state")

    def load_file(self, path: str | os.PathLike) -> None:
        """Load a hypernetwork file's weights into the prepared modules; its structure and
        widths must be the configured ones."""
        net = self._require_prepared()
        hf = load_hypernetwork_file(path)
        if hf.structure != net.structure:
            raise HypernetworkFileError(
                f"{path}: its structure {hf.structure} differs from the configured {net.structure}"
            )
        net.load_module_states(hf.layers, str(path))

    def after_step(self) -> None:
        self.steps += 1

    def remove(self) -> None:
        """Put the original attention processors back; the model is the base model again."""
        if self.hook is not None:
            self.hook.remove()
        self.hook = None

    # --- files ------------------------------------------------------------------------------

    def to_file(self, name: str, metadata: dict[str, str] | None = None) -> HypernetworkFile:
        """The trained hypernetwork with A1111's fields (``step`` from ``ss_steps`` when given,
        ``sd_checkpoint_name`` from ``ss_sd_model_name``)."""
        net = self._require_prepared()
        meta = dict(metadata or {})
        meta["tsuika_hypernetwork_config"] = json.dumps(self.config.to_dict())
        steps = meta.get("ss_steps", "")
        model_name = meta.get("sd_checkpoint_name") or meta.get("ss_sd_model_name")
        return HypernetworkFile(
            structure=net.structure,
            layers=net.module_states(),
            weight_initialization=self.config.initialization,
            use_dropout=self.config.dropout_rate > 0,
            last_layer_dropout=net.structure.dropout_structure[-2] != 0,
            step=int(steps) if steps.isdigit() else self.steps,
            name=name,
            sd_checkpoint=meta.get("sd_checkpoint"),
            sd_checkpoint_name=Path(model_name).stem if model_name else None,
            metadata=meta,
        )

    def check_format(self, fmt: str) -> None:
        """A hypernetwork format (:data:`WRITERS`)."""
        if fmt not in WRITERS:
            raise ConfigError(
                f"output.format = {fmt!r} is not a hypernetwork format; allowed: {', '.join(WRITERS)}"
            )

    def save(self, out_dir: Path, name: str, fmt: str, metadata: dict[str, str]) -> Path:
        """Write ``{out_dir}/{name}.pt`` (``a1111``) or ``{name}.safetensors`` (``safetensors``)."""
        self.check_format(fmt)
        writer = WRITERS[fmt]
        path = Path(out_dir) / f"{name}{EXTENSIONS[fmt]}"
        return writer(path, self.to_file(name, metadata))

    def _require_prepared(self) -> Hypernetwork:
        if self.hypernetwork is None or self.hook is None:
            raise RuntimeError("HypernetworkMethod.prepare(model) has not been called")
        return self.hypernetwork


def apply_hypernetwork_file(
    unet: nn.Module, path: str | os.PathLike, strength: float = 1.0
) -> HypernetworkHook:
    """Load a ``.pt`` / ``.safetensors`` hypernetwork and hook it into ``unet`` for inference
    (eval mode, ``strength`` as the multiplier). Widths the UNet lacks are ignored, as in
    A1111. Returns the hook; ``hook.remove()`` takes it out again."""
    hf = load_hypernetwork_file(path)
    net = Hypernetwork.from_file(hf, str(path)).to(_device_of(unet)).eval()
    net.requires_grad_(False)
    net.strength = strength
    return install(unet, net)
