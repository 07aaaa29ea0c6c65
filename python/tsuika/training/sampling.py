"""Sample pictures during training: a short DDIM run with the current model, as a grid.

Kept cheap (few steps, one picture per prompt) and side-effect free: it runs
in :func:`tsuika.torch_utils.isolated_eval`, so every module's mode and the
global RNG states are restored afterwards and sampling never changes what the
training run draws next. Like class pictures it goes through diffusers'
pipeline (DDIM); see :mod:`tsuika.generation.denoise` for why ``tsuika
generate`` has a loop of its own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tsuika.torch_utils import isolated_eval


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
    modules = [model.unet, model.text_encoder, model.vae]
    if model.text_encoder_2 is not None:
        modules.append(model.text_encoder_2)
    with isolated_eval(*modules, device=device):
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
            output_type="latent",
        )
        return decode_pictures(model, pipe, out.images)


def decode_pictures(model: Any, pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """Latents -> pictures with the VAE in its own dtype.

    The VAE may run in another dtype than the UNet (SDXL's stays float32 under fp16,
    see ``training.objective.vae_dtype``); diffusers' pipelines hand it the UNet's
    dtype, so the latents are decoded here, as the pipelines do otherwise.
    """
    vae = model.vae
    scaled = latents.to(vae.dtype) / vae.config.scaling_factor
    pixels = vae.decode(scaled).sample
    return list(pipe.image_processor.postprocess(pixels.float(), output_type="pil"))


def save_sample_grid(images: list[Image.Image], folder: Path, step: int) -> Path:
    """Write ``folder/step-{step}.png``; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step}.png"
    image_grid(images).save(path)
    return path
