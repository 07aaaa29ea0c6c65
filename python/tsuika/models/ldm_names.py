"""Module names of the original Stable Diffusion UNet (``ldm``) from diffusers names.

The rules follow the original CompVis layout that AUTOMATIC1111 and kohya
rewrite LoRA keys into (A1111 ``extensions-builtin/Lora/lora.py``,
``convert_diffusers_name_to_compvis``; diffusers
``scripts/convert_diffusers_to_original_stable_diffusion.py``):

* ``down_blocks.{i}.{resnets|attentions}.{j}`` -> ``input_blocks.{1+(L+1)i+j}.{0|1}``
* ``down_blocks.{i}.downsamplers.0.conv`` -> ``input_blocks.{(L+1)(i+1)}.0.op``
* ``mid_block.resnets.{j}`` -> ``middle_block.{2j}``, ``mid_block.attentions.0`` -> ``middle_block.1``
* ``up_blocks.{i}.{resnets|attentions}.{j}`` -> ``output_blocks.{(L+1)i+j}.{0|1}``
* ``up_blocks.{i}.upsamplers.0.conv`` -> ``output_blocks.{(L+1)i+L}.{1|2}.conv``
  (``1`` when that up block has no attention, i.e. SD's ``up_blocks.0``)
* inside a resnet: ``norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut`` ->
  ``in_layers.0 in_layers.2 emb_layers.1 out_layers.0 out_layers.3 skip_connection``
* ``time_embedding.linear_{1,2}`` -> ``time_embed.{0,2}``; SDXL's ``add_embedding.linear_{1,2}``
  (pooled text + size/crop ids) -> ``label_emb.0.{0,2}`` (sgm ``openaimodel.py``); ``conv_in`` ->
  ``input_blocks.0.0``, ``conv_norm_out``/``conv_out`` -> ``out.0``/``out.2``

``L`` is ``layers_per_block`` (2 in every SD 1.x/2.x model and in tsuika's
tiny models). Attention internals (``transformer_blocks.*``, ``proj_in``,
``norm``...) keep their names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tsuika.errors import TsuikaError

RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

TOP_LEVEL_NAMES = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

# SD 1.x / 2.x: the first up block is an UpBlock2D (no attention), the rest cross-attend.
SD_UP_ATTENTION = (False, True, True, True)

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")
_DOWNSAMPLE = re.compile(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv$")
_UPSAMPLE = re.compile(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv$")


class UnknownModuleError(TsuikaError, KeyError):
    """A diffusers UNet module path with no place in the original layout."""


def _inner(kind: str, rest: str | None, module_path: str) -> str:
    if rest is None:
        return ""
    if kind == "attentions":
        return "." + rest
    head, _, tail = rest.partition(".")
    if head not in RESNET_NAMES:
        raise UnknownModuleError(f"unknown resnet part {head!r} in UNet module {module_path!r}")
    return "." + RESNET_NAMES[head] + ("." + tail if tail else "")


def unet_module_to_original(
    module_path: str,
    *,
    layers_per_block: int = 2,
    up_attention: Sequence[bool] = SD_UP_ATTENTION,
) -> str:
    """Map a diffusers ``UNet2DConditionModel`` module path to the ``ldm`` one.

    The result has no ``model.diffusion_model.`` prefix, e.g.
    ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` ->
    ``input_blocks.1.1.transformer_blocks.0.attn1.to_q``. Raises
    :class:`UnknownModuleError` naming the path when it has no counterpart.
    """
    for name, original in TOP_LEVEL_NAMES.items():
        if module_path == name or module_path.startswith(name + "."):
            return original + module_path[len(name) :]
    step = layers_per_block + 1
    if m := _BLOCK.match(module_path):
        side, block, kind, layer, rest = m.groups()
        i, j = int(block), int(layer)
        index = 1 + step * i + j if side == "down_blocks" else step * i + j
        prefix = "input_blocks" if side == "down_blocks" else "output_blocks"
        sub = 1 if kind == "attentions" else 0
        return f"{prefix}.{index}.{sub}" + _inner(kind, rest, module_path)
    if m := _MID.match(module_path):
        kind, layer, rest = m.groups()
        index = 1 if kind == "attentions" else 2 * int(layer)
        return f"middle_block.{index}" + _inner(kind, rest, module_path)
    if m := _DOWNSAMPLE.match(module_path):
        return f"input_blocks.{step * (int(m.group(1)) + 1)}.0.op"
    if m := _UPSAMPLE.match(module_path):
        i = int(m.group(1))
        has_attention = up_attention[i] if i < len(up_attention) else True
        return f"output_blocks.{step * i + layers_per_block}.{2 if has_attention else 1}.conv"
    raise UnknownModuleError(f"UNet module {module_path!r} has no original (ldm) name")


def unet_key_to_original(
    diffusers_key: str,
    *,
    layers_per_block: int = 2,
    up_attention: Sequence[bool] = SD_UP_ATTENTION,
) -> str:
    """Map a diffusers UNet state-dict key (``...weight``) to the original key.

    The result carries the ``model.diffusion_model.`` prefix of a single-file
    checkpoint.
    """
    module, _, param = diffusers_key.rpartition(".")
    mapped = unet_module_to_original(
        module, layers_per_block=layers_per_block, up_attention=up_attention
    )
    return f"model.diffusion_model.{mapped}.{param}"
