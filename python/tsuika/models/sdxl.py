"""The SDXL model family: configs from tensor shapes, loading offline.

SDXL (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for
High-Resolution Image Synthesis"; Stability's ``sgm`` code) differs from SD
1.x/2.x where the loader sees it:

* a three-level UNet (no attention at the first level, 2 and 10 transformer
  blocks at the others in the base model) with ``text_time`` conditioning:
  ``add_embedding`` (original ``label_emb``) takes the pooled text embedding
  of encoder 2 next to six Fourier-embedded size/crop numbers, so
  ``projection_class_embeddings_input_dim = projection_dim + 6 * addition_time_embed_dim``
  (2816 = 1280 + 6 * 256 in the base model);
* two text encoders whose penultimate hidden states are concatenated for
  cross-attention (768 + 1280 = 2048), the second with a projection;
* a VAE with ``scaling_factor`` 0.13025.

Sizes come from the tensors (so narrow SDXL-shaped test models load through
the same code as SDXL base); what shapes cannot say comes from the configs
shipped in ``configs/sdxl`` (SDXL base 1.0's) or from the file's
``tsuika.configs`` metadata.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .base import BaseModel
from .derive import (
    ArchitectureError,
    _count,
    hf_text_config,
    openclip_text_config,
    shipped_config,
    unet_config,
    vae_config,
)
from .original_layout import UNET_PREFIX, gather, unet_key_map, vae_key_map
from .sdxl_layout import (
    TEXT1_PREFIX_SHORT,
    TEXT2_PREFIX,
    TEXT2_PROJECTION,
    gather_text1,
    gather_text2,
)
from .tokenizer import load_folder_tokenizer, load_sdxl_tokenizers

KIND = "sdxl"
TIME_IDS = 6  # original height, width; crop top, left; target height, width
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def attention_heads(channels: list[int]) -> list[int] | int:
    """UNet heads per level: SDXL's 64-wide heads (``num_head_channels: 64``), or for
    narrow models 8 heads where 8 divides every width (1 otherwise)."""
    if all(c % 64 == 0 for c in channels):
        return [c // 64 for c in channels]
    return 8 if all(c % 8 == 0 for c in channels) else 1


def _depths(state: Mapping[str, torch.Tensor], step: int, n_levels: int) -> list[int]:
    """Transformer blocks per level (1 where a level has no attention, as SDXL's config)."""
    p = re.escape(UNET_PREFIX)
    depths = []
    for i in range(n_levels):
        block = f"input_blocks\\.{1 + step * i}\\.1\\.transformer_blocks\\.(\\d+)\\."
        depths.append(max(1, _count(state, p + block)))
    middle = _count(state, p + r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    if middle and middle != depths[-1]:
        raise ArchitectureError(
            f"middle block has {middle} transformer blocks, the last level {depths[-1]}; "
            "diffusers' UNet needs them equal"
        )
    return depths


def sdxl_unet_config(state: Mapping[str, torch.Tensor], base: dict, pooled_dim: int) -> dict:
    """An SDXL UNet config: the SD rules of :func:`~tsuika.models.derive.unet_config`
    plus transformer depths and the ``text_time`` embedding sizes."""
    config = unet_config(state, base, KIND)
    channels = config["block_out_channels"]
    step = int(config["layers_per_block"]) + 1
    label = state.get(UNET_PREFIX + "label_emb.0.0.weight")
    if label is None:
        raise ArchitectureError("SDXL UNet without label_emb.0.0.weight (text_time embedding)")
    adm_in = int(label.shape[1])
    if (adm_in - pooled_dim) % TIME_IDS or adm_in <= pooled_dim:
        raise ArchitectureError(
            f"label_emb takes {adm_in} inputs, which is not the pooled text width "
            f"{pooled_dim} plus {TIME_IDS} equal time-id embeddings"
        )
    config.update(
        attention_head_dim=attention_heads(channels),
        transformer_layers_per_block=_depths(state, step, len(channels)),
        addition_embed_type="text_time",
        projection_class_embeddings_input_dim=adm_in,
        addition_time_embed_dim=(adm_in - pooled_dim) // TIME_IDS,
    )
    return config


def derive_sdxl_configs(
    state: Mapping[str, torch.Tensor], stored: Mapping | None
) -> dict[str, dict]:
    """Component configs for an SDXL file: stored ones when present, else derived."""
    if stored and all(name in stored for name in COMPONENTS):
        return {name: dict(stored[name]) for name in COMPONENTS}
    text2 = openclip_text_config(state, TEXT2_PREFIX, shipped_config(KIND, "text_encoder_2"))
    if TEXT2_PROJECTION not in state:
        raise ArchitectureError(f"SDXL file without {TEXT2_PROJECTION}")
    text2["projection_dim"] = int(state[TEXT2_PROJECTION].shape[1])
    return {
        "unet": sdxl_unet_config(state, shipped_config(KIND, "unet"), text2["projection_dim"]),
        "vae": vae_config(state, shipped_config(KIND, "vae")),
        "text_encoder": hf_text_config(
            state, TEXT1_PREFIX_SHORT, shipped_config(KIND, "text_encoder")
        ),
        "text_encoder_2": text2,
    }


def load_single_file(
    path: Path,
    state: dict[str, torch.Tensor],
    stored: Mapping | None,
    dtype: torch.dtype,
    prediction_type: str | None,
) -> BaseModel:
    """An SDXL :class:`BaseModel` from an original-layout state dict (already read)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
    )

    from .build import ddpm_scheduler, empty_module, fill_module, sidecar_prediction

    try:
        configs = derive_sdxl_configs(state, stored)
    except ArchitectureError as err:
        raise ArchitectureError(f"{path}: {err}") from err
    unet = empty_module(lambda: UNet2DConditionModel.from_config(configs["unet"]))
    unet_map = unet_key_map(unet.config, list(unet.state_dict()))
    fill_module(unet, gather(state, unet, unet_map, path), dtype)
    vae = empty_module(lambda: AutoencoderKL.from_config(configs["vae"]))
    fill_module(
        vae, gather(state, vae, vae_key_map(vae.config, list(vae.state_dict())), path), dtype
    )
    text1 = empty_module(lambda: CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])))
    fill_module(text1, gather_text1(state, text1, path), dtype)
    text2_config = CLIPTextConfig.from_dict(configs["text_encoder_2"])
    text2 = empty_module(lambda: CLIPTextModelWithProjection(text2_config))
    fill_module(text2, gather_text2(state, text2, path), dtype)
    prediction = (
        prediction_type
        or (stored or {}).get("prediction_type")
        or sidecar_prediction(path)
        or "epsilon"
    )
    tokenizer, tokenizer_2 = load_sdxl_tokenizers()
    return BaseModel(
        unet=unet,
        vae=vae,
        text_encoder=text1,
        tokenizer=tokenizer,
        scheduler=ddpm_scheduler(KIND, prediction),
        kind=KIND,
        prediction_type=prediction,
        source=path,
        text_encoder_2=text2,
        tokenizer_2=tokenizer_2,
    )


def is_sdxl_folder(path: Path) -> bool:
    """A diffusers folder with a second text encoder (``text_encoder_2/config.json``)."""
    return (path / "text_encoder_2" / "config.json").is_file()


def load_folder_encoder_2(path: Path, dtype: torch.dtype):
    """``text_encoder_2`` and ``tokenizer_2`` of an SDXL diffusers folder, offline."""
    from transformers import CLIPTextModelWithProjection

    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
        str(path), subfolder="text_encoder_2", local_files_only=True, dtype=dtype
    )
    return text_encoder_2.eval(), load_folder_tokenizer(path / "tokenizer_2")
