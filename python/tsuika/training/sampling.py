"""Sample pictures during training: a short DDIM run with the current model, as a grid.

Kept cheap (few steps, one picture per prompt) and side-effect free: the
global RNG states are restored afterwards so sampling never changes what the
training run draws next.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image


def image_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Paste equally sized pictures into a grid (row-major)."""
    if not images:
        raise ValueError("image_grid needs at least one picture")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), (0, 0, 0))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


def sample_pictures(
    model: Any,
    prompts: list[str],
    *,
    width: int,
    height: int,
    steps: int,
    cfg: float,
    seed: int,
    negative_prompt: str = "",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[Image.Image]:
    """One picture per prompt from ``model`` (a BaseModel whose modules carry the adapter)."""
    from tsuika.models.pipeline import ddim_pipeline

    pipe = ddim_pipeline(model)
    modules = (model.unet, model.text_encoder, model.vae)
    modes = [m.training for m in modules]
    devices = ["cuda"] if torch.cuda.is_available() else []
    try:
        for m in modules:
            m.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            generator = torch.Generator(device="cpu").manual_seed(seed)
            scale = model.vae_scale_factor
            latents = torch.randn(
                (len(prompts), model.unet.config.in_channels, height // scale, width // scale),
                generator=generator,
            ).to(device, dtype)
            out = pipe(
                prompts,
                negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=cfg,
                latents=latents,
                output_type="pil",
            )
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
    return list(out.images)


def save_sample_grid(images: list[Image.Image], folder: Path, step: int) -> Path:
    """Write ``folder/step-{step}.png``; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step}.png"
    image_grid(images).save(path)
    return path
