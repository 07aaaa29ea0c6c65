"""Read and write single-file checkpoints in the original Stable Diffusion layout.

Reading: ``.safetensors`` through safetensors; ``.ckpt``/``.pt``/``.pth``
ONLY through ``torch.load(..., weights_only=True)`` — a pickle that needs
code to unpickle is refused (:class:`UnsafeCheckpointError`).

Writing: one ``.safetensors`` that AUTOMATIC1111 and ComfyUI load (layout in
:mod:`tsuika.models.original_layout`), written atomically. The component
configs travel in the header metadata (``tsuika.configs``, JSON) so that
tsuika reloads narrow models exactly; other tools ignore it.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from tsuika.atomic import atomic_write
from tsuika.errors import TsuikaError

from .base import BaseModel
from .original_layout import (
    sd1_text_key_map,
    sd2_text_to_original,
    unet_key_map,
    vae_key_map,
)
from .sdxl_layout import text_to_original as sdxl_text_to_original

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CONFIGS_METADATA_KEY = "tsuika.configs"


class ModelFileError(TsuikaError, ValueError):
    """A base-model file (single-file checkpoint) that cannot be read or written.

    Not :class:`tsuika.training.checkpoint.CheckpointError`, which is about a
    training run's resume checkpoint.
    """


CheckpointError = ModelFileError  # the old name, kept for callers


class UnsafeCheckpointError(ModelFileError):
    """A pickle checkpoint that contains code objects; refused for safety."""


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a checkpoint (nested ``state_dict`` unwrapped) and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from tsuika.formats.safetensors_check import safe_open_checked

        try:
            with safe_open_checked(path) as f:
                metadata = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as err:  # safetensors raises its own error types
            raise ModelFileError(f"{path}: not a readable safetensors file ({err})") from err
        return state, metadata
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path), {}
    raise ModelFileError(
        f"{path}: unsupported checkpoint extension {suffix!r}; expected .safetensors, "
        ".ckpt, .pt or .pth (or a diffusers folder with model_index.json)"
    )


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path}: the file contains pickled code objects and was refused for safety "
            "(loaded with torch.load(weights_only=True)); convert it to .safetensors from a "
            f"trusted environment. Detail: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ModelFileError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _unique(key_map: Mapping[str, str], component: str) -> Mapping[str, str]:
    if len(set(key_map.values())) != len(key_map):
        raise RuntimeError(f"original-layout key collision while converting the {component}")
    return key_map


def _sd1_text(model: BaseModel) -> dict[str, torch.Tensor]:
    state = model.text_encoder.state_dict()
    key_map = _unique(sd1_text_key_map(list(state)), "text encoder")
    return {key_map[k]: v for k, v in state.items()}


def _sd2_text(model: BaseModel) -> dict[str, torch.Tensor]:
    return sd2_text_to_original(model.text_encoder.state_dict(), pad_unused_layer=True)


def _sdxl_text(model: BaseModel) -> dict[str, torch.Tensor]:
    return sdxl_text_to_original(model.text_encoder, model.text_encoder_2)


# model kind -> its text encoder(s) in the original layout
TEXT_WRITERS = {"sd1": _sd1_text, "sd2": _sd2_text, "sdxl": _sdxl_text}


def to_original_state_dict(model: BaseModel) -> dict[str, torch.Tensor]:
    """The whole model as one state dict in the original SD key layout.

    UNet -> ``model.diffusion_model.*``, VAE -> ``first_stage_model.*`` (mid
    attention as 1x1 convs), text encoder -> ``cond_stage_model.transformer.
    text_model.*`` (SD 1.x) or ``cond_stage_model.model.*`` (SD 2.x, OpenCLIP).
    SD 2.x reads the penultimate OpenCLIP layer, so the diffusers model has one
    layer fewer than the file: a zero last layer and an identity
    ``text_projection`` are written in their places (never used by SD 2.x).
    SDXL's two encoders go to ``conditioner.embedders.{0,1}.*``
    (:mod:`tsuika.models.sdxl_layout`).
    """
    if model.kind not in TEXT_WRITERS:
        raise CheckpointError(f"no single-file layout for model kind {model.kind!r}")
    out: dict[str, torch.Tensor] = {}
    unet_state = model.unet.state_dict()
    key_map = _unique(unet_key_map(model.unet.config, list(unet_state)), "UNet")
    out.update({key_map[k]: v for k, v in unet_state.items()})
    vae_state = model.vae.state_dict()
    key_map = _unique(vae_key_map(model.vae.config, list(vae_state)), "VAE")
    for key, tensor in vae_state.items():
        original = key_map[key]
        if ".mid.attn_1." in original and original.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[original] = tensor
    out.update(TEXT_WRITERS[model.kind](model))
    return out


def stored_configs(model: BaseModel) -> dict[str, object]:
    configs = {
        "unet": dict(model.unet.config),
        "vae": dict(model.vae.config),
        "text_encoder": model.text_encoder.config.to_dict(),
        "kind": model.kind,
        "prediction_type": model.prediction_type,
    }
    if model.text_encoder_2 is not None:
        configs["text_encoder_2"] = model.text_encoder_2.config.to_dict()
    return configs


def save_single_file(
    model: BaseModel,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` as one original-layout ``.safetensors`` file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelFileError(f"{path}: single files are written as .safetensors only")
    state = {}
    for key, tensor in to_original_state_dict(model).items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous()
    header = {CONFIGS_METADATA_KEY: json.dumps(stored_configs(model), default=_json_default)}
    header.update({str(k): str(v) for k, v in (metadata or {}).items()})
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=header))


def _json_default(value: object) -> object:
    if isinstance(value, tuple | set):
        return list(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(value)


def read_stored_configs(metadata: Mapping[str, str]) -> dict | None:
    raw = metadata.get(CONFIGS_METADATA_KEY)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None
