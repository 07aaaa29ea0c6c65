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
    LoraWeights,
    kohya_key,
    load_kohya_lora,
    normalize_module_name,
)
from tsuika.models.base import BaseModel

from .layers import LAYER_TYPES, LoraLayer

# component -> kohya prefixes that address it
COMPONENT_PREFIXES = {"unet": ("lora_unet",), "text_encoder": ("lora_te", "lora_te1")}


def read_lora_file(path: str | os.PathLike) -> dict[str, LoraWeights]:
    """Either layout -> ``{kohya module name: LoraWeights}``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    if keys and all(k.startswith(tuple(p + "_" for p in PREFIXES)) for k in keys):
        return load_kohya_lora(path)
    out: dict[str, LoraWeights] = {}
    for component, modules in load_diffusers_lora(path).items():
        if component not in COMPONENT_PREFIXES:
            raise ValueError(f"{path}: component {component!r} is not in an SD 1.x/2.x model")
        prefix = COMPONENT_PREFIXES[component][0]
        out.update({kohya_key(prefix, p): w for p, w in modules.items()})
    return out


def _targets(model: BaseModel) -> dict[str, tuple[object, str]]:
    """kohya name -> (root module, module path) for every wrappable module."""
    index: dict[str, tuple[object, str]] = {}
    for component, prefixes in COMPONENT_PREFIXES.items():
        root = getattr(model, component)
        for path, module in root.named_modules():
            if type(module) in LAYER_TYPES or isinstance(module, LoraLayer):
                for prefix in prefixes:
                    index[normalize_module_name(kohya_key(prefix, path))] = (root, path)
    return index


def apply_lora_file(
    model: BaseModel, path: str | os.PathLike, multiplier: float = 1.0
) -> dict[str, LoraLayer]:
    """Wrap the modules ``path`` names and load its weights; returns ``{kohya name: layer}``.

    Raises ``ValueError`` naming the file and the modules it has that the
    model lacks, or modules that already carry a LoRA (merge or remove first).
    """
    modules = read_lora_file(path)
    index = _targets(model)
    unknown = sorted(set(modules) - set(index))
    if unknown:
        raise ValueError(
            f"{Path(path)}: {len(unknown)} module(s) not in the model, e.g. {', '.join(unknown[:3])}"
        )
    layers: dict[str, LoraLayer] = {}
    for name, weights in modules.items():
        root, module_path = index[name]
        module = root.get_submodule(module_path)
        if isinstance(module, LoraLayer):
            raise ValueError(
                f"{Path(path)}: {name} already carries a LoRA; merge or remove it first"
            )
        layer = LAYER_TYPES[type(module)](
            module, weights.rank, weights.alpha, dora=weights.dora_scale is not None
        )
        layer.load_weights(weights, name=f"{Path(path)}: {name}")
        layer.multiplier = float(multiplier)
        parent_path, _, child = module_path.rpartition(".")
        parent = root.get_submodule(parent_path) if parent_path else root
        setattr(parent, child, layer)
        layers[name] = layer
    return layers
