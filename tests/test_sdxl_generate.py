"""``tsuika merge`` and ``tsuika generate`` on SDXL, read / recomputed by diffusers' SDXL pipeline.

* merge: our merged single file, loaded by ``StableDiffusionXLPipeline.from_single_file``,
  gives the UNet and text-encoder outputs of diffusers' ``load_lora_weights`` of the same
  kohya file on the base folder (the issue's check);
* generate: our sampling loop's latents equal the SDXL pipeline's for the same
  starting noise, prompts, sampler and guidance (pooled embeds and size ids included).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from tsuika.cli import main
from tsuika.methods.lora import LoraConfig, LoraMethod
from tsuika.models import build_tiny_sdxl_model, save_diffusers

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny SDXL folder and a kohya LoRA (UNet with LoCon + both text encoders)."""
    root = tmp_path_factory.mktemp("sdxl_merge")
    base = build_tiny_sdxl_model(0)
    folder = save_diffusers(base, root / "base")
    model = copy.deepcopy(base)
    method = LoraMethod(
        LoraConfig.from_dict(
            dict(rank=4, alpha=2, conv_rank=2, conv_alpha=1, train_text_encoder=True)
        )
    )
    method.prepare(model)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, layer in method.named_layers():
            layer.lora_up.weight.copy_(torch.randn(layer.lora_up.weight.shape, generator=gen) * 0.1)
    lora = method.save(root, "style", "kohya", {})
    return {"root": root, "folder": folder, "lora": lora, "base": base}


@torch.no_grad()
def _outputs(pipe) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 49408, (1, 9), generator=gen)
    latents = torch.randn(1, 4, 16, 16, generator=gen)
    context = torch.randn(1, 9, 96, generator=gen)
    added = {
        "text_embeds": torch.randn(1, 48, generator=gen),
        "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
    }
    return {
        "unet": pipe.unet(
            latents, 400, encoder_hidden_states=context, added_cond_kwargs=added
        ).sample,
        "text_1": pipe.text_encoder(ids)[0],
        "text_2": pipe.text_encoder_2(ids)[0],
    }


def test_merged_sdxl_file_equals_diffusers_load_lora_weights(files) -> None:
    from diffusers import StableDiffusionXLPipeline

    out = files["root"] / "merged.safetensors"
    result = CliRunner().invoke(
        main,
        ["merge", "--model", str(files["folder"]), "--lora", str(files["lora"]), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    merged = StableDiffusionXLPipeline.from_single_file(
        str(out), config=str(files["folder"]), local_files_only=True
    )
    plain = StableDiffusionXLPipeline.from_pretrained(str(files["folder"]), local_files_only=True)
    before = _outputs(plain)
    plain.load_lora_weights(str(files["lora"]))
    theirs, ours = _outputs(plain), _outputs(merged)
    for name in theirs:
        assert (theirs[name] - before[name]).abs().max() > 100 * TOLERANCE, name
        torch.testing.assert_close(ours[name], theirs[name], atol=TOLERANCE, rtol=0, msg=name)


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_generate_latents_equal_the_sdxl_pipeline(files, sampler: str) -> None:
    """Our float32 loop (two encoders, pooled embeds, size ids, guidance) against
    ``StableDiffusionXLPipeline`` with the same scheduler and starting noise. A non-empty
    negative prompt: diffusers zeroes the states of an empty one, A1111 (and we) encode it."""
    from diffusers import StableDiffusionXLPipeline
    from tsuika.generation.denoise import denoise, encode_prompt_states, initial_noise
    from tsuika.generation.samplers import build_scheduler

    model = files["base"]
    prompt, negative = "a red circle", "blurry"
    cpu = torch.device("cpu")
    seeds = [11, 12]
    with torch.no_grad():
        cond = encode_prompt_states(model, [prompt], cpu).repeat(2)
        uncond = encode_prompt_states(model, [negative], cpu).repeat(2)
        ours = denoise(
            model, cond, uncond, seeds, latent_size=(16, 16), steps=4, cfg=5.0, sampler=sampler
        )
        pipe = StableDiffusionXLPipeline(
            vae=model.vae,
            text_encoder=model.text_encoder,
            text_encoder_2=model.text_encoder_2,
            tokenizer=model.tokenizer,
            tokenizer_2=model.tokenizer_2,
            unet=model.unet,
            scheduler=build_scheduler(sampler, model.scheduler.config),
        )
        pipe.set_progress_bar_config(disable=True)
        noise, generators = initial_noise((4, 16, 16), seeds)
        theirs = pipe(
            [prompt] * 2,
            negative_prompt=[negative] * 2,
            height=64,
            width=64,
            num_inference_steps=4,
            guidance_scale=5.0,
            latents=noise,
            generator=generators,
            output_type="latent",
        ).images
        no_size = denoise(
            model, cond, uncond, seeds, latent_size=(16, 16), steps=4, cfg=1.0, sampler=sampler
        )
    assert (ours - no_size).abs().max() > 100 * 1e-4  # guidance (and the negative) count
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_cli_generate_sdxl_with_a_lora(files, tmp_path: Path) -> None:
    out = tmp_path / "pictures"
    args = ["generate", "--model", str(files["folder"]), "--prompt", "a circle", "--steps", "2"]
    args += ["--seed", "3", "--out", str(out), "--width", "64", "--height", "48"]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 0, plain.output + repr(plain.exception)
    styled = CliRunner().invoke(main, args + ["--lora", f"{files['lora']}:1.0"])
    assert styled.exit_code == 0, styled.output + repr(styled.exception)
    first, second = sorted(out.glob("*.png"))
    with Image.open(first) as a, Image.open(second) as b:
        assert a.size == b.size == (64, 48)
        assert "<lora:style:1>" in b.info["parameters"]
        pixels_a = np.asarray(a.convert("RGB"), dtype=np.float32)
        pixels_b = np.asarray(b.convert("RGB"), dtype=np.float32)
    assert np.abs(pixels_a - pixels_b).max() > 10  # the LoRA changed the picture


def test_a_bare_vae_file_on_a_loaded_sdxl_model_gets_sdxl_scaling(files, tmp_path: Path) -> None:
    """A bare VAE file (no stored config) given with a model passed in loaded takes the
    model's family's latent scale (SDXL 0.13025, not SD's 0.18215), as with a model path."""
    from safetensors.torch import save_file
    from tsuika import generate
    from tsuika.models import save_single_file

    single = save_single_file(files["base"], tmp_path / "base.safetensors")
    prefix = "first_stage_model."
    bare = {k[len(prefix) :]: v for k, v in load_file(single).items() if k.startswith(prefix)}
    save_file(bare, str(tmp_path / "vae.safetensors"))
    kwargs = dict(steps=2, seed=4, width=64, height=64, vae=tmp_path / "vae.safetensors")
    loaded = generate(files["base"], "a circle", **kwargs)[0].image
    from_path = generate(files["folder"], "a circle", **kwargs)[0].image
    plain = generate(files["folder"], "a circle", **{**kwargs, "vae": None})[0].image
    a, b, c = (np.asarray(p, dtype=np.int16) for p in (loaded, from_path, plain))
    assert np.abs(b - c).max() <= 1  # the bare file is the model's own VAE, same scale
    assert np.abs(a - b).max() <= 1
