"""kohya module names of a model's LoRA targets, per model family.

SD 1.x / 2.x (kohya-ss/sd-scripts ``networks/lora.py``): the UNet by its
diffusers module path (``lora_unet_down_blocks_0_attentions_0_...``), the
text encoder ``lora_te_``.

SDXL (kohya's ``sdxl_train_network.py``, which wraps the original ``sgm``
UNet): the UNet by the ORIGINAL block names
(``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``,
``lora_unet_middle_block_1_...``, ``lora_unet_output_blocks_...``; the rules
of :func:`tsuika.models.ldm_names.unet_module_to_original`), the encoders
``lora_te1_`` (CLIP ViT-L) and ``lora_te2_`` (OpenCLIP bigG, in transformers'
layout). diffusers' ``StableDiffusionXLPipeline.load_lora_weights`` maps these
names back (``_maybe_map_sgm_blocks_to_diffusers``). Reading also accepts an
SDXL UNet named by diffusers paths and an encoder 1 under ``lora_te_``.

The first name each rule gives is the one written; the others are only read.
Without a model (``tsuika convert``), :func:`sdxl_unet_kohya_path` names an
SDXL UNet module and :func:`original_to_unet_module` reads an original name
back into the diffusers path.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from tsuika.formats.kohya_lora import kohya_key, normalize_module_name
from tsuika.models.base import BaseModel
from tsuika.models.ldm_names import (
    RESNET_NAMES,
    TOP_LEVEL_NAMES,
    UnknownModuleError,
    unet_module_to_original,
)

# component -> the kohya prefixes addressing it (the first is written)
SD_PREFIXES: dict[str, tuple[str, ...]] = {
    "unet": ("lora_unet",),
    "text_encoder": ("lora_te", "lora_te1"),
}
SDXL_PREFIXES: dict[str, tuple[str, ...]] = {
    "unet": ("lora_unet",),
    "text_encoder": ("lora_te1", "lora_te"),
    "text_encoder_2": ("lora_te2",),
}
# diffusers-format component -> the kohya prefix its modules get when read
DIFFUSERS_COMPONENT_PREFIX = {
    "unet": "lora_unet",
    "text_encoder": "lora_te",
    "text_encoder_2": "lora_te2",
}


# SDXL's up blocks: two cross-attention blocks, then one without (base and tiny SDXL alike)
SDXL_UP_ATTENTION = (True, True, False)
SDXL_LAYERS_PER_BLOCK = 2


def component_prefixes(kind: str) -> dict[str, tuple[str, ...]]:
    """The LoRA components of a ``kind`` model and their kohya prefixes."""
    return SDXL_PREFIXES if kind == "sdxl" else SD_PREFIXES


def _diffusers_paths(unet: nn.Module, path: str) -> list[str]:
    return [path]


def _original_paths(unet: nn.Module, path: str) -> list[str]:
    """The ``sgm`` module path first, then the diffusers one (read only)."""
    config = unet.config
    up_attention = ["CrossAttn" in t for t in config.up_block_types]
    try:
        original = unet_module_to_original(
            path, layers_per_block=int(config.layers_per_block), up_attention=up_attention
        )
    except UnknownModuleError:
        return [path]
    return [original, path]


# BaseModel.kind -> UNet module path -> the module paths its kohya names are made from
UNET_PATHS: dict[str, Callable[[nn.Module, str], list[str]]] = {
    "sd1": _diffusers_paths,
    "sd2": _diffusers_paths,
    "sdxl": _original_paths,
}


def kohya_names(model: BaseModel, component: str, path: str) -> list[str]:
    """Every kohya module name of ``component``'s module ``path`` (the written one first)."""
    prefixes = component_prefixes(model.kind)[component]
    if component == "unet":
        paths = UNET_PATHS.get(model.kind, _diffusers_paths)(model.unet, path)
        return [kohya_key(prefixes[0], p) for p in paths]
    return [normalize_module_name(kohya_key(prefix, path)) for prefix in prefixes]


