"""diffusers UNet names -> original (ldm) names, as AUTOMATIC1111 rewrites them."""

from __future__ import annotations

import pytest
from tsuika.models import build_tiny_model, unet_key_to_original, unet_module_to_original
from tsuika.models.ldm_names import UnknownModuleError

CASES = [
    (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    ),
    ("down_blocks.0.attentions.1.proj_in", "input_blocks.2.1.proj_in"),
    ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("down_blocks.2.resnets.1.time_emb_proj", "input_blocks.8.0.emb_layers.1"),
    ("down_blocks.3.resnets.1.norm2", "input_blocks.11.0.out_layers.0"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.2.downsamplers.0.conv", "input_blocks.9.0.op"),
    ("mid_block.resnets.0.norm1", "middle_block.0.in_layers.0"),
    (
        "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
        "middle_block.1.transformer_blocks.0.ff.net.2",
    ),
    ("mid_block.resnets.1.conv2", "middle_block.2.out_layers.3"),
    ("up_blocks.0.resnets.2.conv1", "output_blocks.2.0.in_layers.2"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),
    (
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k",
        "output_blocks.5.1.transformer_blocks.0.attn2.to_k",
    ),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.2.upsamplers.0.conv", "output_blocks.8.2.conv"),
    ("up_blocks.3.attentions.0.proj_out", "output_blocks.9.1.proj_out"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),  # SDXL's text_time embedding
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_in", "input_blocks.0.0"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
]


@pytest.mark.parametrize(("diffusers", "original"), CASES)
def test_module_names(diffusers: str, original: str) -> None:
    assert unet_module_to_original(diffusers) == original


@pytest.mark.parametrize(
    "bad", ["down_blocks.0.resnets.0.nonsense", "class_embedding.linear_1", "foo"]
)
def test_unknown_modules_are_named(bad: str) -> None:
    with pytest.raises(UnknownModuleError, match=bad.split(".")[-1]):
        unet_module_to_original(bad)


def test_every_unet_key_of_a_tiny_model_maps_uniquely() -> None:
    keys = list(build_tiny_model().unet.state_dict())
    mapped = [unet_key_to_original(k) for k in keys]
    assert len(set(mapped)) == len(keys)
    assert all(m.startswith("model.diffusion_model.") for m in mapped)
    # 12 input blocks, 3 middle parts and 12 output blocks, as in SD 1.x
    inputs = {m.split(".")[3] for m in mapped if ".input_blocks." in m}
    outputs = {m.split(".")[3] for m in mapped if ".output_blocks." in m}
    assert inputs == {str(i) for i in range(12)} and outputs == {str(i) for i in range(12)}
