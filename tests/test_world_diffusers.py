"""The shipped tiny model with diffusers' and transformers' defaults, as a user types it.

``StableDiffusionPipeline.from_pretrained(base_model_path())`` must run on the CPU,
and diffusers' example scripts (textual_inversion.py loads the text encoder with
``CLIPTextModel.from_pretrained`` and trains its token table) must get an fp32
text encoder: an fp16 one failed with "mat1 and mat2 must have the same dtype"
and trained to ``loss=nan``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tsuika.world import Scene, base_model_path, render
from tsuika.world.pretrain import folder_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_pipeline_with_diffusers_defaults_runs_in_fp32() -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(base_model_path()))
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert {p.dtype for p in part.parameters()} == {torch.float32}, type(part).__name__
    images = pipe(
        "a red circle on a white background",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (1, 64, 64, 3)
    assert np.isfinite(images).all() and images.std() > 0.01


def test_stored_fp16_values_load_unchanged_and_folder_stays_small() -> None:
    from transformers import CLIPTextModel

    folder = base_model_path()
    assert folder_bytes(folder) < 15_000_000
    encoder = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder")
    loaded = encoder.state_dict()
    with safe_open(str(folder / "text_encoder" / "model.safetensors"), "pt") as f:
        for key in f.keys():
            stored = f.get_tensor(key)
            assert stored.dtype == torch.float16, key
            assert torch.equal(loaded[key], stored.float()), key


def _textual_inversion_steps(steps: int) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    """diffusers' textual_inversion.py in miniature: default loading, one new token,
    only the token table trains (AdamW), epsilon loss on a drawn heart."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = str(base_model_path())
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    tokenizer.add_tokens(["<zkz>"])
    token_id = tokenizer.convert_tokens_to_ids("<zkz>")
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[token_id] = table[tokenizer.convert_tokens_to_ids("shape</w>")]
    before = table.detach().clone()
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    encoder.requires_grad_(False)
    table.requires_grad_(True)
    optimizer = torch.optim.AdamW([table], lr=5e-3)
    pixels = torch.from_numpy(render(Scene("heart", "red"))).permute(2, 0, 1)[None]
    pixels = pixels.float() / 127.5 - 1
    ids = tokenizer(
        ["a photo of <zkz>"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        latents = vae.encode(pixels).latent_dist.sample(generator) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, t)
        states = encoder(ids)[0]
        loss = F.mse_loss(unet(noisy, t, states).sample.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, before, table.detach()


def test_textual_inversion_on_default_loaded_encoder_gives_finite_loss() -> None:
    losses, before, after = _textual_inversion_steps(4)
    assert all(np.isfinite(losses)), losses
    new_row = after.shape[0] - 1
    assert torch.isfinite(after).all()
    assert (after[new_row] - before[new_row]).abs().max() > 1e-4
