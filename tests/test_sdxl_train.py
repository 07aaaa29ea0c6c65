"""SDXL training: the objective's conditioning against diffusers' SDXL pipeline, the
text cache, the fp32 VAE rule and ``tsuika train`` end to end on a tiny SDXL folder."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train_cli import draw_dataset, invoke, run_config, write_config
from tsuika.formats.kohya_lora import read_metadata
from tsuika.models import build_tiny_sdxl_model, save_diffusers
from tsuika.training.cache import TextCache
from tsuika.training.objective import SampleSize, batch_sizes, build_objective, vae_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a red circle", "a blue square on grass"]
SIZES = [SampleSize((96, 80), (8, 4), (64, 64)), SampleSize((64, 128), (0, 32), (64, 64))]


@pytest.fixture(scope="module")
def model():
    return build_tiny_sdxl_model(0)


@pytest.fixture(scope="module")
def pipe(model):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        text_encoder_2=model.text_encoder_2,
        tokenizer=model.tokenizer,
        tokenizer_2=model.tokenizer_2,
        unet=model.unet,
        scheduler=model.scheduler,
    )


def _objective(model, cache: TextCache | None = None):
    return build_objective(
        model,
        unet=model.unet,
        text_encoder=model.text_encoder,
        device=torch.device("cpu"),
        text_cache=cache,
    )


def test_conditioning_equals_diffusers_sdxl_pipeline(model, pipe) -> None:
    """Penultimate states of both encoders concatenated, encoder 2's pooled projection and
    the six size/crop ids, as ``StableDiffusionXLPipeline`` makes them."""
    with torch.no_grad():
        ours = _objective(model).condition(CAPTIONS, SIZES)
        embeds, _, pooled, _ = pipe.encode_prompt(
            CAPTIONS, device="cpu", do_classifier_free_guidance=False
        )
        time_ids = torch.cat(
            [
                pipe._get_add_time_ids(
                    s.original,
                    s.crop_top_left,
                    s.target,
                    dtype=torch.float32,
                    text_encoder_projection_dim=model.text_encoder_2.config.projection_dim,
                )
                for s in SIZES
            ]
        )
    assert ours["encoder_hidden_states"].shape == (2, 77, 32 + 64)
    torch.testing.assert_close(ours["encoder_hidden_states"], embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours["added_cond_kwargs"]["text_embeds"], pooled, atol=1e-6, rtol=0)
    assert torch.equal(ours["added_cond_kwargs"]["time_ids"], time_ids)
    assert time_ids[0].tolist() == [96, 80, 8, 4, 64, 64]


def test_the_unet_sees_the_time_ids(model) -> None:
    """The per-sample loss moves with the original size (the ids reach the UNet)."""
    obj = _objective(model)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    noise = torch.randn(2, 4, 16, 16, generator=g)
    steps = torch.tensor([100, 700])
    with torch.no_grad():
        a = obj.per_sample_loss(latents, noise, steps, obj.condition(CAPTIONS, SIZES))
        moved = [SampleSize((1024, 512), s.crop_top_left, s.target) for s in SIZES]
        b = obj.per_sample_loss(latents, noise, steps, obj.condition(CAPTIONS, moved))
    assert (a - b).abs().min() > 1e-6
    with pytest.raises(ValueError, match="SDXL conditioning needs each sample's original size"):
        obj.condition(CAPTIONS)


def test_text_cache_holds_both_states_and_the_pooled_embedding(model) -> None:
    calls: list[list[str]] = []
    cache = TextCache()
    obj = _objective(model, cache)
    real = obj.conditioning.encode

    def counting(captions):
        calls.append(list(captions))
        return real(captions)

    object.__setattr__(obj.conditioning, "encode", counting)
    with torch.no_grad():
        first = obj.condition(CAPTIONS, SIZES)
        again = obj.condition(list(reversed(CAPTIONS)), SIZES)
        plain = _objective(model).condition(CAPTIONS, SIZES)
    assert calls == [[CAPTIONS[0]], [CAPTIONS[1]]]  # once per caption
    assert torch.equal(again["encoder_hidden_states"][0], first["encoder_hidden_states"][1])
    assert torch.equal(
        again["added_cond_kwargs"]["text_embeds"][1], first["added_cond_kwargs"]["text_embeds"][0]
    )
    for key in ("encoder_hidden_states",):
        torch.testing.assert_close(first[key], plain[key], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        first["added_cond_kwargs"]["text_embeds"],
        plain["added_cond_kwargs"]["text_embeds"],
        atol=1e-6,
        rtol=0,
    )


def test_batch_sizes_from_the_loader_or_the_bucket() -> None:
    reported = {
        "captions": ["a", "b"],
        "bucket": (96, 64),  # (width, height)
        "original_size": [(300, 400), (128, 96)],
        "crop_top_left": [(0, 12), (5, 0)],
    }
    assert [s.time_ids for s in batch_sizes(reported)] == [
        (300, 400, 0, 12, 64, 96),
        (128, 96, 5, 0, 64, 96),
    ]
    bare = {"captions": ["a"], "bucket": (96, 64)}
    assert batch_sizes(bare)[0].time_ids == (64, 96, 0, 0, 64, 96)
    pixels = {"captions": ["a"], "pixels": torch.zeros(1, 3, 40, 56)}
    assert batch_sizes(pixels)[0].time_ids == (40, 56, 0, 0, 40, 56)


def test_sdxl_vae_encodes_in_float32_under_fp16_unless_named_safe() -> None:
    assert vae_dtype("sdxl", torch.float16) == torch.float32
    assert vae_dtype("sdxl", torch.float16, fp16_safe=True) == torch.float16
    assert vae_dtype("sdxl", torch.bfloat16) == torch.bfloat16
    assert vae_dtype("sd1", torch.float16) == torch.float16


def test_sdxl_scaling_factor_comes_from_the_model(model) -> None:
    obj = _objective(model)
    assert obj.scaling_factor == pytest.approx(0.13025)
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        raw = model.vae.encode(pixels).latent_dist.mode()
    torch.testing.assert_close(obj.encode(pixels), raw * 0.13025)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def sdxl_folder(model, tmp_path_factory) -> Path:
    return save_diffusers(model, tmp_path_factory.mktemp("sdxl") / "tiny_sdxl")


@pytest.fixture(scope="module")
def trained(sdxl_folder: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("run")
    data = draw_dataset(root / "data", n=5)
    cfg = run_config(
        sdxl_folder,
        data,
        root / "out",
        method={
            "name": "lora",
            "rank": 4,
            "alpha": 2,
            "dropout": 0.0,
            "train_text_encoder": True,
        },
        training={"steps": 3, "save_every": 0, "gradient_accumulation": 1},
        validation={"split": 0.2, "every": 3},
    )
    result = invoke(str(write_config(root / "run.toml", cfg)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((root / "out" / "summary.json").read_text())
    return {"summary": summary, "cfg": cfg}


def test_tsuika_train_sdxl_lora_end_to_end(trained: dict, sdxl_folder: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from tsuika.methods.lora import LoraConfig, LoraMethod
    from tsuika.models import FAMILIES, load_base_model

    summary = trained["summary"]
    assert summary["steps_done"] == 3
    assert all(math.isfinite(v) and v > 0 for _, v in summary["train_loss"])
    assert [s for s, _ in summary["val_loss"]] == [3] and math.isfinite(summary["val_loss"][0][1])
    file = summary["final_file"]
    names = {k.split(".")[0] for k in load_file(file)}
    assert any(n.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0") for n in names)
    assert any(n.startswith("lora_te1_text_model_encoder_layers_") for n in names)
    assert any(n.startswith("lora_te2_text_model_encoder_layers_") for n in names)
    assert read_metadata(file)["ss_base_model_version"] == "sdxl_base_v1-0"  # kohya's value

    # the trained file: diffusers' SDXL pipeline and our layers agree
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 96, generator=g)
    added = {"text_embeds": torch.randn(1, 48, generator=g), "time_ids": torch.ones(1, 6) * 64}
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder), local_files_only=True)
    with torch.no_grad():
        before = pipe.unet(x, 500, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        pipe.load_lora_weights(file)
        theirs = pipe.unet(x, 500, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    model = load_base_model(sdxl_folder, families=FAMILIES)
    method = LoraMethod(LoraConfig(rank=4, alpha=2, train_text_encoder=True))
    method.prepare(model)
    method.load_file(file)
    model.unet.eval()
    with torch.no_grad():
        ours = model.unet(x, 500, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    tolerance = 1e-6
    assert (ours - before).abs().max() > 100 * tolerance
    torch.testing.assert_close(ours, theirs, atol=tolerance, rtol=0)


def test_hypernetwork_on_sdxl_trains_for_the_named_width(sdxl_folder: Path, tmp_path: Path) -> None:
    """Modules for the concatenated context width (SDXL base: 2048; here 32 + 64) when
    ``dims`` names it; SD's default widths are refused naming the model's."""
    from tsuika.formats.a1111_hypernetwork import load_hypernetwork_file

    data = draw_dataset(tmp_path / "data", n=2)
    cfg = run_config(sdxl_folder, data, tmp_path / "out")
    cfg["method"] = {"name": "hypernetwork"}
    cfg["training"].update(steps=2, save_every=0, gradient_accumulation=1)
    result = invoke(str(write_config(tmp_path / "default.toml", cfg)))
    assert result.exit_code != 0
    assert "its context widths are [64, 96]" in result.output
    cfg["method"]["dims"] = [96]
    result = invoke(str(write_config(tmp_path / "run.toml", cfg)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert all(math.isfinite(v) for _, v in summary["train_loss"])
    assert sorted(load_hypernetwork_file(summary["final_file"]).layers) == [96]

    # and generate applies it on SDXL (the hooked cross-attention reads the 96-wide context)
    from tsuika.generation.run import generate

    common = dict(prompt="a circle", steps=2, seed=1, cfg=3.0, device="cpu")
    plain = generate(sdxl_folder, **common)[0].image
    hooked = generate(sdxl_folder, hypernetworks=[f"{summary['final_file']}:1.0"], **common)[
        0
    ].image
    assert (
        "<hypernet:"
        in generate(sdxl_folder, hypernetworks=[summary["final_file"]], **common)[0].parameters
    )
    difference = np.abs(np.asarray(plain, np.float32) - np.asarray(hooked, np.float32))
    assert difference.max() > 4  # 16 levels in the run this was written on


def test_gradient_checkpointing_gives_the_same_sdxl_run(
    trained: dict, sdxl_folder: Path, tmp_path: Path
) -> None:
    """The switch SDXL needs on small GPUs (UNet and both text encoders checkpointed)
    changes memory, not the result: the same losses and file as the run without it."""
    cfg = json.loads(json.dumps(trained["cfg"]))
    cfg["output"]["dir"] = str(tmp_path / "out")
    cfg["training"]["gradient_checkpointing"] = True
    result = invoke(str(write_config(tmp_path / "run.toml", cfg)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    want = [v for _, v in trained["summary"]["train_loss"]]
    assert [v for _, v in summary["train_loss"]] == pytest.approx(want, abs=1e-5)
    expected, got = load_file(trained["summary"]["final_file"]), load_file(summary["final_file"])
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0, msg=key)


def test_sample_grids_decode_with_the_vae_in_its_own_dtype(model) -> None:
    """Training's sample pictures: the same pixels as diffusers' SDXL pipeline in float32,
    and a UNet in a half dtype next to a float32 VAE (SDXL's placement under fp16) works."""
    from tsuika.models.pipeline import ddim_pipeline
    from tsuika.training.sampling import sample_pictures

    options = dict(width=64, height=64, steps=2, cfg=3.0, seed=5)
    ours = sample_pictures(model, ["a red circle"], **options)
    pipe = ddim_pipeline(model)
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = pipe(
            ["a red circle"],
            height=64,
            width=64,
            num_inference_steps=2,
            guidance_scale=3.0,
            latents=latents,
            output_type="pil",
        ).images
    assert np.array_equal(np.asarray(ours[0]), np.asarray(theirs[0]))

    half = copy.deepcopy(model)
    for module in (half.unet, half.text_encoder, half.text_encoder_2):
        module.to(torch.bfloat16)
    (picture,) = sample_pictures(half, ["a red circle"], dtype=torch.bfloat16, **options)
    assert picture.size == (64, 64) and half.vae.dtype == torch.float32
