"""Pretraining data for the tiny world's Stable Diffusion: rendered scenes, their
pixels and their tokenised captions.

The held-out concept (:data:`HELD_OUT_SHAPES`) never appears: the demo and
``benches/quality.py`` teach it as a new concept. Every scene gets two
captions: the renderer's full one ("a red circle on a white background") and
a short one without the background ("a red circle"), so short prompts work.
Half the scenes are solid shapes (the style a prompt without a style word
asks for), the other half spread over all styles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import HELD_OUT_SHAPES, PRETRAIN_SHAPES
from .render import STYLE_PHRASES, Scene, background_pixels, caption, render, sample_scenes

__all__ = ["HELD_OUT_SHAPES", "PRETRAIN_SHAPES", "WorldData", "build_world_data", "short_caption"]


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


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's 77, as the pipeline tokenises prompts."""
    out = tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return out.input_ids


def build_world_data(n: int, seed: int, tokenizer) -> WorldData:
    """``n`` reproducible scenes of the pretraining shapes, rendered and tokenised."""
    solid = n // 2
    scenes = sample_scenes(solid, seed, shapes=PRETRAIN_SHAPES, styles=("solid",))
    scenes += sample_scenes(n - solid, seed + 1, shapes=PRETRAIN_SHAPES)
    pixels = np.stack([render(s) for s in scenes])
    bare = np.stack([background_pixels(s.background) for s in scenes])
    foreground = np.abs(pixels.astype(np.float32) - bare).max(axis=3) > 6.0
    pixels_t = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    full = tokenize(tokenizer, [caption(s) for s in scenes])
    short = tokenize(tokenizer, [short_caption(s) for s in scenes])
    empty = tokenize(tokenizer, [""])[0]
    return WorldData(
        scenes,
        pixels_t.contiguous(),
        torch.from_numpy(foreground)[:, None],
        torch.stack([full, short], dim=1),
        empty,
    )
