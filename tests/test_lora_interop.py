"""LoRA files against their readers: diffusers' ``load_lora_weights`` and A1111's key rules.

The key test: a LoRA we train, saved in either format and loaded by diffusers
into an untouched copy of the same base model, must give the outputs of our
own wrapped model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import StableDiffusionPipeline
from tsuika.formats.a1111_names import a1111_module_names, find_a1111_module, kohya_to_compvis
from tsuika.formats.kohya_lora import load_kohya_lora, read_metadata
from tsuika.methods.lora import LoraConfig, LoraMethod, apply_lora_file, remove
from tsuika.models.single_file import to_original_state_dict
from tsuika.models.tiny import build_tiny_model

CASES = {
    "attention": dict(rank=4, alpha=2),
    "locon+proj+ff": dict(
        rank=4, alpha=8, conv_rank=2, conv_alpha=1, targets=["attention", "proj", "ff"]
    ),
    "text_encoder": dict(rank=3, alpha=3, train_text_encoder=True),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return build_tiny_model(seed=0)


def _trained(base, options: dict) -> tuple[object, LoraMethod]:
    """A copy of ``base`` with LoRA whose up weights are random (as after training)."""
    model = copy.deepcopy(base)
    method = LoraMethod(LoraConfig.from_dict(options))
    method.prepare(model)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, layer in method.named_layers():
            layer.lora_up.weight.copy_(torch.randn(layer.lora_up.weight.shape, generator=gen) * 0.1)
    return model, method


def _inputs():
    gen = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    ids = torch.randint(0, 49408, (2, 9), generator=gen)
    return latents, ids


@torch.no_grad()
def _outputs(unet, text_encoder):
    latents, ids = _inputs()
    hidden = text_encoder(ids)[0]
    return hidden, unet(latents, 25, encoder_hidden_states=hidden).sample


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
@pytest.mark.parametrize("case", list(CASES))
def test_diffusers_load_lora_weights_matches_our_model(base, tmp_path, case, fmt):
    model, method = _trained(base, CASES[case])
    path = method.save(tmp_path, "mine", fmt, {"ss_training_comment": "test"})
    assert path == tmp_path / "mine.safetensors"
    ours_hidden, ours_out = _outputs(model.unet, model.text_encoder)
    base_hidden, base_out = _outputs(base.unet, base.text_encoder)
    assert (ours_out - base_out).abs().max() > 1e-3  # the LoRA does something
    if CASES[case].get("train_text_encoder"):
        assert (ours_hidden - base_hidden).abs().max() > 1e-4

    pipe = StableDiffusionPipeline(
        vae=base.vae,
        text_encoder=copy.deepcopy(base.text_encoder),
        tokenizer=base.tokenizer,
        unet=copy.deepcopy(base.unet),
        scheduler=base.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(str(path))
    theirs_hidden, theirs_out = _outputs(pipe.unet, pipe.text_encoder)
    torch.testing.assert_close(theirs_hidden, ours_hidden, atol=1e-4, rtol=0)
    torch.testing.assert_close(theirs_out, ours_out, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
@pytest.mark.parametrize("case", ["locon+proj+ff", "text_encoder"])
def test_apply_lora_file_reproduces_the_trained_model(base, tmp_path, case, fmt):
    model, method = _trained(base, CASES[case])
    path = method.save(tmp_path, "mine", fmt, {})
    ours_hidden, ours_out = _outputs(model.unet, model.text_encoder)
    other = copy.deepcopy(base)
    layers = apply_lora_file(other, path)
    assert len(layers) == sum(len(v) for v in method.wrapped_modules.values())
    hidden, out = _outputs(other.unet, other.text_encoder)
    torch.testing.assert_close(hidden, ours_hidden, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, ours_out, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="already carries a LoRA"):
        apply_lora_file(other, path)
    for layer in layers.values():
        layer.multiplier = 0.0
    assert torch.equal(
        _outputs(other.unet, other.text_encoder)[1], _outputs(base.unet, base.text_encoder)[1]
    )
    remove(other.unet)
    remove(other.text_encoder)
    assert torch.equal(
        _outputs(other.unet, other.text_encoder)[1], _outputs(base.unet, base.text_encoder)[1]
    )


@pytest.mark.parametrize("case", list(CASES))
def test_every_kohya_key_lands_on_a_real_a1111_module(base, tmp_path, case):
    _, method = _trained(base, CASES[case])
    modules = load_kohya_lora(method.save(tmp_path, "k", "kohya", {}))
    original = to_original_state_dict(base)
    names = a1111_module_names(original)
    shapes = {
        "_".join(k.split(".")[1:-1]): v.shape for k, v in original.items() if k.endswith(".weight")
    }
    assert len(modules) == sum(len(v) for v in method.wrapped_modules.values())
    for name, w in modules.items():
        target = find_a1111_module(name, names)
        assert target is not None, f"{name} -> {kohya_to_compvis(name)} is no A1111 module"
        shape = shapes[target]
        assert (shape[0], shape[1]) == (w.up.shape[0], w.down.shape[1]), name
        assert tuple(shape[2:]) == tuple(w.down.shape[2:]), name
        if name.startswith("lora_te"):
            assert name.startswith("lora_te_text_model_encoder_layers_"), name


def test_kohya_metadata_is_kohyas(base, tmp_path):
    _, method = _trained(base, CASES["locon+proj+ff"])
    method.steps = 12
    meta = read_metadata(method.save(tmp_path, "meta", "kohya", {"ss_seed": "5"}))
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "8")
    assert meta["ss_network_args"] == '{"conv_dim": "2", "conv_alpha": "1"}'
    assert (meta["ss_base_model_version"], meta["ss_v2"]) == ("sd_v1", "False")
    assert (meta["ss_output_name"], meta["ss_steps"], meta["ss_seed"]) == ("meta", "12", "5")


@pytest.mark.parametrize(
    ("kohya", "compvis"),
    [
        (
            "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_k",
            "diffusion_model_input_blocks_5_1_transformer_blocks_0_attn2_to_k",
        ),
        (
            "lora_unet_down_blocks_2_resnets_0_conv_shortcut",
            "diffusion_model_input_blocks_7_0_skip_connection",
        ),
        ("lora_unet_down_blocks_0_downsamplers_0_conv", "diffusion_model_input_blocks_3_0_op"),
        (
            "lora_unet_mid_block_resnets_1_time_emb_proj",
            "diffusion_model_middle_block_2_emb_layers_1",
        ),
        ("lora_unet_mid_block_attentions_0_proj_in", "diffusion_model_middle_block_1_proj_in"),
        ("lora_unet_up_blocks_0_resnets_2_conv1", "diffusion_model_output_blocks_2_0_in_layers_2"),
        ("lora_unet_up_blocks_0_upsamplers_0_conv", "diffusion_model_output_blocks_2_1_conv"),
        ("lora_unet_up_blocks_2_upsamplers_0_conv", "diffusion_model_output_blocks_8_2_conv"),
        (
            "lora_unet_up_blocks_3_attentions_2_proj_out",
            "diffusion_model_output_blocks_11_1_proj_out",
        ),
        (
            "lora_te_text_model_encoder_layers_11_mlp_fc2",
            "transformer_text_model_encoder_layers_11_mlp_fc2",
        ),
        (
            "lora_te_encoder_layers_0_mlp_fc2",
            "lora_te_encoder_layers_0_mlp_fc2",
        ),  # no rule: unmatched
    ],
)
def test_a1111_rewrite_table(kohya, compvis):
    assert kohya_to_compvis(kohya) == compvis


def test_a1111_sd2_text_encoder_rules():
    names = {"model_transformer_resblocks_3_attn", "model_transformer_resblocks_3_mlp_c_fc"}
    assert find_a1111_module("lora_te_text_model_encoder_layers_3_mlp_fc1", names, is_sd2=True) == (
        "model_transformer_resblocks_3_mlp_c_fc"
    )
    assert find_a1111_module(
        "lora_te_text_model_encoder_layers_3_self_attn_q_proj", names, is_sd2=True
    ) == ("model_transformer_resblocks_3_attn")
    assert (
        find_a1111_module("lora_te_text_model_encoder_layers_4_mlp_fc1", names, is_sd2=True) is None
    )
