"""Load a Stable Diffusion base model or a VAE fully offline.

A base model is a diffusers folder (``model_index.json``) or a single
``.safetensors`` / ``.ckpt`` / ``.pt`` file in the original layout. Single
files are converted by tsuika's own key maps (:mod:`original_layout`) into
modules built from configs derived from the tensors' shapes
(:mod:`derive`), so narrow test models load through the same code as SD 1.5.
Nothing here touches the network: diffusers/transformers calls pass
``local_files_only=True`` and the tokenizer is built from open-clip-torch.

Prediction type (``"epsilon"`` | ``"v_prediction"``), first that applies:

1. the ``prediction_type`` argument;
2. a diffusers folder's scheduler config, or ``tsuika.configs`` metadata;
3. a sidecar ``<file>.yaml`` (A1111's convention) saying ``parameterization: "v"``;
4. SD 2.x full-size UNets (context 1024, widths 320/640/1280/1280):
   AUTOMATIC1111's probe (``is_using_v_parameterization_for_sd2``): feed
   x = 0.5, t = 999, context = 0.5 and call it v-prediction when
   ``mean(unet(x) - x) < -1`` — 768-class SD 2.x models (v) pass, 512-base
   (epsilon) ones do not;
5. otherwise epsilon.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import BaseModel
from .derive import (
    SHIPPED_KINDS,
    ArchitectureError,
    derive_configs,
    detect_kind,
    shipped_config,
    vae_config,
)
from .original_layout import (
    SD1_TEXT_PREFIX,
    SD1_TEXT_PREFIX_SHORT,
    VAE_PREFIX,
    gather,
    gather_sd2_text,
    sd1_text_key_map,
    unet_key_map,
    vae_key_map,
)
from .single_file import read_checkpoint, read_stored_configs
from .tokenizer import load_clip_tokenizer

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction")


class ModelLoadError(ValueError):
    """A model path that cannot be loaded; the message names the path."""


def _empty(build):
    """Build a module with parameters on the meta device (no random init cost)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def _fill(
    module: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype
) -> torch.nn.Module:
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    return module.eval()


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path not found: {path}")
    return path


def load_base_model(
    path: str | os.PathLike,
    *,
    vae: str | os.PathLike | None = None,
    kind: str | None = None,
    prediction_type: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> BaseModel:
    """Load an SD 1.x / 2.x model from a diffusers folder or a single file, offline.

    ``vae`` replaces the model's VAE (see :func:`load_vae`). ``kind`` (``"sd1"``
    / ``"sd2"``), when given, must agree with what the files say.
    """
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )
    path = _check_path(path)
    if path.is_dir():
        model = _load_diffusers_folder(path, dtype, prediction_type)
    else:
        model = _load_single_file(path, dtype, prediction_type)
    if kind is not None and kind != model.kind:
        raise ArchitectureError(f"{path}: expected a {kind} model, the files describe {model.kind}")
    if vae is not None:
        model.vae = load_vae(vae, dtype=dtype)
        model.vae_source = Path(vae)
    return model


def _scheduler(kind_config: str, prediction_type: str, folder: Path | None = None):
    from diffusers import DDPMScheduler

    if folder is not None:
        config = DDPMScheduler.load_config(
            str(folder), subfolder="scheduler", local_files_only=True
        )
    else:
        config = shipped_config(kind_config, "scheduler")
    return DDPMScheduler.from_config({**config, "prediction_type": prediction_type})


def _require_components(path: Path) -> None:
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"{path}: a folder model needs model_index.json (a diffusers folder)")
    needed = {
        "unet": "config.json",
        "vae": "config.json",
        "text_encoder": "config.json",
        "tokenizer": "vocab.json",
        "scheduler": "scheduler_config.json",
    }
    missing = [f"{c}/{f}" for c, f in needed.items() if not (path / c / f).is_file()]
    if missing:
        raise ModelLoadError(f"{path}: diffusers folder is missing {', '.join(missing)}")


def _load_diffusers_folder(
    path: Path, dtype: torch.dtype, prediction_type: str | None
) -> BaseModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    _require_components(path)
    common = {"local_files_only": True, "torch_dtype": dtype}
    unet = UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", **common)
    vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae", **common)
    text_encoder = CLIPTextModel.from_pretrained(
        str(path), subfolder="text_encoder", local_files_only=True, dtype=dtype
    )
    tokenizer = CLIPTokenizer.from_pretrained(
        str(path), subfolder="tokenizer", local_files_only=True
    )
    kind = "sd2" if text_encoder.config.hidden_act == "gelu" else "sd1"
    from diffusers import DDPMScheduler

    stored = DDPMScheduler.load_config(str(path), subfolder="scheduler", local_files_only=True)
    prediction = prediction_type or stored.get("prediction_type", "epsilon")
    return BaseModel(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=_scheduler("sd1", prediction, path),
        kind=kind,
        prediction_type=prediction,
        source=path,
    )


