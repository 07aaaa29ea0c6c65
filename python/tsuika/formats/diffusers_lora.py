"""The diffusers / peft LoRA file: what ``pipe.save_lora_weights`` writes and ``load_lora_weights`` reads.

One ``.safetensors`` file (diffusers' ``load_lora_weights`` takes the file
path directly; a folder would need ``pytorch_lora_weights.safetensors``
inside). Keys are ``{component}.{module path}.lora_A.weight`` (= kohya's
down) and ``.lora_B.weight`` (= up), ``component`` being ``unet`` or
``text_encoder``. Text-encoder paths carry ``text_model.`` so transformers
4 models match them; diffusers strips it for transformers 5 models
(``_load_lora_into_text_encoder``).

Alpha lives in the header: ``lora_adapter_metadata`` is a JSON object of
peft ``LoraConfig`` arguments prefixed by component (``unet.r``,
``unet.lora_alpha``, ``unet.target_modules``, ``unet.rank_pattern``,
``unet.alpha_pattern``, ...), the layout of diffusers'
``LoraBaseMixin.write_lora_layers``. Target paths are written without
``text_model.`` so peft's suffix match finds them in either transformers.

DoRA is refused: diffusers drops kohya's ``dora_scale`` and peft keeps its
magnitude per output row, while tsuika's (A1111/ComfyUI) is per input column.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from .kohya_lora import LoraFileError, LoraWeights, as_metadata, atomic_save_safetensors

METADATA_KEY = "lora_adapter_metadata"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")


def _file_path(component: str, module_path: str) -> str:
    if component in TEXT_COMPONENTS and not module_path.startswith("text_model."):
        return "text_model." + module_path
    return module_path


def _target_path(module_path: str) -> str:
    return module_path.removeprefix("text_model.")


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _peft_config(modules: Mapping[str, LoraWeights]) -> dict[str, object]:
    """peft ``LoraConfig`` kwargs: the commonest rank/alpha plus per-module patterns."""
    ranks = Counter(w.rank for w in modules.values())
    alphas = Counter(float(w.alpha) for w in modules.values())
    r, alpha = ranks.most_common(1)[0][0], alphas.most_common(1)[0][0]
    rank_pattern = {_target_path(p): w.rank for p, w in modules.items() if w.rank != r}
    alpha_pattern = {
        _target_path(p): _number(w.alpha) for p, w in modules.items() if float(w.alpha) != alpha
    }
    return {
        "r": r,
        "lora_alpha": _number(alpha),
        "target_modules": sorted(_target_path(p) for p in modules),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_dora": False,
        "init_lora_weights": True,
    }


def save_diffusers_lora(
    path: str | os.PathLike,
    components: Mapping[str, Mapping[str, LoraWeights]],
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write ``{component: {module path: LoraWeights}}`` as a diffusers/peft LoRA file."""
    tensors: dict[str, torch.Tensor] = {}
    adapter_meta: dict[str, object] = {}
    for component, modules in components.items():
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; allowed: {', '.join(COMPONENTS)}")
        if not modules:
            continue
        for module_path, w in modules.items():
            if w.dora_scale is not None:
                raise ValueError(
                    f"{component}.{module_path}: DoRA cannot be saved in the diffusers format "
                    "(diffusers drops kohya's dora_scale; peft's magnitude is per output row); "
                    "save it with format 'kohya'"
                )
            key = f"{component}.{_file_path(component, module_path)}"
            tensors[f"{key}.lora_A.weight"] = w.down.detach().contiguous().clone()
            tensors[f"{key}.lora_B.weight"] = w.up.detach().contiguous().clone()
        for name, value in _peft_config(modules).items():
            adapter_meta[f"{component}.{name}"] = value
    header = {"format": "pt", METADATA_KEY: json.dumps(adapter_meta, indent=2, sort_keys=True)}
    header.update(as_metadata(metadata or {}))
    return atomic_save_safetensors(tensors, path, header)


def _alpha_for(config: Mapping[str, object], target: str) -> tuple[int | None, float]:
    ranks = config.get("rank_pattern") or {}
    alphas = config.get("alpha_pattern") or {}
    rank = ranks.get(target, config.get("r"))
    alpha = alphas.get(target, config.get("lora_alpha", rank))
    return rank, float(alpha)


def load_diffusers_lora(path: str | os.PathLike) -> dict[str, dict[str, LoraWeights]]:
    """Read a file written by :func:`save_diffusers_lora` (or diffusers) -> per-component modules.

    Module paths come back as written (text encoders with ``text_model.``).
    Without ``lora_adapter_metadata`` alpha defaults to the rank (peft's
    default scale of 1).
    """
    from tsuika.formats.safetensors_check import safe_open_checked

    source = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    with safe_open_checked(source) as f:
        header = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header.get(METADATA_KEY, "{}"))
    grouped: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        component, _, rest = key.partition(".")
        module, _, suffix = rest.rpartition(".lora_")
        if component not in COMPONENTS or suffix not in ("A.weight", "B.weight"):
            raise LoraFileError(
                f"{source}: key {key!r} is not <component>.<module>.lora_[AB].weight"
            )
        if not torch.isfinite(tensor.float()).all():
            raise LoraFileError(f"{source}: {key} holds non-finite values (NaN or inf)")
        grouped.setdefault(component, {}).setdefault(module, {})[suffix] = tensor
    out: dict[str, dict[str, LoraWeights]] = {}
    for component, modules in grouped.items():
        config = {k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith(component + ".")}
        for module, parts in modules.items():
            if set(parts) != {"A.weight", "B.weight"}:
                raise LoraFileError(f"{source}: {component}.{module} lacks lora_A or lora_B")
            down, up = parts["A.weight"], parts["B.weight"]
            alpha = float(down.shape[0])  # no header: peft's default scale of 1
            if config:
                _, alpha = _alpha_for(config, _target_path(module))
            out.setdefault(component, {})[module] = LoraWeights(down=down, up=up, alpha=alpha)
    return out
