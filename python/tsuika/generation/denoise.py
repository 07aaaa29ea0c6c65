"""The sampling loop: prompts -> text states -> denoised latents, with classifier-free guidance.

Per-picture seeds: picture ``i`` starts from noise drawn by its own
generator seeded ``seed + i`` (A1111's batch rule), and ancestral samplers
draw each picture's step noise from that same generator, so a picture does
not depend on the batch it was made in.

Guidance: ``uncond + cfg * (cond - uncond)`` (Ho & Salimans 2022,
"Classifier-Free Diffusion Guidance"); ``cfg == 1`` skips the unconditional
pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from tsuika.models.base import BaseModel
from tsuika.models.tokenizer import prompt_ids

from .samplers import build_scheduler


@torch.no_grad()
def encode_prompts(model: BaseModel, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """CLIP states ``[B, 77, dim]`` (prompts past the tokenizer's length are truncated)."""
    ids = prompt_ids(model.tokenizer, prompts).to(device)
    return model.text_encoder(ids)[0]


def initial_noise(shape: Sequence[int], seeds: Sequence[int]) -> tuple[torch.Tensor, list]:
    """``[len(seeds), *shape]`` standard normal noise, one CPU generator per picture."""
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])
    return noise, generators


def _step_kwargs(scheduler, generators: list) -> dict:
    return (
        {"generator": generators}
        if "generator" in inspect.signature(scheduler.step).parameters
        else {}
    )


@torch.no_grad()
def denoise(
    model: BaseModel,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    seeds: Sequence[int],
    *,
    latent_size: tuple[int, int],
    steps: int,
    cfg: float,
    sampler: str,
) -> torch.Tensor:
    """Latents for each seed, denoised in ``steps`` steps of ``sampler``."""
    unet = model.unet
    param = next(unet.parameters())
    scheduler = build_scheduler(sampler, model.scheduler.config)
    scheduler.set_timesteps(steps, device=param.device)
    channels = unet.config.in_channels
    noise, generators = initial_noise((channels, *latent_size), seeds)
    latents = (noise * scheduler.init_noise_sigma).to(param.device, torch.float32)
    guided = cfg != 1.0
    context = torch.cat([uncond, cond]) if guided else cond
    extra = _step_kwargs(scheduler, generators)
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents, t)
        x = torch.cat([x, x]) if guided else x
        out = unet(x.to(param.dtype), t, encoder_hidden_states=context.to(param.dtype)).sample
        out = out.float()
        if guided:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + cfg * (out_cond - out_uncond)
        latents = scheduler.step(out, t, latents, **extra).prev_sample
    return latents
