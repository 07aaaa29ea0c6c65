"""SDXL base's real architecture, key by key, on the meta device (no 7 GB file).

The modules are built from the configs we ship for SDXL base 1.0. Every
diffusers tensor is mapped to the original single-file layout by our maps;
diffusers' own single-file converters (``diffusers.loaders.single_file_utils``)
are the independent side that maps those original keys back. The UNet, VAE
and CLIP-L checks carry a distinct value per tensor (a zero-memory expanded
scalar), so a tensor routed to the wrong place of the same shape is caught;
OpenCLIP bigG (q/k/v stacked, which would need real memory to split) is
checked by key and shape here and by value on the tiny model
(tests/test_models_sdxl.py).
"""

from __future__ import annotations

import pytest
import torch
from tsuika.models.base import BaseModel
from tsuika.models.derive import shipped_config
from tsuika.models.original_layout import gather, unet_key_map, vae_key_map
from tsuika.models.sdxl import derive_sdxl_configs
from tsuika.models.sdxl_layout import TEXT2_LOGIT_SCALE, gather_text1, gather_text2, text1_key_map
from tsuika.models.single_file import to_original_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")

# Tensors of sd_xl_base_1.0.safetensors and their shapes (Stability's sgm
# UNetModel / AutoencoderKL, open_clip ViT-bigG-14, OpenAI CLIP ViT-L/14).
KNOWN_BASE_TENSORS = {
    "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
    "model.diffusion_model.label_emb.0.2.weight": (1280, 1280),
    "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (640, 2048),
    "model.diffusion_model.input_blocks.7.1.proj_in.weight": (1280, 1280),
    "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.ff.net.0.proj.weight": (
        10240,
        1280,
    ),
    "model.diffusion_model.middle_block.1.transformer_blocks.9.norm3.weight": (1280,),
    "model.diffusion_model.middle_block.2.emb_layers.1.weight": (1280, 1280),
    "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
    "model.diffusion_model.output_blocks.6.0.skip_connection.weight": (320, 960, 1, 1),
    "model.diffusion_model.output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
    "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    "first_stage_model.decoder.mid.attn_1.q.weight": (512, 512, 1, 1),
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "first_stage_model.decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
    "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
    "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
    "conditioner.embedders.1.model.transformer.resblocks.31.attn.out_proj.weight": (1280, 1280),
    "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight": (5120, 1280),
    "conditioner.embedders.1.model.text_projection": (1280, 1280),
    "conditioner.embedders.1.model.positional_embedding": (77, 1280),
    "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
    "conditioner.embedders.1.model.ln_final.bias": (1280,),
}


def _meta_base() -> BaseModel:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text(component: str, cls):
        return cls(CLIPTextConfig.from_dict(shipped_config("sdxl", component)))

    with init_empty_weights():
        return BaseModel(
            unet=UNet2DConditionModel.from_config(shipped_config("sdxl", "unet")),
            vae=AutoencoderKL.from_config(shipped_config("sdxl", "vae")),
            text_encoder=text("text_encoder", CLIPTextModel),
            tokenizer=None,
            scheduler=None,
            kind="sdxl",
            text_encoder_2=text("text_encoder_2", CLIPTextModelWithProjection),
        )


@pytest.fixture(scope="module")
def base() -> BaseModel:
    return _meta_base()


@pytest.fixture(scope="module")
def original(base) -> dict[str, torch.Tensor]:
    return to_original_state_dict(base)


def _shapes(state) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_modules_are_sdxl_base_sized(base) -> None:
    """The shipped configs build SDXL base: 2.57 G UNet, 123 M + 695 M text encoders."""
    count = {
        name: sum(p.numel() for p in getattr(base, name).parameters())
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
    }
    assert count["unet"] == 2_567_463_684
    assert count["vae"] == 83_653_863
    assert count["text_encoder"] == 123_060_480
    assert count["text_encoder_2"] == 694_659_840


def test_known_tensors_of_the_base_file(original) -> None:
    shapes = _shapes(original)
    for key, shape in KNOWN_BASE_TENSORS.items():
        assert shapes.get(key) == shape, key
    prefixes = {".".join(k.split(".")[:3]) for k in original}
    assert prefixes == {
        "model.diffusion_model.input_blocks",
        "model.diffusion_model.middle_block",
        "model.diffusion_model.output_blocks",
        "model.diffusion_model.time_embed",
        "model.diffusion_model.label_emb",
        "model.diffusion_model.out",
        "first_stage_model.encoder.down",
        "first_stage_model.encoder.mid",
        "first_stage_model.encoder.conv_in",
        "first_stage_model.encoder.conv_out",
        "first_stage_model.encoder.norm_out",
        "first_stage_model.decoder.up",
        "first_stage_model.decoder.mid",
        "first_stage_model.decoder.conv_in",
        "first_stage_model.decoder.conv_out",
        "first_stage_model.decoder.norm_out",
        "first_stage_model.quant_conv.weight",
        "first_stage_model.quant_conv.bias",
        "first_stage_model.post_quant_conv.weight",
        "first_stage_model.post_quant_conv.bias",
        "conditioner.embedders.0",
        "conditioner.embedders.1",
    }


