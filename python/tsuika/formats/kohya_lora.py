"""The kohya / AUTOMATIC1111 LoRA file (what A1111, ComfyUI and diffusers' ``load_lora_weights`` read).

A ``.safetensors`` file whose keys are ``{module}.{suffix}``:

* ``module`` = prefix + module path with ``.`` -> ``_``; prefixes
  ``lora_unet_``, ``lora_te_`` (SDXL ``lora_te1_`` / ``lora_te2_``). Text
  encoder modules are named from the CLIP path *with* ``text_model.``
  (``lora_te_text_model_encoder_layers_0_self_attn_q_proj``): transformers 5
  dropped that level from ``CLIPTextModel``, so :func:`kohya_key` adds it back
  and :func:`normalize_module_name` accepts files without it.
* suffixes ``lora_down.weight`` ``[r, in]`` / ``[r, in, kh, kw]``,
  ``lora_up.weight`` ``[out, r]`` / ``[out, r, 1, 1]``, ``alpha`` (scalar;
  absent means ``alpha = r``, kohya's rule) and, for DoRA, ``dora_scale``
  ``[1, in]`` / ``[1, in, 1, 1]`` (the key A1111's ``network.py``, ComfyUI
  and LyCORIS read). The update is ``up @ down * alpha / r``.
* training metadata in the header, all strings (``ss_network_dim``, ...),
  as kohya-ss/sd-scripts ``train_network.py`` writes it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch

from tsuika.atomic import atomic_write
from tsuika.errors import TsuikaError

PREFIXES = ("lora_unet", "lora_te", "lora_te1", "lora_te2")
TEXT_PREFIXES = ("lora_te", "lora_te1", "lora_te2")
SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha", "dora_scale")
BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


class LoraFileError(TsuikaError, ValueError):
    """A LoRA file (or state dict) that cannot be read; the message names the file and key."""


class LoraWeights(NamedTuple):
    """One module's LoRA: ``down`` [r, in(, kh, kw)], ``up`` [out, r(, 1, 1)], ``alpha``."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    dora_scale: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def kohya_key(prefix: str, module_path: str) -> str:
    """The kohya module name for ``module_path`` under ``prefix`` (``lora_unet`` / ``lora_te``...).

    >>> kohya_key("lora_te", "encoder.layers.0.self_attn.q_proj")
    'lora_te_text_model_encoder_layers_0_self_attn_q_proj'
    """
    prefix = prefix.rstrip("_")
    if prefix not in PREFIXES:
        raise ValueError(f"unknown kohya prefix {prefix!r}; allowed: {', '.join(PREFIXES)}")
    if prefix in TEXT_PREFIXES and not module_path.startswith("text_model."):
        module_path = "text_model." + module_path
    return f"{prefix}_{module_path.replace('.', '_')}"


def normalize_module_name(name: str) -> str:
    """Accept both text-encoder spellings: ``lora_te_encoder_...`` -> ``lora_te_text_model_encoder_...``."""
    for prefix in TEXT_PREFIXES:
        head = prefix + "_"
        if name.startswith(head) and not name.startswith(head + "text_model_"):
            # lora_te1_/lora_te2_ also start with "lora_te" + "1"/"2", not "lora_te_"
            return head + "text_model_" + name[len(head) :]
    return name


def _prefix_of(name: str) -> str | None:
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if name.startswith(prefix + "_"):
            return prefix
    return None


def kohya_state_dict(modules: Mapping[str, LoraWeights]) -> dict[str, torch.Tensor]:
    """``{module name: LoraWeights}`` -> the file's flat tensor dict (contiguous clones)."""
    out: dict[str, torch.Tensor] = {}
    for name, w in modules.items():
        out[f"{name}.lora_down.weight"] = w.down.detach().contiguous().clone()
        out[f"{name}.lora_up.weight"] = w.up.detach().contiguous().clone()
        out[f"{name}.alpha"] = torch.tensor(float(w.alpha), dtype=w.down.dtype)
        if w.dora_scale is not None:
            out[f"{name}.dora_scale"] = w.dora_scale.detach().contiguous().clone()
    return out


def _split_key(key: str, source: str) -> tuple[str, str]:
    name, dot, suffix = key.partition(".")
    if not dot or suffix not in SUFFIXES:
        raise LoraFileError(
            f"{source}: key {key!r} has an unknown suffix {suffix!r}; allowed: {', '.join(SUFFIXES)}"
        )
    if _prefix_of(name) is None:
        raise LoraFileError(
            f"{source}: key {key!r} does not start with one of {', '.join(p + '_' for p in PREFIXES)}"
        )
    return name, suffix


