"""Key maps between SDXL's diffusers modules and its original single-file layout.

The original SDXL layout (Stability's ``sgm``, read by AUTOMATIC1111, ComfyUI
and diffusers' ``from_single_file``):

* UNet under ``model.diffusion_model.*`` as for SD 1.x/2.x
  (:mod:`tsuika.models.ldm_names`), plus ``label_emb.0.{0,2}`` for diffusers'
  ``add_embedding`` (pooled text + size/crop conditioning);
* VAE under ``first_stage_model.*`` (:func:`~tsuika.models.original_layout.vae_key_map`);
* text encoder 1, CLIP ViT-L, in transformers' names under
  ``conditioner.embedders.0.transformer.text_model.*``;
* text encoder 2, OpenCLIP ViT-bigG, in open_clip's own layout under
  ``conditioner.embedders.1.model.*`` (``transformer.resblocks.N.attn.in_proj_weight``
  with q, k, v stacked, ``ln_1``, ``mlp.c_fc``...; source: open_clip
  ``transformer.py``). ``text_projection`` is applied as ``x @ W`` there
  (W is ``[width, projection]``), so it is the transpose of transformers'
  ``text_projection.weight``. SDXL reads every layer (the penultimate hidden
  state plus the projected pooled output), so no layer is dropped or padded.

Real SDXL files also carry ``conditioner.embedders.1.model.logit_scale`` (an
unused CLIP training scalar); it is written for tools that expect it and
ignored on reading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .original_layout import (
    LayoutError,
    fit,
    gather,
    gather_sd2_text,
    sd2_text_to_original,
)

TEXT1_PREFIX = "conditioner.embedders.0.transformer.text_model."
TEXT1_PREFIX_SHORT = "conditioner.embedders.0.transformer."
TEXT2_PREFIX = "conditioner.embedders.1.model."
TEXT2_PROJECTION = TEXT2_PREFIX + "text_projection"
TEXT2_LOGIT_SCALE = TEXT2_PREFIX + "logit_scale"
OPENCLIP_LOGIT_SCALE = math.log(100.0)  # open_clip clamps the trained value at 100
_PROJECTION_KEY = "text_projection.weight"  # transformers' CLIPTextModelWithProjection
_TEXT_MODEL = "text_model."


def _hf_key(key: str) -> str:
    """A transformers CLIP key without the ``text_model.`` level (transformers 5 flattened it)."""
    return key.removeprefix(_TEXT_MODEL)


def text1_key_map(keys: list[str]) -> dict[str, str]:
    """CLIPTextModel key -> ``conditioner.embedders.0.transformer.text_model.*`` key."""
    return {k: TEXT1_PREFIX + _hf_key(k) for k in keys}


def gather_text1(
    state: Mapping[str, torch.Tensor], module: torch.nn.Module, source: object
) -> dict[str, torch.Tensor]:
    """Text encoder 1's tensors out of an SDXL file (``text_model.`` optional there too)."""
    key_map = text1_key_map(list(module.state_dict()))
    return gather(state, module, key_map, source, aliases=((TEXT1_PREFIX, TEXT1_PREFIX_SHORT),))


def gather_text2(
    state: Mapping[str, torch.Tensor], module: torch.nn.Module, source: object
) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict from open_clip's layout (q/k/v split,
    ``text_projection`` transposed)."""
    out = {
        _TEXT_MODEL + k: v
        for k, v in gather_sd2_text(state, module.text_model, source, TEXT2_PREFIX).items()
    }
    if TEXT2_PROJECTION not in state:
        raise LayoutError(f"{source}: missing tensor {TEXT2_PROJECTION!r}")
    target = module.state_dict()[_PROJECTION_KEY]
    out[_PROJECTION_KEY] = fit(
        state[TEXT2_PROJECTION].T.contiguous(), target.shape, TEXT2_PROJECTION, source
    )
    return out


def text1_to_original(text_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    key_map = text1_key_map(list(text_state))
    return {key_map[k]: v for k, v in text_state.items()}


def text2_to_original(text_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict in open_clip's layout."""
    body = {_hf_key(k): v for k, v in text_state.items() if k != _PROJECTION_KEY}
    out = sd2_text_to_original(body, prefix=TEXT2_PREFIX)
    projection = text_state[_PROJECTION_KEY]
    out[TEXT2_PROJECTION] = projection.T.contiguous()
    out[TEXT2_LOGIT_SCALE] = torch.tensor(OPENCLIP_LOGIT_SCALE, dtype=projection.dtype)
    return out


def text_to_original(text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """Both SDXL text encoders in the original layout."""
    if text_encoder_2 is None:
        raise LayoutError("an SDXL model needs text_encoder_2 (OpenCLIP ViT-bigG)")
    return {
        **text1_to_original(text_encoder.state_dict()),
        **text2_to_original(text_encoder_2.state_dict()),
    }
