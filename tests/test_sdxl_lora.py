"""LoRA on SDXL against diffusers' ``StableDiffusionXLPipeline.load_lora_weights``.

A LoRA on the UNet and both text encoders (random up weights, as after
training; alpha != rank so a wrong scale shows), saved as a kohya file with
kohya's SDXL names and loaded by diffusers into the base folder, must give our
wrapped model's outputs; the effect of the LoRA is far above the tolerance.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tsuika.formats.kohya_lora import read_metadata
from tsuika.methods.lora import LoraConfig, LoraMethod, apply_lora_file, remove
from tsuika.models import build_tiny_sdxl_model, save_diffusers
from tsuika.models.base import BaseModel

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5
OPTIONS = dict(rank=4, alpha=2, conv_rank=2, conv_alpha=1, train_text_encoder=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    model = build_tiny_sdxl_model(0)
    folder = save_diffusers(model, tmp_path_factory.mktemp("sdxl") / "base")
    return {"model": model, "folder": folder}


def _trained(base: BaseModel) -> tuple[BaseModel, LoraMethod]:
    model = copy.deepcopy(base)
    method = LoraMethod(LoraConfig.from_dict(OPTIONS))
    method.prepare(model)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, layer in method.named_layers():
            layer.lora_up.weight.copy_(torch.randn(layer.lora_up.weight.shape, generator=gen) * 0.1)
    return model, method


@torch.no_grad()
def sdxl_outputs(model) -> dict[str, torch.Tensor]:
    """The UNet's and both text encoders' outputs on fixed inputs, for ``model``: ours or a
    diffusers pipeline (both have ``unet``, ``text_encoder``, ``text_encoder_2``)."""
    unet, text_encoder, text_encoder_2 = model.unet, model.text_encoder, model.text_encoder_2
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 49408, (2, 9), generator=gen)
    latents = torch.randn(2, 4, 16, 16, generator=gen)
    context = torch.randn(2, 9, 96, generator=gen)
    added = {
        "text_embeds": torch.randn(2, 48, generator=gen),
        "time_ids": torch.tensor([[80.0, 64.0, 8.0, 0.0, 64.0, 64.0]] * 2),
    }
    return {
        "text_1": text_encoder(ids)[0],
        "text_2": text_encoder_2(ids)[0],
        "unet": unet(latents, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample,
    }


@pytest.fixture(scope="module")
def saved(base, tmp_path_factory) -> dict:
    model, method = _trained(base["model"])
    path = method.save(tmp_path_factory.mktemp("lora"), "sdxl_lora", "kohya", {})
    return {"model": model, "method": method, "path": path}


def test_kohya_file_names_modules_as_kohyas_sdxl_trainer(saved) -> None:
    names = {key.split(".")[0] for key in load_file(saved["path"])}
    unet = {n for n in names if n.startswith("lora_unet_")}
    # the original (sgm) block names, never diffusers' down_blocks/mid_block/up_blocks
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in unet
    assert "lora_unet_input_blocks_7_1_transformer_blocks_1_attn2_to_out_0" in unet
    assert "lora_unet_middle_block_1_transformer_blocks_1_ff_net_2" not in unet  # ff not asked
    assert "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_k" in unet
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_v" in unet
    assert "lora_unet_input_blocks_1_0_in_layers_2" in unet  # LoCon: resnet conv1
    assert "lora_unet_output_blocks_2_2_conv" in unet  # the up sampler after attention
    assert not any("down_blocks" in n or "up_blocks" in n or "mid_block" in n for n in unet)
    te1 = {n for n in names if n.startswith("lora_te1_text_model_encoder_layers_")}
    te2 = {n for n in names if n.startswith("lora_te2_text_model_encoder_layers_")}
    assert len(te1) == len(te2) == 2 * 6  # 2 layers x q, k, v, out_proj, fc1, fc2
    assert "lora_te1_text_model_encoder_layers_1_self_attn_out_proj" in te1
    assert names == unet | te1 | te2
    meta = read_metadata(saved["path"])
    assert meta["ss_base_model_version"].startswith("sdxl")


def test_diffusers_load_lora_weights_matches_our_model(base, saved) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(base["folder"]), local_files_only=True)
    pipe.load_lora_weights(str(saved["path"]))
    model = saved["model"]
    ours = sdxl_outputs(model)
    plain = sdxl_outputs(base["model"])
    theirs = sdxl_outputs(pipe)
    for name in ours:
        assert (ours[name] - plain[name]).abs().max() > 100 * TOLERANCE, name
        torch.testing.assert_close(theirs[name], ours[name], atol=TOLERANCE, rtol=0, msg=name)


def test_our_readers_take_the_file_back(base, saved) -> None:
    """LoraMethod.load_file and apply_lora_file (generate, merge) read kohya's SDXL names."""
    model = saved["model"]
    expected = sdxl_outputs(model)

    fresh = copy.deepcopy(base["model"])
    method = LoraMethod(LoraConfig.from_dict(OPTIONS))
    method.prepare(fresh)
    method.load_file(saved["path"])
    got = sdxl_outputs(fresh)

    applied = copy.deepcopy(base["model"])
    layers = apply_lora_file(applied, saved["path"])
    assert len(layers) == len(list(saved["method"].named_layers()))
    by_apply = sdxl_outputs(applied)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=TOLERANCE, rtol=0, msg=name)
        torch.testing.assert_close(by_apply[name], expected[name], atol=TOLERANCE, rtol=0)
    for root in (applied.unet, applied.text_encoder, applied.text_encoder_2):
        remove(root)
    plain = sdxl_outputs(base["model"])
    after = sdxl_outputs(applied)
    for name in plain:
        torch.testing.assert_close(after[name], plain[name], atol=TOLERANCE, rtol=0)


def test_diffusers_named_sdxl_unet_is_read_too(base, saved, tmp_path: Path) -> None:
    """A kohya file whose SDXL UNet keys use diffusers paths (older converters) applies the same."""
    from safetensors.torch import save_file
    from tsuika.models.ldm_names import unet_module_to_original

    model = base["model"]
    up_attention = ["CrossAttn" in t for t in model.unet.config.up_block_types]
    renamed = {}
    for path, _ in model.unet.named_modules():
        try:
            original = unet_module_to_original(path, up_attention=up_attention)
        except KeyError:
            continue
        renamed["lora_unet_" + original.replace(".", "_")] = "lora_unet_" + path.replace(".", "_")
    state = {}
    for key, tensor in load_file(saved["path"]).items():
        name, _, suffix = key.partition(".")
        state[f"{renamed.get(name, name)}.{suffix}"] = tensor
    assert any("down_blocks" in k for k in state)
    path = tmp_path / "diffusers_names.safetensors"
    save_file(state, str(path))
    applied = copy.deepcopy(model)
    apply_lora_file(applied, path)
    ours = saved["model"]
    expected = sdxl_outputs(ours)["unet"]
    got = sdxl_outputs(applied)["unet"]
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)