def test_every_tensor_maps_there_and_back(base, original) -> None:
    """Our reader takes every original tensor back to its diffusers place and
    shape, leaving nothing over but the unused logit_scale."""
    parts = {
        "unet": gather(
            original, base.unet, unet_key_map(base.unet.config, list(base.unet.state_dict())), "f"
        ),
        "vae": gather(
            original, base.vae, vae_key_map(base.vae.config, list(base.vae.state_dict())), "f"
        ),
        "text_encoder": gather_text1(original, base.text_encoder, "f"),
        "text_encoder_2": gather_text2(original, base.text_encoder_2, "f"),
    }
    total = 0
    for name, state in parts.items():
        assert _shapes(state) == _shapes(getattr(base, name).state_dict()), name
        total += len(state)
    q_k_v = 2 * 3 - 2  # per layer: in_proj weight and bias each become three tensors
    layers_2 = base.text_encoder_2.config.num_hidden_layers
    assert len(original) == total - q_k_v * layers_2 + 1  # + logit_scale
    assert TEXT2_LOGIT_SCALE in original


def test_configs_derived_from_the_shapes_are_the_shipped_ones(original) -> None:
    derived = derive_sdxl_configs(original, None)
    for component, keys in {
        "unet": (
            "block_out_channels",
            "transformer_layers_per_block",
            "attention_head_dim",
            "addition_time_embed_dim",
            "projection_class_embeddings_input_dim",
            "cross_attention_dim",
            "down_block_types",
            "up_block_types",
            "use_linear_projection",
            "norm_num_groups",
        ),
        "vae": ("block_out_channels", "layers_per_block", "scaling_factor", "norm_num_groups"),
        "text_encoder": ("hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act"),
        "text_encoder_2": (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "projection_dim",
            "intermediate_size",
            "hidden_act",
        ),
    }.items():
        shipped = shipped_config("sdxl", component)
        assert {k: derived[component][k] for k in keys} == {k: shipped[k] for k in keys}


def _tagged(state) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Each tensor replaced by a zero-memory tensor of its shape holding its index."""
    tags = {k: i for i, k in enumerate(state)}
    return {k: torch.tensor(float(tags[k])).expand(v.shape) for k, v in state.items()}, tags


def _assert_routed(converted, tagged_shapes, tags, component) -> None:
    assert _shapes(converted) == tagged_shapes, component
    wrong = [k for k, v in converted.items() if float(v.reshape(-1)[0]) != tags[k]]
    assert not wrong, f"{component}: diffusers routes {wrong[:3]} elsewhere than we do"


def test_diffusers_converts_our_unet_and_vae_keys_back(base) -> None:
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    unet_state, unet_tags = _tagged(base.unet.state_dict())
    unet_map = unet_key_map(base.unet.config, list(unet_state))
    ours = {unet_map[k]: v for k, v in unet_state.items()}
    converted = convert_ldm_unet_checkpoint(ours, dict(base.unet.config))
    _assert_routed(converted, _shapes(unet_state), unet_tags, "unet")

    vae_state, vae_tags = _tagged(base.vae.state_dict())
    vae_map = vae_key_map(base.vae.config, list(vae_state))
    ours = {
        vae_map[k]: (
            v.reshape(*v.shape, 1, 1) if ".mid.attn_1." in vae_map[k] and v.ndim == 2 else v
        )
        for k, v in vae_state.items()
    }
    converted = convert_ldm_vae_checkpoint(ours, dict(base.vae.config))
    _assert_routed(converted, _shapes(vae_state), vae_tags, "vae")


def test_diffusers_converts_our_text_encoder_keys_back(base, original) -> None:
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )

    text_state, tags = _tagged(base.text_encoder.state_dict())
    key_map = text1_key_map(list(text_state))
    converted = convert_ldm_clip_checkpoint({key_map[k]: v for k, v in text_state.items()})
    converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    _assert_routed(converted, _shapes(text_state), tags, "text_encoder")

    bigg = {k: v for k, v in original.items() if k.startswith("conditioner.embedders.1.")}
    converted = convert_open_clip_checkpoint(
        base.text_encoder_2, bigg, prefix="conditioner.embedders.1.model."
    )
    assert _shapes(converted) == _shapes(base.text_encoder_2.state_dict())
