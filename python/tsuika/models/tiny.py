"""Tiny Stable Diffusion models with random weights, for tests and the tiny world.

They follow SD 1.x's shape (UNet: cross-attention down blocks then a plain
one, a plain up block then cross-attention ones, 2 layers each; VAE: one
block per factor of two plus one, 2 layers each unless told; CLIP text model
with the real 49408-token tokenizer), only narrower, so every path that
handles real checkpoints (original single-file layout, A1111 key rules) runs
on them. GroupNorm groups come from :func:`~tsuika.models.derive.groups_for`
(never fewer than 4 channels a group).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import BaseModel
from .derive import groups_for, text_heads
from .tokenizer import load_clip_tokenizer

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
SCHEDULER_CONFIG = {
    **SD_BETAS,
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def tiny_unet_config(
    channels: Sequence[int], cross_attention_dim: int, sample_size: int
) -> dict[str, object]:
    n = len(channels)
    return {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": list(channels),
        "down_block_types": ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1),
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 8,  # diffusers' legacy meaning: 8 heads, as SD 1.x
        "norm_num_groups": groups_for(list(channels)),
    }


def tiny_vae_config(
    vae_factor: int, channels: Sequence[int], sample_size: int, layers_per_block: int = 2
) -> dict[str, object]:
    n_blocks = int(math.log2(vae_factor)) + 1
    if 2 ** (n_blocks - 1) != vae_factor:
        raise ValueError(f"vae_factor must be a power of two, got {vae_factor}")
    chans = [channels[min(i, len(channels) - 1)] for i in range(n_blocks)]
    return {
        "sample_size": sample_size,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": layers_per_block,
        "block_out_channels": chans,
        "down_block_types": ["DownEncoderBlock2D"] * n_blocks,
        "up_block_types": ["UpDecoderBlock2D"] * n_blocks,
        "norm_num_groups": groups_for(chans),
        "scaling_factor": 0.18215,
    }


def tiny_text_config(hidden: int, layers: int) -> dict[str, object]:
    return {
        "vocab_size": 49408,
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_attention_heads": text_heads(hidden),
        "num_hidden_layers": layers,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }


def build_tiny_model(
    seed: int = 0,
    *,
    vae_factor: int = 8,
    unet_channels: Sequence[int] = (32, 32, 64, 64),
    cross_attention_dim: int = 32,
    text_hidden: int = 32,
    text_layers: int = 2,
    prediction_type: str = "epsilon",
    vae_channels: Sequence[int] = (32, 32, 64, 64),
    vae_layers: int = 2,
    image_size: int = 64,
) -> BaseModel:
    """A random-weight SD 1.x-shaped model (fp32, eval mode), deterministic in ``seed``.

    ``cross_attention_dim`` must equal ``text_hidden`` for the text encoder's
    output to feed the UNet; it is checked.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if cross_attention_dim != text_hidden:
        raise ValueError(
            f"cross_attention_dim ({cross_attention_dim}) must equal text_hidden ({text_hidden})"
        )
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}"
        )
    latent = max(1, image_size // vae_factor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config(unet_channels, cross_attention_dim, latent))
        vae = AutoencoderKL(**tiny_vae_config(vae_factor, vae_channels, image_size, vae_layers))
        text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(text_hidden, text_layers)))
    scheduler = DDPMScheduler.from_config({**SCHEDULER_CONFIG, "prediction_type": prediction_type})
    for module in (unet, vae, text_encoder):
        module.eval()
    return BaseModel(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer("sd1"),
        scheduler=scheduler,
        kind="sd1",
        prediction_type=prediction_type,
    )
