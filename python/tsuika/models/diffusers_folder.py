"""Write a :class:`BaseModel` as a diffusers folder (safetensors weights).

The folder loads with :func:`tsuika.models.load_base_model` and with
``diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)``.
It is written into a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .base import BaseModel
from .tokenizer import PAD_TOKENS, copy_tokenizer_files


def _model_index(model: BaseModel) -> dict[str, object]:
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", type(model.scheduler).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def save_diffusers(model: BaseModel, folder: str | os.PathLike) -> Path:
    """Write ``model`` as a diffusers folder at ``folder`` (replaced if it exists)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.unet.save_pretrained(staging / "unet", safe_serialization=True)
        model.vae.save_pretrained(staging / "vae", safe_serialization=True)
        model.text_encoder.save_pretrained(staging / "text_encoder", safe_serialization=True)
        model.scheduler.save_pretrained(staging / "scheduler")
        _save_tokenizer(model, staging / "tokenizer")
        (staging / "model_index.json").write_text(json.dumps(_model_index(model), indent=2))
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, old / folder.name)
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _save_tokenizer(model: BaseModel, destination: Path) -> None:
    """The model's tokenizer; the stock files when it is the unmodified CLIP one."""
    if len(model.tokenizer) == 49408:
        copy_tokenizer_files(destination, pad_token=PAD_TOKENS.get(model.kind, PAD_TOKENS["sd1"]))
    else:  # e.g. textual inversion added tokens: keep them
        model.tokenizer.save_pretrained(str(destination))