def kohya_name(model: BaseModel, component: str, path: str) -> str:
    """The kohya module name written for ``component``'s module ``path``."""
    return kohya_names(model, component, path)[0]


# --------------------------------------------------------------------------- without a model


def sdxl_unet_kohya_path(path: str) -> str:
    """The module path kohya's SDXL trainer names ``path`` by (original block names), with no
    model at hand: SDXL's block layout is fixed (:data:`SDXL_UP_ATTENTION`)."""
    try:
        return unet_module_to_original(
            path, layers_per_block=SDXL_LAYERS_PER_BLOCK, up_attention=SDXL_UP_ATTENTION
        )
    except UnknownModuleError:
        return path


_ORIGINAL_TOP_LEVEL = {v: k for k, v in TOP_LEVEL_NAMES.items()}
_ORIGINAL_RESNET = {v: k for k, v in RESNET_NAMES.items()}
_ORIGINAL = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)(?:\.(\d+))?(\..*)?$")
ORIGINAL_ROOTS = ("input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out")


def _renamed(path: str, table: dict[str, str]) -> str | None:
    """``path`` with the longest key of ``table`` it starts with (at a dot) replaced."""
    for name in sorted(table, key=len, reverse=True):
        if path == name or path.startswith(name + "."):
            return table[name] + path[len(name) :]
    return None


def _inner_back(kind: str, rest: str, original: str) -> str:
    if not rest or kind == "attentions":
        return rest
    renamed = _renamed(rest.lstrip("."), _ORIGINAL_RESNET)
    if renamed is None:
        raise UnknownModuleError(f"unknown resnet part in UNet module {original!r}")
    return "." + renamed


def _block(side: str, i: int, sub: int, j: int, rest: str, original: str) -> str:
    kind = "attentions" if sub == 1 else "resnets"
    if sub not in (0, 1):
        raise UnknownModuleError(f"UNet module {original!r}: no sub-block {sub} there")
    return f"{side}.{i}.{kind}.{j}" + _inner_back(kind, rest, original)


def original_to_unet_module(original: str, *, layers_per_block: int = 2) -> str:
    """The inverse of :func:`~tsuika.models.ldm_names.unet_module_to_original`.

    ``input_blocks.4.1.transformer_blocks.0.attn1.to_q`` ->
    ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``. No block
    layout is needed: an up sampler is the only ``output_blocks.N.{1|2}.conv``.
    Raises :class:`UnknownModuleError` naming the path when it has no counterpart.
    """
    top = _renamed(original, _ORIGINAL_TOP_LEVEL)
    if top is not None:
        return top
    step = layers_per_block + 1
    m = _ORIGINAL.match(original)
    if m is None:
        raise UnknownModuleError(f"UNet module {original!r} has no diffusers name")
    root, n, sub, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4) or ""
    if root == "middle_block":
        if n != 1 and n % 2:
            raise UnknownModuleError(f"UNet module {original!r} has no diffusers name")
        kind, index = ("attentions", 0) if n == 1 else ("resnets", n // 2)
        rest = (f".{sub}" if sub is not None else "") + rest
        return f"mid_block.{kind}.{index}" + _inner_back(kind, rest, original)
    if sub is None:
        raise UnknownModuleError(f"UNet module {original!r}: a block without its sub-block")
    sub = int(sub)
    if root == "input_blocks" and n > 0 and n % step == 0 and sub == 0 and rest == ".op":
        return f"down_blocks.{n // step - 1}.downsamplers.0.conv"
    if root == "input_blocks" and n > 0 and n % step:
        return _block("down_blocks", (n - 1) // step, sub, (n - 1) % step, rest, original)
    upsampler = n % step == layers_per_block and sub in (1, 2) and rest == ".conv"
    if root == "output_blocks" and upsampler:
        return f"up_blocks.{n // step}.upsamplers.0.conv"
    if root == "output_blocks":
        return _block("up_blocks", n // step, sub, n % step, rest, original)
    raise UnknownModuleError(f"UNet module {original!r} has no diffusers name")
