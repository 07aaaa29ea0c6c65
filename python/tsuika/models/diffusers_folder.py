"""Write a :class:`BaseModel` as a diffusers folder (safetensors weights).

The folder loads with :func:`tsuika.models.load_base_model` and with
``diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)``
(SDXL models: ``StableDiffusionXLPipeline``, with ``text_encoder_2`` and
``tokenizer_2``). It is written into a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .base import BaseModel
from .tokenizer import PAD_TOKENS, SDXL_PAD_TOKEN_2, copy_tokenizer_files


def _model_index(model: BaseModel) -> dict[str, object]:
    import diffusers

    index: dict[str, object] = {
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
    if model.text_encoder_2 is not None:  # SDXL base's model_index.json
        for key in ("feature_extractor", "requires_safety_checker", "safety_checker"):
            del index[key]
        index.update(
            _class_name="StableDiffusionXLPipeline",
            force_zeros_for_empty_prompt=True,
            text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
            tokenizer_2=["transformers", "CLIPTokenizer"],
        )
    return index


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
        if model.text_encoder_2 is not None:
            model.text_encoder_2.save_pretrained(
                staging / "text_encoder_2", safe_serialization=True
            )
            _save_tokenizer(model, staging / "tokenizer_2", second=True)
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


def _save_tokenizer(model: BaseModel, destination: Path, *, second: bool = False) -> None:
    """The model's tokenizer (``second``: SDXL's ``tokenizer_2``); the stock files
    when it is the unmodified CLIP one."""
    tokenizer = model.tokenizer_2 if second else model.tokenizer
    if len(tokenizer) == 49408:
        pad = SDXL_PAD_TOKEN_2 if second else PAD_TOKENS.get(model.kind, PAD_TOKENS["sd1"])
        copy_tokenizer_files(destination, pad_token=pad)
    else:  # e.g. textual inversion added tokens: keep them
        tokenizer.save_pretrained(str(destination))
