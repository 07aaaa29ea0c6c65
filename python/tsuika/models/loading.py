"""Load a Stable Diffusion base model or a VAE fully offline.

A base model is a diffusers folder (``model_index.json``) or a single
``.safetensors`` / ``.ckpt`` / ``.pt`` file in the original layout, of the
SD 1.x, SD 2.x or SDXL family (SDXL: :mod:`tsuika.models.sdxl`). Single
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

from tsuika.errors import TsuikaError

from .base import BaseModel
from .build import ddpm_scheduler, empty_module, fill_module, sidecar_prediction
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
from .tokenizer import load_clip_tokenizer, load_folder_tokenizer

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction")
FAMILIES = ("sd1", "sd2", "sdxl")
# What load_base_model accepts unless told more: the families every command
# (train, generate, merge) handles. SDXL is opt-in (families=FAMILIES) until they do.
SD_FAMILIES = ("sd1", "sd2")


class ModelLoadError(TsuikaError, ValueError):
    """A model path that cannot be loaded; the message names the path."""


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
    families: tuple[str, ...] = SD_FAMILIES,
) -> BaseModel:
    """Load an SD 1.x / 2.x / SDXL model from a diffusers folder or a single file, offline.

    ``vae`` replaces the model's VAE (see :func:`load_vae`). ``kind`` (``"sd1"``
    / ``"sd2"`` / ``"sdxl"``), when given, must agree with what the files say.
    ``families`` are the kinds the caller handles; another one is refused with an
    :class:`ArchitectureError` naming the file before any weights are read
    (pass ``families=FAMILIES`` to accept SDXL).
    """
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )
    path = _check_path(path)
    if path.is_dir():
        _check_family(_folder_kind(path), families, path)
        model = _load_diffusers_folder(path, dtype, prediction_type)
    else:
        model = _load_single_file(path, dtype, prediction_type, families)
    if kind is not None and kind != model.kind:
        raise ArchitectureError(f"{path}: expected a {kind} model, the files describe {model.kind}")
    if vae is not None:
        model.vae = load_vae(vae, dtype=dtype, kind=model.kind)
        model.vae_source = Path(vae)
    return model


def _folder_kind(path: Path) -> str | None:
    """``"sdxl"`` for a folder with ``text_encoder_2``; SD 1.x vs 2.x is told later."""
    from . import sdxl

    return sdxl.KIND if sdxl.is_sdxl_folder(path) else None


def _check_family(kind: str | None, families: tuple[str, ...], path: Path) -> None:
    if kind is not None and kind not in families:
        raise ArchitectureError(
            f"{path}: an {kind.upper()} model; this use of tsuika handles {', '.join(families)} "
            f"models only (SDXL loading is opt-in: families={FAMILIES})"
        )


# Each component's files; a component loads when one of its alternatives is complete.
# transformers 5 (and diffusers' save_pretrained with it) writes a tokenizer as
# tokenizer.json alone; transformers 4 and the hub's SD folders write vocab.json
# and merges.txt (often with tokenizer.json too).
TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (("tokenizer.json",), ("vocab.json", "merges.txt"))
COMPONENT_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "unet": (("config.json",),),
    "vae": (("config.json",),),
    "text_encoder": (("config.json",),),
    "tokenizer": TOKENIZER_FILES,
    "scheduler": (("scheduler_config.json",),),
}
SDXL_COMPONENT_FILES = {"text_encoder_2": (("config.json",),), "tokenizer_2": TOKENIZER_FILES}


def _missing_files(folder: Path, alternatives: tuple[tuple[str, ...], ...]) -> str | None:
    """None when one alternative is complete; otherwise every one, as ``a + b``."""
    if any(all((folder / name).is_file() for name in names) for names in alternatives):
        return None
    return " or ".join(" + ".join(f"{folder.name}/{n}" for n in names) for names in alternatives)


def _require_components(path: Path) -> None:
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"{path}: a folder model needs model_index.json (a diffusers folder)")
    needed = dict(COMPONENT_FILES)
    if (path / "text_encoder_2").is_dir():  # SDXL
        needed.update(SDXL_COMPONENT_FILES)
    missing = [
        gap
        for component, alternatives in needed.items()
        if (gap := _missing_files(path / component, alternatives)) is not None
    ]
    if missing:
        raise ModelLoadError(f"{path}: diffusers folder is missing {'; '.join(missing)}")


def _load_diffusers_folder(
    path: Path, dtype: torch.dtype, prediction_type: str | None
) -> BaseModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from . import sdxl

    _require_components(path)
    common = {"local_files_only": True, "torch_dtype": dtype}
    unet = UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", **common)
    vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae", **common)
    text_encoder = CLIPTextModel.from_pretrained(
        str(path), subfolder="text_encoder", local_files_only=True, dtype=dtype
    )
    tokenizer = load_folder_tokenizer(path / "tokenizer")
    kind = "sd2" if text_encoder.config.hidden_act == "gelu" else "sd1"
    text_encoder_2 = tokenizer_2 = None
    if sdxl.is_sdxl_folder(path):
        kind = sdxl.KIND
        text_encoder_2, tokenizer_2 = sdxl.load_folder_encoder_2(path, dtype)
    from diffusers import DDPMScheduler

    stored = DDPMScheduler.load_config(str(path), subfolder="scheduler", local_files_only=True)
    prediction = prediction_type or stored.get("prediction_type", "epsilon")
    return BaseModel(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=ddpm_scheduler("sd1", prediction, path),
        kind=kind,
        prediction_type=prediction,
        source=path,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


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


def _load_single_file(
    path: Path, dtype: torch.dtype, prediction_type: str | None, families: tuple[str, ...]
) -> BaseModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    state, metadata = read_checkpoint(path)
    kind = detect_kind(state, path)
    _check_family(kind, families, path)
    stored = read_stored_configs(metadata)
    if kind == "sdxl":  # a family of its own: two text encoders, text_time UNet
        from . import sdxl

        return sdxl.load_single_file(path, state, stored, dtype, prediction_type)
    configs = derive_configs(state, kind, "sd1" if kind == "sd1" else "sd2", stored)
    unet = empty_module(lambda: UNet2DConditionModel.from_config(configs["unet"]))
    fill_module(
        unet, gather(state, unet, unet_key_map(unet.config, list(unet.state_dict())), path), dtype
    )
    vae = empty_module(lambda: AutoencoderKL.from_config(configs["vae"]))
    fill_module(
        vae, gather(state, vae, vae_key_map(vae.config, list(vae.state_dict())), path), dtype
    )
    text_encoder = empty_module(
        lambda: CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"]))
    )
    fill_module(text_encoder, _gather_text(state, text_encoder, kind, path), dtype)
    prediction = (
        prediction_type
        or (stored or {}).get("prediction_type")
        or sidecar_prediction(path)
        or ("v_prediction" if kind == "sd2" and _probe_v_prediction(unet) else "epsilon")
    )
    if kind == "sd2" and prediction == "v_prediction" and not stored:
        unet.register_to_config(**_sd2v_overrides(unet.config))
    return BaseModel(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(kind),
        scheduler=ddpm_scheduler("sd2-v" if prediction == "v_prediction" else kind, prediction),
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


def load_vae(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, kind: str = "sd1"):
    """A VAE (``diffusers.AutoencoderKL``) from a diffusers folder or a single file.

    Single files may hold a whole model (``first_stage_model.*`` keys) or a bare
    VAE (``encoder.*`` / ``decoder.*``, as ``vae-ft-mse-840000-ema-pruned``).
    A diffusers folder may be the VAE folder itself or a model folder with ``vae/``.
    ``kind`` is the model family the VAE is for: a single file without stored
    configs takes that family's latent scaling factor (SDXL 0.13025, else 0.18215).
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
    base = shipped_config("sdxl" if kind == "sdxl" else "sd1", "vae")
    config = dict(stored["vae"]) if stored and "vae" in stored else vae_config(state, base, prefix)
    vae = empty_module(lambda: AutoencoderKL.from_config(config))
    key_map = vae_key_map(vae.config, list(vae.state_dict()), prefix=prefix)
    return fill_module(vae, gather(state, vae, key_map, path), dtype)


__all__ = [
    "COMPONENTS",
    "FAMILIES",
    "SHIPPED_KINDS",
    "SD_FAMILIES",
    "ModelLoadError",
    "load_base_model",
    "load_vae",
]
