"""Apply a LoRA file (kohya or diffusers layout) to a loaded model, for inference or merging.

Each module named in the file is wrapped in a :class:`LoraLayer` whose rank,
alpha and DoRA setting come from the file, so no :class:`LoraConfig` is
needed. ``multiplier`` is the strength (A1111's ``<lora:name:0.8>``).
Removing is :func:`tsuika.methods.lora.remove` on the UNet / text encoder.
"""

from __future__ import annotations

import os
from pathlib import Path

from tsuika.formats.diffusers_lora import load_diffusers_lora
from tsuika.formats.kohya_lora import (
    PREFIXES,
    LoraFileError,
    LoraWeights,
    kohya_key,
    load_kohya_lora,
)
from tsuika.models.base import BaseModel
from tsuika.torch_utils import replace_submodule

from .layers import LAYER_TYPES, LoraLayer
from .names import DIFFUSERS_COMPONENT_PREFIX, component_prefixes, kohya_names


def read_lora_file(path: str | os.PathLike) -> dict[str, LoraWeights]:
    """Either layout -> ``{kohya module name: LoraWeights}``."""
    from tsuika.formats.safetensors_check import safe_open_checked

    with safe_open_checked(path) as f:
        keys = list(f.keys())
    if keys and all(k.startswith(tuple(p + "_" for p in PREFIXES)) for k in keys):
        return load_kohya_lora(path)
    out: dict[str, LoraWeights] = {}
    for component, modules in load_diffusers_lora(path).items():
        prefix = DIFFUSERS_COMPONENT_PREFIX[component]
        out.update({kohya_key(prefix, p): w for p, w in modules.items()})
    return out


def _targets(model: BaseModel) -> dict[str, tuple[object, str]]:
    """kohya name -> (root module, module path) for every wrappable module (every name
    the model family accepts, see :mod:`tsuika.methods.lora.names`)."""
    index: dict[str, tuple[object, str]] = {}
    for component in component_prefixes(model.kind):
        root = getattr(model, component)
        for path, module in root.named_modules():
            if type(module) in LAYER_TYPES or isinstance(module, LoraLayer):
                for name in kohya_names(model, component, path):
                    index[name] = (root, path)
    return index


def apply_lora_file(
    model: BaseModel, path: str | os.PathLike, multiplier: float = 1.0
) -> dict[str, LoraLayer]:
    """Wrap the modules ``path`` names and load its weights; returns ``{kohya name: layer}``.

    Raises :class:`LoraFileError` (a ``ValueError``) naming the file and the modules it has that the
    model lacks, or modules that already carry a LoRA (merge or remove first).
    """
    modules = read_lora_file(path)
    index = _targets(model)
    unknown = sorted(set(modules) - set(index))
    if unknown:
        raise LoraFileError(
            f"{Path(path)}: {len(unknown)} module(s) not in the model, e.g. {', '.join(unknown[:3])}"
        )
    layers: dict[str, LoraLayer] = {}
    for name, weights in modules.items():
        root, module_path = index[name]
        module = root.get_submodule(module_path)
        if isinstance(module, LoraLayer):
            raise LoraFileError(
                f"{Path(path)}: {name} already carries a LoRA; merge or remove it first"
            )
        layer = LAYER_TYPES[type(module)](
            module, weights.rank, weights.alpha, dora=weights.dora_scale is not None
        )
        layer.load_weights(weights, name=f"{Path(path)}: {name}")
        layer.multiplier = float(multiplier)
        replace_submodule(root, module_path, layer)
        layers[name] = layer
    return layers
