"""Several LoRAs on one layer as a single low-rank product (inference).

N LoRAs on a layer add ``sum_i m_i * (alpha_i / r_i) * up_i @ down_i``. That
sum is one product of rank ``R = sum_i r_i``::

    down = cat([down_1, ..., down_N], dim=0)                  # [R, in(, kh, kw)]
    up   = cat([m_1 s_1 up_1, ..., m_N s_N up_N], dim=1)      # [out, R(, 1, 1)]
    delta(x) = up(down(x))

so N LoRAs cost one LoRA of the summed rank: two matmuls (or one k x k conv
and one 1x1 conv) per layer instead of N pairs. The multiplier ``m_i``
(A1111's ``<lora:name:m>``) and the scale ``s_i = alpha_i / r_i`` are folded
into ``up``. Every LoRA on a conv layer has a down conv with the base conv's
kernel, stride, padding and dilation (kohya's LoCon), so the downs stack
along the output channels.

DoRA is not linear in its update, so it cannot join a stack; callers merge
DoRA files into the weights instead (as A1111 does: each file's update is
computed against the original weight and the updates are summed).

:class:`StackedLora` wraps the base layer (kept as ``base_layer``), as
:class:`~tsuika.methods.lora.layers.LoraLayer` does; :func:`unstack` puts the
base layer back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tsuika.formats.kohya_lora import LoraFileError
from tsuika.kernels import lora_linear
from tsuika.models.base import BaseModel
from tsuika.torch_utils import replace_submodule

from .apply import _targets, read_lora_file
from .layers import LAYER_TYPES, LoraLayer


class StackedLora(nn.Module):
    """``base_layer(x) + up(down(x))`` with the downs and scaled ups of several LoRAs stacked.

    ``parts`` are :class:`LoraLayer` objects (loaded from files; their weights,
    scale and multiplier are read once, they are not kept). Tensors are
    buffers in the base layer's dtype, so ``.to()`` moves and casts them.
    """

    def __init__(self, base_layer: nn.Module, parts: Sequence[LoraLayer]) -> None:
        super().__init__()
        if not parts:
            raise ValueError("StackedLora needs at least one LoRA")
        dora = [i for i, p in enumerate(parts) if p.dora_scale is not None]
        if dora:
            raise ValueError(f"LoRA #{dora[0]} is DoRA; DoRA cannot be stacked (merge it instead)")
        self.base_layer = base_layer
        self.ranks = [p.rank for p in parts]
        weight = base_layer.weight
        with torch.no_grad():
            down = torch.cat([p.lora_down.weight.detach() for p in parts], dim=0)
            up = torch.cat(
                [p.lora_up.weight.detach() * (p.scale * p.multiplier) for p in parts], dim=1
            )
        self.register_buffer("down", down.to(weight.device, weight.dtype).contiguous())
        self.register_buffer("up", up.to(weight.device, weight.dtype).contiguous())
        self.enabled = True
        self.backend = "auto"

    @property
    def rank(self) -> int:
        """The stacked rank: the sum of the parts' ranks."""
        return int(self.down.shape[0])

    def __getattr__(self, name: str):
        # Attributes the base layer has (in_features, kernel_size, weight...) read through,
        # so code that inspects a projection (attention processors, hooks) still works.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def delta_weight(self) -> torch.Tensor:
        """The summed update ``up @ down`` in the base weight's shape."""
        shape = self.base_layer.weight.shape
        return (self.up.flatten(1) @ self.down.flatten(1)).reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base_layer(x)
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return lora_linear(
                x, base.weight, base.bias, self.down, self.up, 1.0, backend=self.backend
            )
        h = F.conv2d(
            x.to(self.down.dtype),
            self.down,
            stride=base.stride,
            padding=base.padding,
            dilation=base.dilation,
        )
        return base(x) + F.conv2d(h, self.up).to(x.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank} ({' + '.join(map(str, self.ranks))})"


def stack(root: nn.Module, path: str, parts: Sequence[LoraLayer]) -> StackedLora:
    """Replace the module at ``path`` (a plain Linear/Conv2d) by a :class:`StackedLora`."""
    module = root.get_submodule(path)
    if isinstance(module, (LoraLayer, StackedLora)):
        raise ValueError(f"{path} already carries a LoRA; remove it before stacking")
    layer = StackedLora(module, parts)
    replace_submodule(root, path, layer)
    return layer


