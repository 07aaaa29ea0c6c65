"""``tsuika convert`` on SDXL adapters.

A kohya SDXL LoRA (kohya's SDXL trainer's names: original UNet blocks,
``lora_te1`` / ``lora_te2``; LoCon convs; alpha != rank) converted to the
diffusers format is read by diffusers' ``StableDiffusionXLPipeline.load_lora_weights``
into the same UNet and text-encoder outputs as our model with the kohya file
applied; converting back gives kohya's names and tensors again. A diffusers
SDXL file from a training run comes back with kohya's SDXL names. SDXL
embeddings exist in one layout, and the others are refused by name.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from test_sdxl_lora import sdxl_outputs
from tsuika.convert import ConvertError, convert, detect, kohya_module_path
from tsuika.formats.kohya_lora import read_metadata
from tsuika.methods.lora import LoraConfig, LoraMethod, apply_lora_file
from tsuika.methods.lora.names import original_to_unet_module
from tsuika.models import build_tiny_sdxl_model, save_diffusers
from tsuika.models.ldm_names import UnknownModuleError, unet_module_to_original
from tsuika.models.tiny import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5
OPTIONS = dict(rank=4, alpha=2, conv_rank=2, conv_alpha=1, train_text_encoder=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    model = build_tiny_sdxl_model(0)
    folder = save_diffusers(model, tmp_path_factory.mktemp("sdxl") / "base")
    return {"model": model, "folder": folder}


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory) -> dict:
    """Our model with a LoRA everywhere (random up weights, as after training), in both formats."""
    model = copy.deepcopy(base["model"])
    method = LoraMethod(LoraConfig.from_dict(OPTIONS))
    method.prepare(model)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, layer in method.named_layers():
            layer.lora_up.weight.copy_(torch.randn(layer.lora_up.weight.shape, generator=gen) * 0.1)
    folder = tmp_path_factory.mktemp("lora")
    return {
        "model": model,
        "kohya": method.save(folder, "kohya", "kohya", {}),
        "diffusers": method.save(folder, "diffusers", "diffusers", {}),
    }


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("build", [lambda: build_tiny_sdxl_model(0), lambda: build_tiny_model(0)])
def test_original_block_names_map_back_to_every_unet_module(build) -> None:
    """original_to_unet_module inverts unet_module_to_original on every module of the
    tiny SDXL and SD UNets (resnets, attentions, samplers, time and label embeddings)."""
    unet = build().unet
    up_attention = ["CrossAttn" in t for t in unet.config.up_block_types]
    mapped = 0
    for path, _ in unet.named_modules():
        try:
            original = unet_module_to_original(path, up_attention=up_attention)
        except UnknownModuleError:
            continue
        assert original_to_unet_module(original) == path, original
        mapped += 1
    assert mapped > 500


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
         ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")),
        ("lora_unet_input_blocks_7_1_transformer_blocks_1_attn2_to_out_0",
         ("unet", "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_out.0")),
        ("lora_unet_middle_block_1_transformer_blocks_1_ff_net_0_proj",
         ("unet", "mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj")),
        ("lora_unet_middle_block_2_in_layers_2", ("unet", "mid_block.resnets.1.conv1")),
        ("lora_unet_output_blocks_0_1_proj_in", ("unet", "up_blocks.0.attentions.0.proj_in")),
        ("lora_unet_output_blocks_2_2_conv", ("unet", "up_blocks.0.upsamplers.0.conv")),
        ("lora_unet_output_blocks_8_0_skip_connection",
         ("unet", "up_blocks.2.resnets.2.conv_shortcut")),
        ("lora_unet_input_blocks_1_0_emb_layers_1", ("unet", "down_blocks.0.resnets.0.time_emb_proj")),
        ("lora_unet_input_blocks_3_0_op", ("unet", "down_blocks.0.downsamplers.0.conv")),
        ("lora_unet_label_emb_0_2", ("unet", "add_embedding.linear_2")),
        ("lora_te1_text_model_encoder_layers_1_self_attn_q_proj",
         ("text_encoder", "text_model.encoder.layers.1.self_attn.q_proj")),
        ("lora_te2_text_model_encoder_layers_0_mlp_fc1",
         ("text_encoder_2", "text_model.encoder.layers.0.mlp.fc1")),
    ],
)  # fmt: skip
def test_kohya_sdxl_names_to_module_paths(name, expected) -> None:
    assert kohya_module_path(name) == expected


def test_an_original_name_without_a_diffusers_module_is_refused() -> None:
    with pytest.raises(ConvertError, match="lora_unet_middle_block_3_in_layers_2: .*middle_block"):
        kohya_module_path("lora_unet_middle_block_3_in_layers_2")
    with pytest.raises(ConvertError, match="input_blocks.4.7"):
        kohya_module_path("lora_unet_input_blocks_4_7_proj_in")


# --------------------------------------------------------------------------- LoRA


def test_kohya_sdxl_to_diffusers_loads_in_the_sdxl_pipeline(base, trained, tmp_path) -> None:
    from diffusers import StableDiffusionXLPipeline

    out = convert(trained["kohya"], tmp_path / "d.safetensors", "diffusers")
    assert detect(out) == "lora-diffusers"
    keys = set(load_file(out))
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "unet.down_blocks.0.resnets.0.conv1.lora_B.weight" in keys  # LoCon
    assert any(k.startswith("text_encoder.text_model.encoder.layers.1.") for k in keys)
    assert any(k.startswith("text_encoder_2.text_model.encoder.layers.1.") for k in keys)
    assert not any("input_blocks" in k or "lora_te" in k for k in keys)

    pipe = StableDiffusionXLPipeline.from_pretrained(str(base["folder"]), local_files_only=True)
    pipe.load_lora_weights(str(out))
    theirs = sdxl_outputs(pipe)
    ours, plain = sdxl_outputs(trained["model"]), sdxl_outputs(base["model"])
    for name in ours:
        assert (ours[name] - plain[name]).abs().max() > 100 * TOLERANCE, name
        torch.testing.assert_close(theirs[name], ours[name], atol=TOLERANCE, rtol=0, msg=name)


def test_kohya_diffusers_kohya_gives_the_same_tensors(trained, tmp_path) -> None:
    """alpha / rank is 0.5 here (rank 4 alpha 2, conv rank 2 alpha 1): folding it into up
    and taking it out again is exact, so the round trip is bit for bit."""
    mid = convert(trained["kohya"], tmp_path / "d.safetensors", "diffusers")
    back = convert(mid, tmp_path / "k.safetensors", "kohya")
    want, got = load_file(trained["kohya"]), load_file(back)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    header = read_metadata(back)
    assert header["ss_base_model_version"] == "sdxl_base_v1-0"
    assert "tsuika_kohya_alphas" not in header  # our bookkeeping stays in the diffusers file
    # the diffusers file itself carries scale 1 (readers that ignore the header are right too)
    adapter = json.loads(read_metadata(mid)["lora_adapter_metadata"])
    assert adapter["unet.lora_alpha"] == adapter["unet.r"] == 4
    assert adapter["text_encoder_2.lora_alpha"] == adapter["text_encoder_2.r"] == 4


def test_our_diffusers_sdxl_file_to_kohya_gets_kohyas_sdxl_names(base, trained, tmp_path) -> None:
    """A diffusers SDXL file (what output.format = "diffusers" writes) -> the names kohya's
    SDXL trainer writes; our apply and diffusers' kohya reader give the trained outputs."""
    from diffusers import StableDiffusionXLPipeline

    out = convert(trained["diffusers"], tmp_path / "k.safetensors", "kohya")
    names = {k.split(".")[0] for k in load_file(out)}
    assert names == {k.split(".")[0] for k in load_file(trained["kohya"])}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    expected = sdxl_outputs(trained["model"])
    applied = copy.deepcopy(base["model"])
    apply_lora_file(applied, out)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(base["folder"]), local_files_only=True)
    pipe.load_lora_weights(str(out))
    theirs = sdxl_outputs(pipe)
    for name, want in expected.items():
        torch.testing.assert_close(
            sdxl_outputs(applied)[name], want, atol=TOLERANCE, rtol=0, msg=name
        )
        torch.testing.assert_close(theirs[name], want, atol=TOLERANCE, rtol=0, msg=name)


def test_a_unet_only_diffusers_file_is_known_as_sdxl_by_its_blocks(trained, tmp_path) -> None:
    """No text_encoder_2 and no header: the cross-attending first up block says SDXL."""
    state = {k: v for k, v in load_file(trained["diffusers"]).items() if k.startswith("unet.")}
    src = tmp_path / "unet_only.safetensors"
    save_file(state, str(src))
    names = {k.split(".")[0] for k in load_file(convert(src, tmp_path / "k.safetensors", "kohya"))}
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_q" in names
    assert not any("up_blocks" in n or "down_blocks" in n for n in names)


def test_cli_convert_sdxl_lora(trained, tmp_path) -> None:
    from tsuika.cli import main

    out = tmp_path / "d.safetensors"
    args = ["convert", str(trained["kohya"]), str(out), "--to", "diffusers"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out) and detect(out) == "lora-diffusers"
    assert any(k.startswith("text_encoder_2.") for k in load_file(out))


# --------------------------------------------------------------------------- embeddings


def _sdxl_embedding(path: Path) -> Path:
    gen = torch.Generator().manual_seed(1)
    tensors = {"clip_l": torch.randn(2, 768, generator=gen), "clip_g": torch.randn(2, 1280)}
    save_file(tensors, str(path))
    return path


def test_sdxl_embedding_converts_to_its_one_layout(tmp_path) -> None:
    src = _sdxl_embedding(tmp_path / "sdxl_emb.safetensors")
    out = convert(src, tmp_path / "copy.safetensors", "safetensors")
    want, got = load_file(src), load_file(out)
    assert got.keys() == {"clip_l", "clip_g"}
    for key in want:
        assert torch.equal(got[key], want[key])


@pytest.mark.parametrize(("to", "suffix"), [("diffusers", ".safetensors"), ("a1111", ".pt")])
def test_sdxl_embedding_to_a_one_encoder_layout_is_refused(tmp_path, to, suffix) -> None:
    from tsuika.cli import main

    src = _sdxl_embedding(tmp_path / "sdxl_emb.safetensors")
    dst = tmp_path / f"out{suffix}"
    with pytest.raises(ConvertError, match=r"sdxl_emb\.safetensors: an SDXL embedding"):
        convert(src, dst, to)
    result = CliRunner().invoke(main, ["convert", str(src), str(dst), "--to", to])
    assert result.exit_code != 0
    assert "--to safetensors" in result.output and "text_encoder_2" in result.output
    assert not dst.exists()


def test_a_broken_alpha_record_is_refused_naming_the_file(trained, tmp_path) -> None:
    from safetensors import safe_open

    mid = convert(trained["kohya"], tmp_path / "d.safetensors", "diffusers")
    with safe_open(str(mid), "pt") as f:
        state, header = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata={**header, "tsuika_kohya_alphas": '{"unet.x": 0}'})
    with pytest.raises(ConvertError, match=r"bad\.safetensors: header tsuika_kohya_alphas"):
        convert(bad, tmp_path / "k.safetensors", "kohya")
