"""Key maps between diffusers/transformers modules and the original SD single-file layout.

The original (CompVis ``ldm``) layout that AUTOMATIC1111 and ComfyUI read:

* UNet under ``model.diffusion_model.*`` (:mod:`tsuika.models.ldm_names`).
* VAE under ``first_stage_model.*``: ``encoder.down.{i}.block.{j}``,
  ``decoder.up.{n-1-i}.block.{j}`` (the decoder's order is reversed),
  ``mid.block_{1,2}``, ``mid.attn_1.{norm,q,k,v,proj_out}`` with the
  attention projections stored as 1x1 convolutions, ``nin_shortcut``,
  ``norm_out`` (source: ldm ``modules/diffusionmodules/model.py``).
* SD 1.x text encoder under ``cond_stage_model.transformer.text_model.*``
  (the HF CLIP names *with* ``text_model.``; transformers 5 no longer has that
  level, so it is added on write and optional on read).
* SD 2.x text encoder in OpenCLIP's layout ``cond_stage_model.model.*``
  (``transformer.resblocks.{i}.attn.in_proj_weight`` holds q, k, v stacked;
  source: open_clip ``transformer.py``).

Every map goes from the diffusers state-dict key to the original key, so one
map serves both reading and writing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from tsuika.errors import TsuikaError

from .ldm_names import unet_key_to_original

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer.text_model."
SD1_TEXT_PREFIX_SHORT = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."

VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
VAE_TOP = {"conv_norm_out": "norm_out"}


class LayoutError(TsuikaError, KeyError):
    """A state dict that does not fit the layout it should have."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


def unet_key_map(unet_config: Mapping, keys: list[str]) -> dict[str, str]:
    """diffusers UNet key -> ``model.diffusion_model.*`` key."""
    up_attention = tuple("CrossAttn" in t for t in unet_config["up_block_types"])
    layers = int(unet_config["layers_per_block"])
    return {
        k: unet_key_to_original(k, layers_per_block=layers, up_attention=up_attention) for k in keys
    }


_VAE_BLOCK = re.compile(
    r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$"
)
_VAE_MID = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _vae_key(key: str, n_blocks: int) -> str:
    if m := _VAE_BLOCK.match(key):
        side, _, block, part, index, rest = m.groups()
        i = int(block) if side == "encoder" else n_blocks - 1 - int(block)
        level = "down" if side == "encoder" else "up"
        if part == "resnets":
            head, _, tail = rest.partition(".")
            return f"{side}.{level}.{i}.block.{index}.{VAE_RESNET.get(head, head)}.{tail}"
        sampler = "downsample" if part == "downsamplers" else "upsample"
        return f"{side}.{level}.{i}.{sampler}.{rest}"
    if m := _VAE_MID.match(key):
        side, part, index, rest = m.groups()
        if part == "resnets":
            head, _, tail = rest.partition(".")
            return f"{side}.mid.block_{int(index) + 1}.{VAE_RESNET.get(head, head)}.{tail}"
        module, _, param = rest.rpartition(".")
        if module not in VAE_ATTENTION:
            raise LayoutError(f"VAE attention part {module!r} in {key!r} has no original name")
        return f"{side}.mid.attn_1.{VAE_ATTENTION[module]}.{param}"
    side, _, rest = key.partition(".")
    module, _, param = rest.rpartition(".")
    if side in ("encoder", "decoder") and module in VAE_TOP:
        return f"{side}.{VAE_TOP[module]}.{param}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def vae_key_map(vae_config: Mapping, keys: list[str], prefix: str = VAE_PREFIX) -> dict[str, str]:
    """diffusers AutoencoderKL key -> ``first_stage_model.*`` key (``prefix`` may be "")."""
    n_blocks = len(vae_config["block_out_channels"])
    return {k: prefix + _vae_key(k, n_blocks) for k in keys}


def _hf_text_key(key: str) -> str:
    """A CLIPTextModel key without the ``text_model.`` level (transformers 4 had it)."""
    return key.removeprefix("text_model.")


def sd1_text_key_map(keys: list[str]) -> dict[str, str]:
    """CLIPTextModel key -> ``cond_stage_model.transformer.text_model.*`` key."""
    return {k: SD1_TEXT_PREFIX + _hf_text_key(k) for k in keys}


_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_QKV = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}


def sd2_text_key(key: str, prefix: str = SD2_TEXT_PREFIX) -> tuple[str, int | None]:
    """CLIPTextModel key -> (OpenCLIP key, chunk index of the stacked q/k/v or None).

    ``prefix`` is where the OpenCLIP model sits in the file: SD 2.x's
    ``cond_stage_model.model.``, SDXL's ``conditioner.embedders.1.model.``.
    """
    key = _hf_text_key(key)
    fixed = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    if key in fixed:
        return prefix + fixed[key], None
    m = _HF_LAYER.match(key)
    if not m:
        raise LayoutError(f"text encoder key {key!r} has no OpenCLIP name")
    layer, module, param = m.groups()
    base = f"{prefix}transformer.resblocks.{layer}."
    if module in _QKV:
        return f"{base}attn.in_proj_{param}", _QKV[module]
    if module not in _OPENCLIP_LAYER:
        raise LayoutError(f"text encoder key {key!r} has no OpenCLIP name")
    return f"{base}{_OPENCLIP_LAYER[module]}.{param}", None


