"""How AUTOMATIC1111 finds the module a kohya LoRA key belongs to.

A1111 (``extensions-builtin/Lora/networks.py``: ``convert_diffusers_name_to_compvis``,
``assign_network_names_to_compvis_modules``, ``load_network``) names every
module of the loaded original-layout model by its path with ``.`` -> ``_``
(UNet: ``diffusion_model_input_blocks_1_1_...``; SD 1.x text encoder:
``transformer_text_model_encoder_layers_0_...``; SD 2.x OpenCLIP:
``model_transformer_resblocks_0_...``), rewrites each kohya module name into
that layout, and skips keys whose rewrite names no module. The rules:

* ``lora_unet_conv_in`` -> ``diffusion_model_input_blocks_0_0``,
  ``lora_unet_conv_out`` -> ``diffusion_model_out_2``,
  ``lora_unet_time_embedding_linear_{n}`` -> ``diffusion_model_time_embed_{2n-2}``
* ``lora_unet_down_blocks_{i}_{attentions|resnets}_{j}_{rest}`` ->
  ``diffusion_model_input_blocks_{1+3i+j}_{1|0}_{rest'}``
* ``lora_unet_mid_block_{attentions|resnets}_{j}_{rest}`` ->
  ``diffusion_model_middle_block_{1|2j}_{rest'}``
* ``lora_unet_up_blocks_{i}_{attentions|resnets}_{j}_{rest}`` ->
  ``diffusion_model_output_blocks_{3i+j}_{1|0}_{rest'}``
* ``lora_unet_down_blocks_{i}_downsamplers_0_conv`` -> ``diffusion_model_input_blocks_{3+3i}_0_op``
* ``lora_unet_up_blocks_{i}_upsamplers_0_conv`` -> ``diffusion_model_output_blocks_{2+3i}_{2 if i>0 else 1}_conv``
* ``rest'``: in resnets, the leading ``conv1 conv2 norm1 norm2 time_emb_proj
  conv_shortcut`` become ``in_layers_2 out_layers_3 in_layers_0 out_layers_0
  emb_layers_1 skip_connection``
* ``lora_te_text_model_encoder_layers_{n}_{rest}`` ->
  ``transformer_text_model_encoder_layers_{n}_{rest}`` (SD 2.x:
  ``model_transformer_resblocks_{n}_{rest}`` with ``mlp_fc1``/``mlp_fc2``/``self_attn``
  -> ``mlp_c_fc``/``mlp_c_proj``/``attn``; ``..._q_proj`` etc. then fall back
  to the fused ``attn`` module)

This is our own implementation of those rules, used to check that every
key we write lands on a real module. The layout assumes SD's 2 layers per
block (the ``3`` above is ``layers_per_block + 1``), as A1111 does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

RESNET_SUFFIXES = {
    "conv1": "in_layers_2",
    "conv2": "out_layers_3",
    "norm1": "in_layers_0",
    "norm2": "out_layers_0",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}
SD2_TEXT_PARTS = (("mlp_fc1", "mlp_c_fc"), ("mlp_fc2", "mlp_c_proj"), ("self_attn", "attn"))
_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")


def _suffix(kind: str, rest: str) -> str:
    if kind != "resnets":
        return rest
    for diffusers_name, original in RESNET_SUFFIXES.items():
        if rest == diffusers_name or rest.startswith(diffusers_name + "_"):
            return original + rest[len(diffusers_name) :]
    return rest


def _down(m: re.Match) -> str:
    i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    sub = 1 if kind == "attentions" else 0
    return f"diffusion_model_input_blocks_{1 + 3 * i + j}_{sub}_{_suffix(kind, rest)}"


def _mid(m: re.Match) -> str:
    kind, j, rest = m[1], int(m[2]), m[3]
    index = 1 if kind == "attentions" else 2 * j
    return f"diffusion_model_middle_block_{index}_{_suffix(kind, rest)}"


def _up(m: re.Match) -> str:
    i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    sub = 1 if kind == "attentions" else 0
    return f"diffusion_model_output_blocks_{3 * i + j}_{sub}_{_suffix(kind, rest)}"


def _text(m: re.Match, is_sd2: bool) -> str:
    layer, rest = m[1], m[2]
    if not is_sd2:
        return f"transformer_text_model_encoder_layers_{layer}_{rest}"
    for old, new in SD2_TEXT_PARTS:
        if old in rest:
            return f"model_transformer_resblocks_{layer}_{rest.replace(old, new)}"
    return f"model_transformer_resblocks_{layer}_{rest}"


# (pattern, rewrite): tried in order, the first match wins (A1111's order).
RULES: list[tuple[re.Pattern, Callable[[re.Match, bool], str]]] = [
    (re.compile(r"lora_unet_conv_in(.*)"), lambda m, _: f"diffusion_model_input_blocks_0_0{m[1]}"),
    (re.compile(r"lora_unet_conv_out(.*)"), lambda m, _: f"diffusion_model_out_2{m[1]}"),
    (
        re.compile(r"lora_unet_time_embedding_linear_(\d+)(.*)"),
        lambda m, _: f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}",
    ),
    (
        re.compile(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"),
        lambda m, _: _down(m),
    ),
    (re.compile(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)"), lambda m, _: _mid(m)),
    (re.compile(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"), lambda m, _: _up(m)),
    (
        re.compile(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv"),
        lambda m, _: f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op",
    ),
    (
        re.compile(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv"),
        lambda m, _: (
            f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"
        ),
    ),
    (re.compile(r"lora_te_text_model_encoder_layers_(\d+)_(.+)"), _text),
]


def kohya_to_compvis(name: str, *, is_sd2: bool = False) -> str:
    """Rewrite a kohya module name (no ``.lora_down.weight`` suffix) as A1111 does.

    Names no rule matches come back unchanged (A1111 then fails to find them).
    """
    for pattern, rewrite in RULES:
        m = pattern.match(name)
        if m:
            return rewrite(m, is_sd2)
    return name


def a1111_module_names(original_keys: Iterable[str]) -> set[str]:
    """A1111's module names for a model whose single-file state dict has ``original_keys``.

    UNet modules come from ``model.*`` (``sd_model.model.named_modules()``),
    text-encoder modules from ``cond_stage_model.*`` (the ``wrapped``
    embedder's ``named_modules()``). Every path prefix of a parameter key is
    a module.
    """
    names: set[str] = set()
    for key in original_keys:
        for root in ("model.", "cond_stage_model."):
            if key.startswith(root):
                parts = key[len(root) :].split(".")[:-1]  # drop the parameter name
                for end in range(1, len(parts) + 1):
                    names.add("_".join(parts[:end]))
    return names


def find_a1111_module(name: str, module_names: set[str], *, is_sd2: bool = False) -> str | None:
    """The A1111 module a kohya module name lands on, or ``None`` (A1111 would skip the key)."""
    key = kohya_to_compvis(name, is_sd2=is_sd2)
    if key in module_names:
        return key
    m = _X_PROJ.match(key)
    if m and m[1] in module_names:  # SD 2.x: q/k/v_proj -> the fused attention module
        return m[1]
    return None
