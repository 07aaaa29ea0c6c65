"""Which model family a ``--model`` path holds, read from configs and headers, never weights.

A diffusers folder: ``unet/config.json`` (SDXL's UNet has ``addition_embed_type =
"text_time"``), ``text_encoder/config.json`` (SD 2.x's OpenCLIP uses ``gelu``,
SD 1.x's CLIP ``quick_gelu``; the same test as :mod:`tsuika.models.loading`) and
``vae/config.json`` (the VAE's downscale factor). A ``.safetensors`` file: its
header's tensor names and one shape (:func:`tsuika.models.derive.detect_kind`'s
markers; SDXL's ``conditioner.embedders.``), and the native size from the configs
tsuika stores in the header when there are any (else the family's: 512, 768, 1024). A pickled ``.ckpt``/``.pt`` cannot be read without unpickling it, so
it is read through :func:`tsuika.models.read_checkpoint` (safe loader).

``width`` is the UNet's first block width (320 for every SD family): narrow
test models such as the tiny world's train at other learning rates and batch
sizes (see :mod:`tsuika.recommend.rules`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import RecommendError
from .rules import FAMILIES

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SD2_TEXT = "cond_stage_model.model."
SDXL_MARKERS = ("conditioner.embedders.", "model.diffusion_model.label_emb.")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelFacts:
    """What recommend needs from the base model: family, native resolution, UNet width."""

    path: Path | None
    family: str
    resolution: int
    width: int
    source: str  # how the family was found, printed with it

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path) if self.path else None
        return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecommendError(f"{path}: missing; a diffusers model folder needs it") from None
    except (OSError, ValueError) as exc:
        raise RecommendError(f"{path}: cannot read it as JSON ({exc})") from None


def _from_folder(path: Path) -> ModelFacts:
    unet = _read_json(path / "unet" / "config.json")
    text = _read_json(path / "text_encoder" / "config.json")
    vae = _read_json(path / "vae" / "config.json")
    if unet.get("addition_embed_type") == "text_time":
        family = "sdxl"
    else:
        family = "sd2" if text.get("hidden_act") == "gelu" else "sd1"
    factor = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    resolution = int(unet.get("sample_size", 64)) * factor
    width = int(unet.get("block_out_channels", [320])[0])
    return ModelFacts(path, family, resolution, width, "diffusers folder configs")


def _keys_and_width(path: Path) -> tuple[list[str], int | None, dict[str, str]]:
    """Tensor names, the UNet's first width and the header's metadata (no weights read)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                width = f.get_slice(UNET_IN).get_shape()[0] if UNET_IN in keys else None
                metadata = f.metadata() or {}
        except Exception as exc:  # a broken header: name the file
            raise RecommendError(f"{path}: not a readable safetensors file ({exc})") from None
        return keys, width, metadata
    from tsuika.models import read_checkpoint

    try:
        state, metadata = read_checkpoint(path)
    except (ValueError, OSError) as exc:
        raise RecommendError(str(exc)) from None
    return list(state), (int(state[UNET_IN].shape[0]) if UNET_IN in state else None), metadata


def _stored_resolution(metadata: dict[str, str]) -> int | None:
    """The native size from the configs tsuika stores in a single file's header, if any."""
    from tsuika.models.single_file import read_stored_configs

    configs = read_stored_configs(metadata) or {}
    unet, vae = configs.get("unet"), configs.get("vae")
    if not isinstance(unet, dict) or not isinstance(vae, dict):
        return None
    try:
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        return int(unet["sample_size"]) * factor
    except (KeyError, TypeError, ValueError):
        return None


def _from_file(path: Path) -> ModelFacts:
    keys, width, metadata = _keys_and_width(path)
    if any(k.startswith(SDXL_MARKERS) for k in keys):
        family = "sdxl"
    elif width is None:
        raise RecommendError(
            f"{path}: not a Stable Diffusion checkpoint (no {UNET_IN} among {len(keys)} tensors)"
        )
    else:
        family = "sd2" if any(k.startswith(SD2_TEXT) for k in keys) else "sd1"
    stored = _stored_resolution(metadata)
    source = "single-file tensor names" + (", stored configs" if stored else "")
    resolution = stored or FAMILIES[family].resolution
    return ModelFacts(path, family, resolution, width or 320, source)


def inspect_model(path: str | Path | None) -> ModelFacts:
    """The family of ``path`` (a diffusers folder or a single file); SD 1.x when none is given."""
    if path is None:
        return ModelFacts(None, "sd1", FAMILIES["sd1"].resolution, 320, "assumed (no --model)")
    path = Path(path)
    if not path.exists():
        raise RecommendError(f"{path}: model not found (a diffusers folder or a .safetensors file)")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise RecommendError(
                f"{path}: a folder model needs model_index.json (a diffusers folder)"
            )
        return _from_folder(path.resolve())
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise RecommendError(
            f"{path}: unknown model file type {path.suffix!r}; "
            f"expected a diffusers folder or one of {', '.join(SINGLE_FILE_SUFFIXES)}"
        )
    return _from_file(path.resolve())
