"""The sampling loop: prompts -> text states -> denoised latents, with classifier-free guidance.

Per-picture seeds: picture ``i`` starts from noise drawn by its own
generator seeded ``seed + i`` (A1111's batch rule), and ancestral samplers
draw each picture's step noise from that same generator, so a picture does
not depend on the batch it was made in.

Guidance: ``uncond + cfg * (cond - uncond)`` (Ho & Salimans 2022,
"Classifier-Free Diffusion Guidance"); ``cfg == 1`` skips the unconditional
pass.

Why ``tsuika generate`` has this loop while sample grids and class pictures
go through diffusers' ``StableDiffusionPipeline`` (:mod:`tsuika.models.pipeline`):
here the latents and every sampler step stay in float32 while only the UNet
runs in the model's dtype (as A1111 does), and the multistep and ancestral
samplers of :mod:`.samplers` need that in fp16; the pipeline keeps its
latents in the UNet's dtype. The previews and class pictures are DDIM only,
where that makes no visible difference, and the pipeline is what a diffusers
user gets from the same weights. Moving them onto this loop would change
their pixels; that is a choice for later, not an accident.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tsuika.models.base import BaseModel
from tsuika.models.tokenizer import prompt_ids
from tsuika.torch_utils import seed_generators, seeded_noise

from .samplers import build_scheduler


@torch.no_grad()
def encode_prompts(model: BaseModel, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """CLIP states ``[B, 77, dim]`` (prompts past the tokenizer's length are truncated)."""
    ids = prompt_ids(model.tokenizer, prompts).to(device)
    return model.text_encoder(ids)[0]


@dataclass(frozen=True)
class PromptStates:
    """What the UNet is conditioned on for some prompts: the text states ``[B, 77, dim]``
    and, for SDXL, encoder 2's pooled projection ``[B, P]``."""

    states: torch.Tensor
    pooled: torch.Tensor | None = None

    def repeat(self, n: int) -> PromptStates:
        """One prompt's states for ``n`` pictures."""
        pooled = None if self.pooled is None else self.pooled.expand(n, -1)
        return PromptStates(self.states.expand(n, -1, -1), pooled)


@torch.no_grad()
def _sdxl_states(model: BaseModel, prompts: Sequence[str], device: torch.device) -> PromptStates:
    """SDXL: both encoders' penultimate states concatenated, encoder 2's pooled projection
    (as ``StableDiffusionXLPipeline.encode_prompt`` and training's conditioning)."""
    states = []
    for tokenizer, encoder in (
        (model.tokenizer, model.text_encoder),
        (model.tokenizer_2, model.text_encoder_2),
    ):
        out = encoder(prompt_ids(tokenizer, prompts).to(device), output_hidden_states=True)
        states.append(out.hidden_states[-2])
    return PromptStates(torch.cat(states, dim=-1), out.text_embeds)


def _sd_states(model: BaseModel, prompts: Sequence[str], device: torch.device) -> PromptStates:
    return PromptStates(encode_prompts(model, prompts, device))


# BaseModel.kind -> prompts -> PromptStates (SD 1.x / 2.x: the last hidden state)
PROMPT_ENCODERS: dict[str, Callable[[BaseModel, Sequence[str], torch.device], PromptStates]] = {
    "sdxl": _sdxl_states,
}


def encode_prompt_states(
    model: BaseModel, prompts: Sequence[str], device: torch.device
) -> PromptStates:
    """The UNet's text conditioning for ``prompts`` in ``model``'s family."""
    return PROMPT_ENCODERS.get(model.kind, _sd_states)(model, prompts, device)


def _added_conditions(
    cond: PromptStates, uncond: PromptStates, guided: bool, pixels: tuple[int, int], dtype
) -> dict:
    """SDXL's ``added_cond_kwargs``: pooled embeds and the time ids of an uncropped
    picture at its own size (original = target = ``pixels``, crop (0, 0)); ``{}`` for SD."""
    if cond.pooled is None or uncond.pooled is None:
        return {}
    pooled = torch.cat([uncond.pooled, cond.pooled]) if guided else cond.pooled
    height, width = pixels
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype)
    time_ids = ids.to(pooled.device).expand(pooled.shape[0], -1)
    return {"added_cond_kwargs": {"text_embeds": pooled.to(dtype), "time_ids": time_ids}}


def initial_noise(shape: Sequence[int], seeds: Sequence[int]) -> tuple[torch.Tensor, list]:
    """``[len(seeds), *shape]`` standard normal noise, one CPU generator per picture;
    the generators are returned too, for the ancestral samplers' step noise."""
    generators = seed_generators(seeds)
    return seeded_noise(shape, generators), generators


def _step_kwargs(scheduler, generators: list) -> dict:
    return (
        {"generator": generators}
        if "generator" in inspect.signature(scheduler.step).parameters
        else {}
    )


@torch.no_grad()
def denoise(
    model: BaseModel,
    cond: PromptStates,
    uncond: PromptStates,
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
    context = torch.cat([uncond.states, cond.states]) if guided else cond.states
    pixels = (latent_size[0] * model.vae_scale_factor, latent_size[1] * model.vae_scale_factor)
    added = _added_conditions(cond, uncond, guided, pixels, param.dtype)
    extra = _step_kwargs(scheduler, generators)
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents, t)
        x = torch.cat([x, x]) if guided else x
        out = unet(
            x.to(param.dtype), t, encoder_hidden_states=context.to(param.dtype), **added
        ).sample
        out = out.float()
        if guided:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + cfg * (out_cond - out_uncond)
        latents = scheduler.step(out, t, latents, **extra).prev_sample
    return latents
