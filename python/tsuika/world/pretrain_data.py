"""Pretraining data for the tiny world's Stable Diffusion: rendered scenes, their
pixels and their tokenised captions.

The held-out concept (:data:`HELD_OUT_SHAPES`) never appears: the demo and
``benches/quality.py`` teach it as a new concept. Every scene gets two
captions: the renderer's full one ("a red circle on a white background") and
a short one without the background ("a red circle"), so short prompts work.
Half the scenes are solid, upright shapes (the style a prompt without a style
word asks for; rotation within :data:`SOLID_MAX_ROTATION` degrees, so "a blue
square" has one clear look to learn), the other half spread over all styles
and the renderer's full rotation range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tsuika.models.tokenizer import prompt_ids

from .base import HELD_OUT_SHAPES, PRETRAIN_SHAPES
from .evaluator import to_model_input
from .render import STYLE_PHRASES, Scene, background_pixels, caption, render, sample_scenes

SOLID_MAX_ROTATION = 0.0

__all__ = [
    "HELD_OUT_SHAPES",
    "PRETRAIN_SHAPES",
    "SOLID_MAX_ROTATION",
    "WorldData",
    "build_world_data",
    "short_caption",
]


def short_caption(scene: Scene) -> str:
    """The caption without the background: ``"a red circle with stripes"``."""
    article = "an" if scene.colour[0] in "aeiou" else "a"
    return f"{article} {scene.colour} {scene.shape}{STYLE_PHRASES[scene.style]}"


@dataclass
class WorldData:
    """``pixels`` float32 [N, 3, 64, 64] in [-1, 1]; ``foreground`` bool [N, 1, 64, 64]
    (pixels that differ from the bare background: the shape); ``ids`` int64
    [N, 2, 77] (full, short caption); ``empty`` int64 [77] (the empty prompt,
    for caption dropout)."""

    scenes: list[Scene]
    pixels: torch.Tensor
    foreground: torch.Tensor
    ids: torch.Tensor
    empty: torch.Tensor


def build_world_data(n: int, seed: int, tokenizer) -> WorldData:
    """``n`` reproducible scenes of the pretraining shapes, rendered and tokenised."""
    solid = n // 2
    scenes = sample_scenes(
        solid, seed, shapes=PRETRAIN_SHAPES, styles=("solid",), max_rotation=SOLID_MAX_ROTATION
    )
    scenes += sample_scenes(n - solid, seed + 1, shapes=PRETRAIN_SHAPES)
    pixels = np.stack([render(s) for s in scenes])
    bare = np.stack([background_pixels(s.background) for s in scenes])
    foreground = np.abs(pixels.astype(np.float32) - bare).max(axis=3) > 6.0
    full = prompt_ids(tokenizer, [caption(s) for s in scenes])
    short = prompt_ids(tokenizer, [short_caption(s) for s in scenes])
    empty = prompt_ids(tokenizer, [""])[0]
    return WorldData(
        scenes,
        to_model_input(pixels),
        torch.from_numpy(foreground)[:, None],
        torch.stack([full, short], dim=1),
        empty,
    )
