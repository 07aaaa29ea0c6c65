"""Detect a single-file checkpoint's architecture and derive diffusers configs from its shapes.

Detection (original layout keys):

* SD 1.x: ``cond_stage_model.transformer.*`` (OpenAI CLIP, HF names);
* SD 2.x: ``cond_stage_model.model.*`` (OpenCLIP);
* SDXL: ``conditioner.embedders.*`` / ``model.diffusion_model.label_emb.*``
  (CLIP ViT-L at ``embedders.0.transformer``, OpenCLIP ViT-bigG at
  ``embedders.1.model``; configs in :mod:`tsuika.models.sdxl`);
* anything else (an SDXL refiner, a partial file) raises :class:`ArchitectureError`
  naming the file and what was found.

Sizes (channels, blocks, layers, context width, text width/depth, VAE factor)
come from tensor shapes, so narrow test models load through the same code.
What shapes cannot tell (attention heads, group-norm groups, activation, sample
size) comes, in order, from configs stored in the file's metadata by
:func:`tsuika.models.save_single_file`, else from the shipped config of the
detected kind, adjusted where it cannot fit the shapes (heads and groups are
chosen to divide the widths, as in :mod:`tsuika.models.tiny`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch

from tsuika.errors import TsuikaError

from .original_layout import SD1_TEXT_PREFIX_SHORT, SD2_TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX
from .sdxl_layout import TEXT1_PREFIX_SHORT, TEXT2_PREFIX

SHIPPED_KINDS = ("sd1", "sd2", "sd2-v", "sdxl")
SDXL_MARKERS = ("conditioner.embedders.", UNET_PREFIX + "label_emb.")


class ArchitectureError(TsuikaError, ValueError):
    """A checkpoint that is not an SD 1.x / 2.x model in the original layout."""


def shipped_config_dir(name: str) -> Path:
    """The folder of shipped diffusers component configs (``sd1``, ``sd2``, ``sd2-v``, ``sdxl``)."""
    if name not in SHIPPED_KINDS:
        raise ValueError(f"no shipped config {name!r}; expected one of {SHIPPED_KINDS}")
    return Path(str(resources.files("tsuika.models") / "configs" / name))


def shipped_config(name: str, component: str) -> dict:
    filename = "scheduler_config.json" if component == "scheduler" else "config.json"
    path = shipped_config_dir(name) / component / filename
    return json.loads(path.read_text())


def _prefixes(state: Mapping[str, torch.Tensor], depth: int = 2) -> list[str]:
    return sorted({".".join(k.split(".")[:depth]) for k in state})[:8]


def _check_sdxl(state: Mapping[str, torch.Tensor], source: object) -> str:
    parts = {
        "UNet (model.diffusion_model.*)": UNET_PREFIX + "input_blocks.0.0.weight" in state,
        "VAE (first_stage_model.*)": any(k.startswith(VAE_PREFIX) for k in state),
        "text encoder 1 (conditioner.embedders.0.transformer.*)": any(
            k.startswith(TEXT1_PREFIX_SHORT) for k in state
        ),
        "text encoder 2 (conditioner.embedders.1.model.*)": any(
            k.startswith(TEXT2_PREFIX) for k in state
        ),
    }
    missing = [name for name, found in parts.items() if not found]
    if not missing:
        return "sdxl"
    refiner = any(k.startswith("conditioner.embedders.0.model.") for k in state)
    hint = " (an SDXL refiner? only SDXL base-shaped models are supported)" if refiner else ""
    raise ArchitectureError(
        f"{source}: not a complete SDXL checkpoint{hint}: missing {', '.join(missing)}; "
        f"found {len(state)} tensors under {', '.join(_prefixes(state)) or 'nothing'}"
    )


def detect_kind(state: Mapping[str, torch.Tensor], source: object) -> str:
    """``"sd1"``, ``"sd2"`` or ``"sdxl"`` from the keys, or a clear :class:`ArchitectureError`."""
    if any(k.startswith(SDXL_MARKERS) for k in state):
        return _check_sdxl(state, source)
    has_unet = UNET_PREFIX + "input_blocks.0.0.weight" in state
    has_vae = any(k.startswith(VAE_PREFIX) for k in state)
    sd2 = any(k.startswith(SD2_TEXT_PREFIX) for k in state)
    sd1 = any(k.startswith(SD1_TEXT_PREFIX_SHORT) for k in state)
    if not (has_unet and has_vae and (sd1 or sd2)):
        parts = {
            "UNet (model.diffusion_model.*)": has_unet,
            "VAE (first_stage_model.*)": has_vae,
            "text encoder (cond_stage_model.*)": sd1 or sd2,
        }
        missing = ", ".join(name for name, found in parts.items() if not found)
        raise ArchitectureError(
            f"{source}: not a Stable Diffusion 1.x/2.x checkpoint: missing {missing}; "
            f"found {len(state)} tensors under {', '.join(_prefixes(state)) or 'nothing'}"
        )
    return "sd2" if sd2 else "sd1"


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.match(k))})


def groups_for(channels: list[int], preferred: int = 32, min_group: int = 4) -> int:
    """GroupNorm groups for these widths: ``preferred`` when it divides every width
    with at least ``min_group`` channels per group (SD: 32 groups of 10+), else the
    largest common divisor that still leaves ``min_group`` channels per group.

    Groups of one channel would be instance norm, which erases each channel's
    mean over the picture (its colour): narrow models must not get them.
    """
    narrowest = min(channels)
    if all(c % preferred == 0 for c in channels) and narrowest // preferred >= min_group:
        return preferred
    common = 0
    for c in channels:
        common = math.gcd(common, c)
    cap = max(1, min(preferred, narrowest // min_group))
    return max(g for g in range(1, cap + 1) if common % g == 0)


def text_heads(hidden: int) -> int:
    """Attention heads for a CLIP text width: 64-wide heads, or 16-wide for narrow models."""
    return hidden // 64 if hidden % 64 == 0 else max(1, hidden // 16)


def unet_config(state: Mapping[str, torch.Tensor], base: dict, kind: str) -> dict:
    p = UNET_PREFIX
    n_inputs = _count(state, re.escape(p) + r"input_blocks\.(\d+)\.")
    ops = sorted(
        int(m.group(1))
        for k in state
        if (m := re.match(re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight$", k))
    )
    step = ops[0] if ops else n_inputs  # layers_per_block + 1
    layers = step - 1
    n_blocks = len(ops) + 1
    channels = [
        int(state[f"{p}input_blocks.{1 + step * i}.0.out_layers.3.weight"].shape[0])
        for i in range(n_blocks)
    ]
    down_attn = [
        f"{p}input_blocks.{1 + step * i}.1.proj_in.weight" in state for i in range(n_blocks)
    ]
    up_attn = [f"{p}output_blocks.{step * i}.1.proj_in.weight" in state for i in range(n_blocks)]
    to_k = next(v for k, v in state.items() if k.startswith(p) and k.endswith("attn2.to_k.weight"))
    proj_in = next(v for k, v in state.items() if k.startswith(p) and k.endswith("proj_in.weight"))
    config = dict(base)
    config.update(
        in_channels=int(state[p + "input_blocks.0.0.weight"].shape[1]),
        out_channels=int(state[p + "out.2.weight"].shape[0]),
        layers_per_block=layers,
        block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
        cross_attention_dim=int(to_k.shape[1]),
        use_linear_projection=proj_in.ndim == 2,
        norm_num_groups=groups_for(channels, int(base.get("norm_num_groups", 32))),
    )
    if kind == "sd2" and all(c % 64 == 0 for c in channels):
        config["attention_head_dim"] = [c // 64 for c in channels]
    elif kind == "sd2" or any(c % 8 for c in channels):
        config["attention_head_dim"] = 8 if all(c % 8 == 0 for c in channels) else 1
    return config


def vae_config(state: Mapping[str, torch.Tensor], base: dict, prefix: str = VAE_PREFIX) -> dict:
    p = prefix
    n_blocks = _count(state, re.escape(p) + r"encoder\.down\.(\d+)\.")
    layers = _count(state, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\.")
    if n_blocks == 0 or layers == 0:
        raise ArchitectureError(f"no VAE encoder blocks under {p or 'the root'}encoder.down.*")
    channels = [
        int(state[f"{p}encoder.down.{i}.block.{layers - 1}.conv2.weight"].shape[0])
        for i in range(n_blocks)
    ]
    config = dict(base)
    config.update(
        in_channels=int(state[p + "encoder.conv_in.weight"].shape[1]),
        out_channels=int(state[p + "decoder.conv_out.weight"].shape[0]),
        latent_channels=int(state[p + "encoder.conv_out.weight"].shape[0]) // 2,
        layers_per_block=layers,
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * n_blocks,
        up_block_types=["UpDecoderBlock2D"] * n_blocks,
        norm_num_groups=groups_for(channels, int(base.get("norm_num_groups", 32))),
    )
    return config


def hf_text_config(state: Mapping[str, torch.Tensor], short: str, base: dict) -> dict:
    """A CLIPTextModel config from transformers-named tensors under ``short``
    (``text_model.`` after it is optional)."""
    p = short + "text_model." if any(k.startswith(short + "text_model.") for k in state) else short
    return _text_sizes(
        base,
        token=state[p + "embeddings.token_embedding.weight"],
        positions=state[p + "embeddings.position_embedding.weight"],
        n_layers=_count(state, re.escape(p) + r"encoder\.layers\.(\d+)\."),
        inner=state[p + "encoder.layers.0.mlp.fc1.weight"],
    )


def openclip_text_config(
    state: Mapping[str, torch.Tensor], p: str, base: dict, unused_layers: int = 0
) -> dict:
    """A CLIPTextModel config from open_clip-named tensors under ``p``; the last
    ``unused_layers`` blocks are left out (SD 2.x reads the penultimate layer)."""
    return _text_sizes(
        base,
        token=state[p + "token_embedding.weight"],
        positions=state[p + "positional_embedding"],
        n_layers=_count(state, re.escape(p) + r"transformer\.resblocks\.(\d+)\.") - unused_layers,
        inner=state[p + "transformer.resblocks.0.mlp.c_fc.weight"],
    )


def _text_sizes(
    base: dict, *, token: torch.Tensor, positions: torch.Tensor, n_layers: int, inner: torch.Tensor
) -> dict:
    hidden = int(token.shape[1])
    config = dict(base)
    config.update(
        vocab_size=int(token.shape[0]),
        hidden_size=hidden,
        max_position_embeddings=int(positions.shape[0]),
        num_hidden_layers=max(1, n_layers),
        intermediate_size=int(inner.shape[0]),
    )
    if hidden != base.get("hidden_size"):
        config["num_attention_heads"] = text_heads(hidden)
        config["projection_dim"] = hidden
    return config


def text_config(state: Mapping[str, torch.Tensor], base: dict, kind: str) -> dict:
    if kind == "sd2":
        return openclip_text_config(state, SD2_TEXT_PREFIX, base, unused_layers=1)
    return hf_text_config(state, SD1_TEXT_PREFIX_SHORT, base)


def derive_configs(
    state: Mapping[str, torch.Tensor], kind: str, shipped: str, stored: Mapping | None
) -> dict[str, dict]:
    """Component configs for ``state``: the stored ones when present, else derived."""
    if stored:
        return {name: dict(stored[name]) for name in ("unet", "vae", "text_encoder")}
    return {
        "unet": unet_config(state, shipped_config(shipped, "unet"), kind),
        "vae": vae_config(state, shipped_config(shipped, "vae")),
        "text_encoder": text_config(state, shipped_config(shipped, "text_encoder"), kind),
    }
