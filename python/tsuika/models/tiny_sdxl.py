"""Tiny SDXL-shaped models with random weights, for tests.

The shape of SDXL base (``configs/sdxl``), only narrower: a UNet with three
levels, no attention at the first, ``transformer_layers_per_block`` 1/2/2
(base: 1/2/10), ``text_time`` conditioning; two CLIP text encoders, the second
with a projection (CLIPTextModelWithProjection, GELU like OpenCLIP), whose
widths concatenate to the cross-attention width; a VAE with SDXL's scaling
factor; both tokenizers (49408 tokens, the second padding with ``!``).

The second encoder's projection is deliberately not square
(``text_hidden_2`` -> ``projection_dim``), so a transposed ``text_projection``
cannot go unnoticed. Heads and GroupNorm groups come from the same rules the
loader uses on shapes (:func:`tsuika.models.sdxl.attention_heads`,
:func:`~tsuika.models.derive.groups_for`), so a file without stored configs
rebuilds the same modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import BaseModel
from .derive import groups_for
from .sdxl import KIND, TIME_IDS, attention_heads
from .tiny import SCHEDULER_CONFIG, tiny_text_config, tiny_vae_config
from .tokenizer import load_sdxl_tokenizers

SDXL_SCALING_FACTOR = 0.13025


def tiny_sdxl_unet_config(
    channels: Sequence[int],
    depths: Sequence[int],
    cross_attention_dim: int,
    pooled_dim: int,
    time_embed_dim: int,
    sample_size: int,
) -> dict[str, object]:
    n = len(channels)
    return {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": list(channels),
        "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
        "up_block_types": ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
        "transformer_layers_per_block": list(depths),
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": attention_heads(list(channels)),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": time_embed_dim,
        "projection_class_embeddings_input_dim": pooled_dim + TIME_IDS * time_embed_dim,
        "norm_num_groups": groups_for(list(channels)),
    }


def tiny_text_2_config(hidden: int, layers: int, projection_dim: int) -> dict[str, object]:
    """OpenCLIP-like: GELU, with a projection to ``projection_dim``."""
    return {
        **tiny_text_config(hidden, layers),
        "hidden_act": "gelu",
        "projection_dim": projection_dim,
    }


def build_tiny_sdxl_model(
    seed: int = 0,
    *,
    unet_channels: Sequence[int] = (32, 64, 64),
    transformer_depths: Sequence[int] = (1, 2, 2),
    text_hidden: int = 32,
    text_hidden_2: int = 64,
    projection_dim: int = 48,
    text_layers: int = 2,
    time_embed_dim: int = 8,
    vae_factor: int = 4,
    vae_channels: Sequence[int] = (32, 32, 64),
    image_size: int = 64,
    prediction_type: str = "epsilon",
) -> BaseModel:
    """A random-weight SDXL-shaped model (fp32, eval mode), deterministic in ``seed``.

    Cross-attention width is ``text_hidden + text_hidden_2`` (SDXL: 768 + 1280).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if len(transformer_depths) != len(unet_channels):
        raise ValueError(
            f"transformer_depths {tuple(transformer_depths)} needs one entry per UNet level "
            f"({len(unet_channels)})"
        )
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}"
        )
    unet_config = tiny_sdxl_unet_config(
        unet_channels,
        transformer_depths,
        text_hidden + text_hidden_2,
        projection_dim,
        time_embed_dim,
        max(1, image_size // vae_factor),
    )
    vae_config = {
        **tiny_vae_config(vae_factor, vae_channels, image_size),
        "scaling_factor": SDXL_SCALING_FACTOR,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(text_hidden, text_layers)))
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**tiny_text_2_config(text_hidden_2, text_layers, projection_dim))
        )
    scheduler = DDPMScheduler.from_config({**SCHEDULER_CONFIG, "prediction_type": prediction_type})
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    tokenizer, tokenizer_2 = load_sdxl_tokenizers()
    return BaseModel(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        kind=KIND,
        prediction_type=prediction_type,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )
