"""``tsuika merge``: LoRAs and a VAE baked into an original-layout file that diffusers reads."""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from test_generate_thirdparty import outputs, write_kohya
from tsuika.merge import merge
from tsuika.methods.lora.stack import apply_lora_files
from tsuika.models import BaseModel, load_base_model, save_diffusers, save_single_file
from tsuika.models.tiny import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("merge")
    model = build_tiny_model(seed=0)
    other = build_tiny_model(seed=5)  # its VAE is the override
    save_diffusers(model, folder / "config")
    return {
        "base": model,
        "model": save_single_file(model, folder / "tiny.safetensors"),
        "vae": save_single_file(other, folder / "other-vae.safetensors"),
        "other": other,
        "config": folder / "config",
        "lora_a": write_kohya(folder / "a.safetensors", seed=1),
        "lora_b": write_kohya(folder / "b.safetensors", seed=2, rank=3, alpha=6.0),
    }


@torch.no_grad()
def test_merged_file_in_diffusers_equals_our_unmerged_loras(files, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = merge(
        files["model"],
        tmp_path / "merged.safetensors",
        loras=[f"{files['lora_a']}:0.7", f"{files['lora_b']}:-1.2"],
        vae=files["vae"],
    )
    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.diffusion_model.input_blocks.1.1.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    pipe = StableDiffusionPipeline.from_single_file(
        str(out), config=str(files["config"]), local_files_only=True
    )
    ours = copy.deepcopy(files["base"])
    apply_lora_files(ours, [(files["lora_a"], 0.7), (files["lora_b"], -1.2)])
    theirs = BaseModel(pipe.unet, pipe.vae, pipe.text_encoder, ours.tokenizer, pipe.scheduler)
    for mine, their in zip(outputs(ours), outputs(theirs), strict=True):
        torch.testing.assert_close(their, mine, atol=1e-4, rtol=0)
    base_out = outputs(files["base"])[1]
    assert (outputs(theirs)[1] - base_out).abs().max() > 1e-3  # the LoRAs are in it
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        pipe.vae.decode(latents).sample,
        files["other"].vae.decode(latents).sample,
        atol=1e-5,
        rtol=0,
    )
    reloaded = load_base_model(out)  # and ours reads it back
    torch.testing.assert_close(outputs(reloaded)[1], outputs(ours)[1], atol=1e-4, rtol=0)


def test_cli_merge_and_bad_lora(files, tmp_path):
    from tsuika.cli import main

    out = tmp_path / "m.safetensors"
    args = [
        "merge",
        "--model",
        str(files["model"]),
        "--lora",
        str(files["lora_a"]),
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file
    from test_generate_thirdparty import kohya_tensors

    state = kohya_tensors()
    key = next(k for k in state if k.endswith("lora_up.weight"))
    state[key] = state[key] * float("nan")
    save_file(state, str(bad))
    result = CliRunner().invoke(
        main, [*args[:3], "--lora", str(bad), "--out", str(tmp_path / "x.safetensors")]
    )
    assert result.exit_code != 0 and key in result.output