def stacked_layers(root: nn.Module) -> dict[str, StackedLora]:
    return {n: m for n, m in root.named_modules() if isinstance(m, StackedLora)}


def unstack(root: nn.Module) -> list[str]:
    """Put every stacked layer's base layer back; returns the paths."""
    paths = list(stacked_layers(root))
    for path in paths:
        replace_submodule(root, path, root.get_submodule(path).base_layer)
    return paths


# --------------------------------------------------------------------------- files


class LoraStack:
    """LoRA files attached to a model: stacked layers plus DoRA updates merged in place.

    :meth:`remove` restores the model exactly (stacked layers unwrapped,
    merged weights copied back).
    """

    def __init__(self, model: BaseModel) -> None:
        self.model = model
        self.layers: dict[str, StackedLora] = {}  # kohya module name -> layer
        self._merged: list[tuple[torch.Tensor, torch.Tensor]] = []  # (weight, original)
        self._roots: list[nn.Module] = []

    def remove(self) -> None:
        with torch.no_grad():
            for weight, original in reversed(self._merged):
                weight.copy_(original)
        self._merged = []
        for root in self._roots:
            unstack(root)
        self._roots, self.layers = [], {}


def _file_layers(
    model: BaseModel, path: Path, multiplier: float, index: dict[str, tuple[nn.Module, str]]
) -> dict[str, LoraLayer]:
    """One file's modules as loaded (unattached) LoRA layers; shapes checked per key."""
    modules = read_lora_file(path)
    unknown = sorted(set(modules) - set(index))
    if unknown:
        raise LoraFileError(
            f"{path}: {len(unknown)} module(s) are not in the model, e.g. "
            f"{unknown[0]}.lora_down.weight"
            + (f" (and {', '.join(unknown[1:3])})" if unknown[1:] else "")
        )
    layers: dict[str, LoraLayer] = {}
    for name, weights in modules.items():
        root, module_path = index[name]
        module = root.get_submodule(module_path)
        base = module.base_layer if isinstance(module, (LoraLayer, StackedLora)) else module
        layer = LAYER_TYPES[type(base)](
            base, weights.rank, weights.alpha, dora=weights.dora_scale is not None
        )
        try:
            layer.load_weights(weights, name=f"{path}: {name}")
        except ValueError as exc:
            raise LoraFileError(str(exc)) from None
        layer.multiplier = float(multiplier)
        layers[name] = layer
    return layers


def apply_lora_files(
    model: BaseModel, files: Sequence[tuple[str | os.PathLike, float]]
) -> LoraStack:
    """Attach LoRA files ``[(path, multiplier), ...]`` (kohya or diffusers layout) for inference.

    All LoRAs of a layer become one :class:`StackedLora`; DoRA files are merged
    into the weights (each update computed against the original weight, then
    summed, as A1111). Raises :class:`LoraFileError` naming the file and key
    for modules the model lacks, wrong shapes, unknown keys or non-finite values;
    nothing is attached when a file fails.
    """
    index = _targets(model)
    per_module: dict[str, list[LoraLayer]] = {}
    for path, multiplier in files:
        for name, layer in _file_layers(model, Path(path), multiplier, index).items():
            per_module.setdefault(name, []).append(layer)
    handle = LoraStack(model)
    updates: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layers in per_module.items():
            for layer in (p for p in layers if p.dora_scale is not None):
                base = layer.base_layer.weight
                delta = (layer.merged_weight().float() - base.float()).to(base.dtype)
                updates[name] = updates[name] + delta if name in updates else delta
        for name, delta in updates.items():
            root, module_path = index[name]
            weight = root.get_submodule(module_path).weight
            handle._merged.append((weight, weight.detach().clone()))
            weight.add_(delta)
    for name, layers in per_module.items():
        plain = [p for p in layers if p.dora_scale is None]
        if plain:
            root, module_path = index[name]
            handle.layers[name] = stack(root, module_path, plain)
            if root not in handle._roots:
                handle._roots.append(root)
    return handle
