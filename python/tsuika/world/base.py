"""The tiny world's pretrained Stable Diffusion, shipped in the package.

:func:`base_model_path` is the diffusers folder (fp16 safetensors) that
``python -m tsuika.world.pretrain`` writes; diffusers and transformers load it in
fp32 by default (the text encoder's config names float32), so
``StableDiffusionPipeline.from_pretrained(base_model_path())`` runs on the CPU; ``tsuika demo`` and the quality
bench train on it. :data:`HELD_OUT_SHAPES` never appeared in its pretraining.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .render import SHAPES

BASE_MODEL_DIR = Path(__file__).parent / "assets" / "tiny-sd"
INFO_FILE = "tsuika_world.json"
HELD_OUT_SHAPES = ("heart",)  # never in pretraining: the concept the demo teaches
PRETRAIN_SHAPES = tuple(s for s in SHAPES if s not in HELD_OUT_SHAPES)

__all__ = ["HELD_OUT_SHAPES", "PRETRAIN_SHAPES", "base_model_info", "base_model_path"]


def base_model_path() -> Path:
    """The folder of the tiny world's pretrained model (loads with ``load_base_model``)."""
    index = BASE_MODEL_DIR / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"{index}: the tiny world's pretrained model is missing from the package; "
            "rebuild it with `python -m tsuika.world.pretrain`"
        )
    return BASE_MODEL_DIR


def base_model_info() -> dict[str, Any]:
    """How the shipped model was pretrained (``tsuika_world.json``): steps, seconds, scores."""
    path = base_model_path() / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretraining record missing")
    return json.loads(path.read_text(encoding="utf-8"))
