"""Original single-file layout: write, read back, and diffusers' own loader agrees."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tsuika.models import (
    build_tiny_model,
    load_base_model,
    load_clip_tokenizer,
    save_diffusers,
    save_single_file,
)
from tsuika.models.base import BaseModel


def outputs(model: BaseModel) -> dict[str, torch.Tensor]:
    """UNet, VAE (encode + decode) and text-encoder outputs on fixed inputs."""
    g = torch.Generator().manual_seed(1)
    factor = model.vae_scale_factor
    latents = torch.randn(1, 4, 64 // factor, 64 // factor, generator=g)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    ids = model.tokenizer(
        ["a red circle"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        text = model.text_encoder(ids).last_hidden_state
        unet = model.unet(latents, torch.tensor([500]), encoder_hidden_states=text).sample
        encoded = model.vae.encode(image).latent_dist.mean
        decoded = model.vae.decode(latents).sample
    return {"text": text, "unet": unet, "vae_encode": encoded, "vae_decode": decoded}


def assert_same_outputs(a: BaseModel, b: BaseModel) -> None:
    oa, ob = outputs(a), outputs(b)
    for name in oa:
        assert torch.equal(oa[name], ob[name]), name


VARIANTS = [
    {},
    {"vae_factor": 4, "unet_channels": (32, 64), "prediction_type": "v_prediction"},
    {
        "vae_factor": 2,
        "unet_channels": (16, 24, 40),
        "cross_attention_dim": 48,
        "text_hidden": 48,
        "text_layers": 1,
    },
    {  # the tiny world's shape: one-layer VAE blocks, 4 channels a norm group
        "unet_channels": (32, 64, 64, 64),
        "cross_attention_dim": 48,
        "text_hidden": 48,
        "vae_channels": (16, 16, 32, 32),
        "vae_layers": 1,
    },
]


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=["sd1-shape", "factor4-v", "odd-widths", "tiny-world"]
)
def test_round_trip_single_file(tmp_path, variant) -> None:
    model = build_tiny_model(3, **variant)
    path = save_single_file(model, tmp_path / "model.safetensors")
    loaded = load_base_model(path)
    assert loaded.kind == "sd1" and loaded.source == path
    assert loaded.prediction_type == model.prediction_type
    assert loaded.scheduler.config.prediction_type == model.prediction_type
    assert loaded.vae_scale_factor == model.vae_scale_factor
    assert_same_outputs(model, loaded)
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_layout_keys_are_the_original_ones(tmp_path) -> None:
    path = save_single_file(build_tiny_model(), tmp_path / "m.safetensors", dtype=torch.float16)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        q = f.get_tensor("first_stage_model.encoder.mid.attn_1.q.weight")
    assert q.dtype == torch.float16 and q.ndim == 4 and q.shape[2:] == (1, 1)
    expected = {
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.8.2.conv.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.0.block.2.conv1.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.mid.block_2.conv2.weight",
        "first_stage_model.quant_conv.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    }
    assert expected <= keys
    assert not [k for k in keys if k.startswith("cond_stage_model.transformer.encoder.")]


def test_metadata_is_kept(tmp_path) -> None:
    path = save_single_file(build_tiny_model(), tmp_path / "m.safetensors", metadata={"note": "hi"})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["note"] == "hi" and "tsuika.configs" in meta


def test_loads_without_stored_configs_and_without_text_model_level(tmp_path) -> None:
    """A file from another tool: shapes alone give the configs; `text_model.` optional."""
    model = build_tiny_model(5)
    path = save_single_file(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        state = {
            k.replace("transformer.text_model.", "transformer."): f.get_tensor(k) for k in f.keys()
        }  # noqa: SIM118
    bare = tmp_path / "other.safetensors"
    save_file(state, str(bare))
    loaded = load_base_model(bare)
    assert_same_outputs(model, loaded)


def test_diffusers_from_single_file_reads_our_file(tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    model = build_tiny_model(7)
    save_diffusers(model, tmp_path / "folder")
    path = save_single_file(model, tmp_path / "m.safetensors")
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(tmp_path / "folder"), local_files_only=True
    )
    theirs = BaseModel(pipe.unet, pipe.vae, pipe.text_encoder, model.tokenizer, pipe.scheduler)
    assert_same_outputs(model, theirs)


def test_diffusers_folder_round_trip(tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    model = build_tiny_model(2, prediction_type="v_prediction")
    folder = save_diffusers(model, tmp_path / "folder")
    loaded = load_base_model(folder)
    assert (loaded.kind, loaded.prediction_type) == ("sd1", "v_prediction")
    assert_same_outputs(model, loaded)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    theirs = BaseModel(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler)
    assert_same_outputs(model, theirs)
    save_diffusers(build_tiny_model(9), folder)  # replacing an existing folder
    assert not torch.equal(outputs(load_base_model(folder))["unet"], outputs(model)["unet"])


def test_sd2_layout_round_trip(tmp_path) -> None:
    model = build_tiny_model(4, prediction_type="v_prediction")
    model.kind = "sd2"
    model.tokenizer = load_clip_tokenizer("sd2")
    path = save_single_file(model, tmp_path / "sd2.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        qkv = f.get_tensor("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight")
    assert qkv.shape == (96, 32)
    assert "cond_stage_model.model.transformer.resblocks.2.ln_1.weight" in keys  # unused pad layer
    assert not [k for k in keys if k.startswith("cond_stage_model.transformer.")]
    loaded = load_base_model(path)
    assert (loaded.kind, loaded.prediction_type) == ("sd2", "v_prediction")
    assert loaded.tokenizer.pad_token_id == 0
    assert_same_outputs(model, loaded)


def test_dtype_argument(tmp_path) -> None:
    path = save_single_file(build_tiny_model(), tmp_path / "m.safetensors")
    loaded = load_base_model(path, dtype=torch.bfloat16)
    for module in (loaded.unet, loaded.vae, loaded.text_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