def _sidecar_prediction(path: Path) -> str | None:
    for candidate in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if candidate.is_file():
            text = candidate.read_text(errors="replace")
            if "parameterization" in text and ('"v"' in text or "'v'" in text or ": v" in text):
                return "v_prediction"
            return "epsilon"
    return None


def _probe_v_prediction(unet) -> bool:
    """AUTOMATIC1111's SD 2.x v-parameterization probe (see the module docstring)."""
    config = unet.config
    if config.cross_attention_dim != 1024 or list(config.block_out_channels) != [
        320,
        640,
        1280,
        1280,
    ]:
        return False
    param = next(unet.parameters())
    with torch.no_grad():
        x = torch.full((1, config.in_channels, 8, 8), 0.5, dtype=param.dtype)
        context = torch.full((1, 2, 1024), 0.5, dtype=param.dtype)
        out = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
    return float((out.float() - x.float()).mean()) < -1


def _load_single_file(path: Path, dtype: torch.dtype, prediction_type: str | None) -> BaseModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    state, metadata = read_checkpoint(path)
    kind = detect_kind(state, path)
    stored = read_stored_configs(metadata)
    configs = derive_configs(state, kind, "sd1" if kind == "sd1" else "sd2", stored)
    unet = _empty(lambda: UNet2DConditionModel.from_config(configs["unet"]))
    _fill(
        unet, gather(state, unet, unet_key_map(unet.config, list(unet.state_dict())), path), dtype
    )
    vae = _empty(lambda: AutoencoderKL.from_config(configs["vae"]))
    _fill(vae, gather(state, vae, vae_key_map(vae.config, list(vae.state_dict())), path), dtype)
    text_encoder = _empty(lambda: CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])))
    _fill(text_encoder, _gather_text(state, text_encoder, kind, path), dtype)
    prediction = (
        prediction_type
        or (stored or {}).get("prediction_type")
        or _sidecar_prediction(path)
        or ("v_prediction" if kind == "sd2" and _probe_v_prediction(unet) else "epsilon")
    )
    if kind == "sd2" and prediction == "v_prediction" and not stored:
        unet.register_to_config(**_sd2v_overrides(unet.config))
    return BaseModel(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(kind),
        scheduler=_scheduler("sd2-v" if prediction == "v_prediction" else kind, prediction),
        kind=kind,
        prediction_type=prediction,
        source=path,
    )


def _sd2v_overrides(config) -> dict:
    """768-class SD 2.x settings (sample size 96, upcast attention) for full-size UNets."""
    shipped = shipped_config("sd2-v", "unet")
    if list(config.block_out_channels) != shipped["block_out_channels"]:
        return {}
    return {"sample_size": shipped["sample_size"], "upcast_attention": shipped["upcast_attention"]}


def _gather_text(state, text_encoder, kind: str, path: Path) -> dict[str, torch.Tensor]:
    if kind == "sd2":
        return gather_sd2_text(state, text_encoder, path)
    key_map = sd1_text_key_map(list(text_encoder.state_dict()))
    aliases = ((SD1_TEXT_PREFIX, SD1_TEXT_PREFIX_SHORT),)  # files saved without `text_model.`
    return gather(state, text_encoder, key_map, path, aliases=aliases)


def load_vae(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32):
    """A VAE (``diffusers.AutoencoderKL``) from a diffusers folder or a single file.

    Single files may hold a whole model (``first_stage_model.*`` keys) or a bare
    VAE (``encoder.*`` / ``decoder.*``, as ``vae-ft-mse-840000-ema-pruned``).
    A diffusers folder may be the VAE folder itself or a model folder with ``vae/``.
    """
    from diffusers import AutoencoderKL

    path = _check_path(path)
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{path}: a VAE folder needs config.json (or vae/config.json)")
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
        return vae.eval()
    state, metadata = read_checkpoint(path)
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in state) else ""
    if prefix + "encoder.conv_in.weight" not in state:
        raise ArchitectureError(
            f"{path}: no VAE found (expected first_stage_model.encoder.* or encoder.* / decoder.* keys)"
        )
    stored = read_stored_configs(metadata)
    base = shipped_config("sd1", "vae")
    config = dict(stored["vae"]) if stored and "vae" in stored else vae_config(state, base, prefix)
    vae = _empty(lambda: AutoencoderKL.from_config(config))
    key_map = vae_key_map(vae.config, list(vae.state_dict()), prefix=prefix)
    return _fill(vae, gather(state, vae, key_map, path), dtype)


__all__ = ["ModelLoadError", "SHIPPED_KINDS", "COMPONENTS", "load_base_model", "load_vae"]