def _check_module(name: str, parts: dict[str, torch.Tensor], source: str) -> LoraWeights:
    for suffix in ("lora_down.weight", "lora_up.weight"):
        if suffix not in parts:
            raise LoraFileError(f"{source}: {name}.{suffix} is missing")
    for suffix, tensor in parts.items():
        if not torch.isfinite(tensor.float()).all():
            raise LoraFileError(f"{source}: {name}.{suffix} holds non-finite values (NaN or inf)")
    down, up = parts["lora_down.weight"], parts["lora_up.weight"]
    if down.dim() not in (2, 4) or up.dim() != down.dim():
        raise LoraFileError(
            f"{source}: {name}: lora_down.weight {tuple(down.shape)} and lora_up.weight "
            f"{tuple(up.shape)} must both be 2-D (linear) or 4-D (conv)"
        )
    rank = down.shape[0]
    if up.shape[1] != rank or (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise LoraFileError(
            f"{source}: {name}.lora_up.weight has shape {tuple(up.shape)}; expected "
            f"[out, {rank}{', 1, 1' if up.dim() == 4 else ''}] to match lora_down.weight "
            f"{tuple(down.shape)}"
        )
    alpha = float(rank)
    if "alpha" in parts:
        if parts["alpha"].numel() != 1:
            raise LoraFileError(
                f"{source}: {name}.alpha must be a scalar, got shape {tuple(parts['alpha'].shape)}"
            )
        alpha = float(parts["alpha"].reshape(()).item())
    dora = parts.get("dora_scale")
    if dora is not None:
        expected = (1, down.shape[1], *([1] * (down.dim() - 2)))
        if tuple(dora.shape) != expected:
            raise LoraFileError(
                f"{source}: {name}.dora_scale has shape {tuple(dora.shape)}, expected {expected}"
            )
    return LoraWeights(down=down, up=up, alpha=alpha, dora_scale=dora)


def parse_kohya_state_dict(
    state: Mapping[str, torch.Tensor], source: str = "state dict"
) -> dict[str, LoraWeights]:
    """Validate a kohya tensor dict and group it per module (text-encoder names normalised)."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        name, suffix = _split_key(key, source)
        name = normalize_module_name(name)
        if suffix in grouped.setdefault(name, {}):
            raise LoraFileError(f"{source}: {key!r} appears twice (both text-encoder spellings?)")
        grouped[name][suffix] = tensor
    return {name: _check_module(name, parts, source) for name, parts in grouped.items()}


def load_kohya_lora(path: str | os.PathLike) -> dict[str, LoraWeights]:
    """Read a kohya LoRA file -> ``{module name: LoraWeights}``.

    Raises :class:`LoraFileError` naming the file and key for non-finite
    values, inconsistent shapes, unknown prefixes or suffixes.
    """
    from tsuika.formats.safetensors_check import load_file_checked

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    return parse_kohya_state_dict(load_file_checked(path), source=str(path))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors header metadata (``{}`` when there is none)."""
    from tsuika.formats.safetensors_check import safe_open_checked

    with safe_open_checked(path) as f:
        return dict(f.metadata() or {})


def as_metadata(values: Mapping[str, object]) -> dict[str, str]:
    """Metadata values as strings (safetensors allows nothing else); bools as ``True``/``False``."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, str):
            out[key] = value
        elif isinstance(value, (bool, int, float)):
            out[key] = str(value)
        elif isinstance(value, (dict, list, tuple)):
            out[key] = json.dumps(value)
        else:
            raise TypeError(f"metadata {key!r}: cannot store a {type(value).__name__} as a string")
    return out


def training_metadata(
    *,
    rank: int,
    alpha: float,
    conv_rank: int = 0,
    conv_alpha: float = 1.0,
    dora: bool = False,
    base_model: str = "sd1",
    output_name: str = "",
    steps: int = 0,
    comment: str = "",
    extra: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """kohya's ``ss_*`` header for a LoRA we trained; ``extra`` (the caller's) wins on clashes.

    ``ss_network_module`` is ``networks.lora`` (kohya's module) unless DoRA is
    on, which only LyCORIS trains: ``lycoris.kohya`` with ``algo=lora,
    dora_wd=True``.
    """
    args: dict[str, str] = {}
    if conv_rank > 0:
        args.update(conv_dim=str(conv_rank), conv_alpha=_num(conv_alpha))
    if dora:
        args.update(algo="lora", dora_wd="True")
    meta = {
        "ss_network_module": "lycoris.kohya" if dora else "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": _num(alpha),
        "ss_network_args": json.dumps(args),
        "ss_base_model_version": BASE_MODEL_VERSIONS.get(base_model, base_model),
        "ss_v2": str(base_model == "sd2"),
        "ss_training_comment": comment,
        "ss_output_name": output_name,
        "ss_steps": str(steps),
    }
    meta.update(as_metadata(extra or {}))
    return meta


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]
) -> Path:
    """Write to a temporary file in the same folder, then ``os.replace`` it into place."""
    from safetensors.torch import save_file

    from tsuika.formats.safetensors_check import canonical_header

    def write(tmp: str) -> None:
        save_file(dict(tensors), tmp, metadata=dict(metadata))
        canonical_header(tmp)  # the same content gives the same bytes in every process

    return atomic_write(path, write)


def save_kohya_lora(
    path: str | os.PathLike,
    modules: Mapping[str, LoraWeights],
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write ``{module name: LoraWeights}`` as a kohya LoRA file (atomically)."""
    for name, w in modules.items():
        if _prefix_of(name) is None:
            raise ValueError(f"module name {name!r} lacks a kohya prefix ({', '.join(PREFIXES)})")
        if not math.isfinite(float(w.alpha)):
            raise ValueError(f"{name}.alpha is not finite ({w.alpha})")
    return atomic_save_safetensors(kohya_state_dict(modules), path, as_metadata(metadata or {}))