def fit(tensor: torch.Tensor, shape: torch.Size, key: str, source: object) -> torch.Tensor:
    """Reshape between 1x1-conv and linear forms; anything else must match exactly."""
    if tensor.shape == shape:
        return tensor
    squeeze = [d for d in tensor.shape if d != 1] == [d for d in shape if d != 1]
    if squeeze and tensor.numel() == torch.Size(shape).numel():
        return tensor.reshape(shape)
    raise LayoutError(
        f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, the model expects {tuple(shape)}"
    )


def gather(
    state: Mapping[str, torch.Tensor],
    module: torch.nn.Module,
    key_map: Mapping[str, str],
    source: object,
    *,
    aliases: tuple[tuple[str, str], ...] = (),
) -> dict[str, torch.Tensor]:
    """Pick the tensors ``module`` needs out of an original-layout ``state``.

    ``aliases`` are (prefix, alternative prefix) pairs tried when a key is absent
    (e.g. SD 1.x text encoders saved without ``text_model.``).
    """
    expected = module.state_dict()
    out: dict[str, torch.Tensor] = {}
    missing = []
    for key, target in expected.items():
        original = key_map[key]
        tensor = state.get(original)
        for prefix, alternative in aliases:
            if tensor is None and original.startswith(prefix):
                tensor = state.get(alternative + original[len(prefix) :])
        if tensor is None:
            missing.append(original)
            continue
        out[key] = fit(tensor, target.shape, original, source)
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        )
        raise LayoutError(f"{source}: missing {len(missing)} tensors: {shown}")
    return out


def gather_sd2_text(
    state: Mapping[str, torch.Tensor],
    module: torch.nn.Module,
    source: object,
    prefix: str = SD2_TEXT_PREFIX,
) -> dict[str, torch.Tensor]:
    """Split OpenCLIP's stacked q/k/v into a CLIPTextModel state dict."""
    out: dict[str, torch.Tensor] = {}
    for key, target in module.state_dict().items():
        original, chunk = sd2_text_key(key, prefix)
        if original not in state:
            raise LayoutError(f"{source}: missing tensor {original!r}")
        tensor = state[original]
        if chunk is not None:
            tensor = tensor.chunk(3, dim=0)[chunk]
        out[key] = fit(tensor, target.shape, original, source)
    return out


def sd2_text_to_original(
    text_state: Mapping[str, torch.Tensor],
    *,
    pad_unused_layer: bool = False,
    prefix: str = SD2_TEXT_PREFIX,
) -> dict[str, torch.Tensor]:
    """A CLIPTextModel state dict in OpenCLIP's layout (q/k/v stacked).

    ``pad_unused_layer`` adds the last OpenCLIP block (zeros) and an identity
    ``text_projection``: SD 2.x checkpoints carry them, SD 2.x never uses them.
    """
    out: dict[str, torch.Tensor] = {}
    stacks: dict[str, list[torch.Tensor | None]] = {}
    for key, tensor in text_state.items():
        original, chunk = sd2_text_key(key, prefix)
        if chunk is None:
            out[original] = tensor
        else:
            stacks.setdefault(original, [None, None, None])[chunk] = tensor
    for original, parts in stacks.items():
        if any(p is None for p in parts):
            raise LayoutError(f"q/k/v incomplete for {original!r}")
        out[original] = torch.cat(parts, dim=0)  # type: ignore[arg-type]
    if pad_unused_layer:
        _pad_last_layer(out)
    return out


def _pad_last_layer(out: dict[str, torch.Tensor]) -> None:
    pattern = re.compile(re.escape(SD2_TEXT_PREFIX) + r"transformer\.resblocks\.(\d+)\.(.+)$")
    layers = [(int(m.group(1)), m.group(2), v) for k, v in out.items() if (m := pattern.match(k))]
    last = max(i for i, _, _ in layers)
    for i, rest, tensor in layers:
        if i == last:
            out[f"{SD2_TEXT_PREFIX}transformer.resblocks.{last + 1}.{rest}"] = torch.zeros_like(
                tensor
            )
    width = out[SD2_TEXT_PREFIX + "ln_final.weight"].shape[0]
    out[SD2_TEXT_PREFIX + "text_projection"] = torch.eye(
        width, dtype=out[SD2_TEXT_PREFIX + "ln_final.weight"].dtype
    )
