"""LoRA files against their readers: diffusers' ``load_lora_weights`` and A1111's key rules.

The key test: a LoRA we train, saved in either format and loaded by diffusers
into an untouched copy of the same base model, must give the outputs of our
own wrapped model.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from tsuika.formats.a1111_names import find_a1111_module, kohya_to_compvis
from tsuika.formats.kohya_lora import read_metadata
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


# --- A1111's key rewrite, written out here as the reference ----------------------------------
# AUTOMATIC1111 extensions-builtin/Lora/networks.py ``convert_diffusers_name_to_compvis`` (SD 1.x
# text encoder), as a table: (pattern over the kohya module name, original-layout name). The
# resnet suffixes are A1111's ``suffix_conversion["resnets"]``.
A1111_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0",
                "norm2": "out_layers_0", "time_emb_proj": "emb_layers_1",
                "conv_shortcut": "skip_connection"}  # fmt: skip


def _rest(kind: str, rest: str) -> str:
    return A1111_RESNET.get(rest, rest) if kind == "resnets" else rest


def _sub(kind: str) -> int:
    return 1 if kind == "attentions" else 0


A1111_RULES = [
    (r"lora_unet_conv_in(.*)", lambda m: f"diffusion_model_input_blocks_0_0{m[1]}"),
    (r"lora_unet_conv_out(.*)", lambda m: f"diffusion_model_out_2{m[1]}"),
    (r"lora_unet_time_embedding_linear_(\d+)(.*)",
     lambda m: f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"),
    (r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_{_sub(m[2])}_"
     f"{_rest(m[2], m[4])}"),
    (r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_"
     f"{_rest(m[1], m[3])}"),
    (r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{_sub(m[2])}_"
     f"{_rest(m[2], m[4])}"),
    (r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv",
     lambda m: f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"),
    (r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
     lambda m: f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"),
    (r"lora_te_text_model_encoder_layers_(\d+)_(.+)",
     lambda m: f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"),
]  # fmt: skip


def a1111_rewrite(name: str) -> str:
    """The original-layout module name A1111 looks ``name`` up under (itself: no rule)."""
    for pattern, build in A1111_RULES:
        if m := re.fullmatch(pattern, name):
            return build(m)
    return name


@pytest.fixture(scope="module")
def real_layout(base) -> dict[str, torch.Tensor]:
    """The tiny model's original-layout weights as A1111 names its modules
    (``model.diffusion_model.`` and ``cond_stage_model.`` dropped, ``.`` -> ``_``).

    Written by our single-file writer, so first checked against diffusers' own
    original-layout readers: they must turn it back into exactly our UNet and text encoder.
    """
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
    )

    original = to_original_state_dict(base)
    unet = convert_ldm_unet_checkpoint(original, dict(base.unet.config))
    text = convert_ldm_clip_checkpoint(original)
    for theirs, ours in ((unet, base.unet.state_dict()),
                         (text, base.text_encoder.state_dict())):  # fmt: skip
        ours = {k.removeprefix("text_model."): v for k, v in ours.items()}
        theirs = {k.removeprefix("text_model."): v for k, v in theirs.items()}
        theirs.pop("embeddings.position_ids", None)
        assert theirs.keys() == ours.keys()
        assert all(torch.equal(theirs[k].reshape(v.shape), v) for k, v in ours.items())
    out = {}
    for key, value in original.items():
        for prefix in ("model.", "cond_stage_model."):
            if key.startswith(prefix) and key.endswith(".weight"):
                out["_".join(key[len(prefix) :].split(".")[:-1])] = value
    return out


def _kohya_names(model) -> dict[str, torch.nn.Module]:
    """UNet and text-encoder modules with weights under their kohya names (SD 1.x)."""
    names = {f"lora_unet_{n.replace('.', '_')}": m for n, m in model.unet.named_modules()}
    for name, module in model.text_encoder.named_modules():
        names[f"lora_te_text_model_{name.removeprefix('text_model.').replace('.', '_')}"] = module
    return {n: m for n, m in names.items() if isinstance(getattr(m, "weight", None), torch.Tensor)}


def test_a1111_rule_table_reaches_every_module_of_the_model(base, real_layout):
    """Each UNet / text-encoder module with a weight (every block kind: resnets with their
    norms, convs, time embedding and shortcut, attentions, proj_in/out, ff, down/upsamplers,
    conv_in/out, CLIP layers) lands, under A1111's rules, on the original module holding the
    very same weight."""
    modules = {n: m for n, m in _kohya_names(base).items()
               if "_encoder_layers_" in n or n.startswith("lora_unet_")}  # fmt: skip
    kinds = ("attn1_to_q", "attn2_to_k", "proj_in", "proj_out", "ff_net_0_proj", "ff_net_2",
             "conv1", "conv2", "norm1", "norm2", "time_emb_proj", "conv_shortcut",
             "downsamplers_0_conv", "upsamplers_0_conv", "mid_block", "conv_in", "conv_out",
             "time_embedding_linear_1", "self_attn_q_proj", "mlp_fc2")  # fmt: skip
    assert all(any(kind in n for n in modules) for kind in kinds)
    assert len(modules) > 200
    assert {n for n in modules if a1111_rewrite(n) == n} == {"lora_unet_conv_norm_out"}  # no rule
    del modules["lora_unet_conv_norm_out"]
    for name, module in modules.items():
        target = a1111_rewrite(name)
        assert target in real_layout, f"{name} -> {target}: no such original module"
        weight = real_layout[target]
        assert torch.equal(weight.reshape(module.weight.shape), module.weight), name


@pytest.mark.parametrize("case", list(CASES))
def test_every_kohya_key_lands_on_a_real_a1111_module(base, real_layout, tmp_path, case):
    """Every module a LoRA file names is found by A1111's rules (the table above) in the
    original layout, on the module whose weight it was trained on, with matching shapes."""
    _, method = _trained(base, CASES[case])
    tensors = load_file(str(method.save(tmp_path, "k", "kohya", {})))
    names = {
        k.removesuffix(".lora_down.weight") for k in tensors if k.endswith(".lora_down.weight")
    }
    assert len(names) == sum(len(v) for v in method.wrapped_modules.values()) > 0
    modules = _kohya_names(base)
    for name in names:
        target = a1111_rewrite(name)
        assert target in real_layout, f"{name} -> {target} is no A1111 module"
        weight, down, up = real_layout[target], tensors[f"{name}.lora_down.weight"], tensors[
            f"{name}.lora_up.weight"]  # fmt: skip
        assert torch.equal(weight.reshape(modules[name].weight.shape), modules[name].weight), name
        assert (weight.shape[0], weight.shape[1]) == (up.shape[0], down.shape[1]), name
        assert tuple(weight.shape[2:]) == tuple(down.shape[2:]), name
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
