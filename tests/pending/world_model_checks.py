"""PENDING checks of the tiny world's shipped model and of `tsuika demo` on it.

Not collected by pytest (the file name does not start with test_): the model
that `python -m tsuika.world.pretrain` produced in the first session did not yet
draw what it is asked for (red circle: colour 0.00, shape 0.00; see the issue
note), so it was not shipped. Once a model that passes `test_draws_what_it_is_asked`
is shipped under python/tsuika/world/assets/tiny-sd/, move these tests back into
tests/test_world_base.py and tests/test_demo.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from tsuika.cli import main
from tsuika.models import load_base_model
from tsuika.world import base_model_path, load_evaluator
from tsuika.world.base import HELD_OUT_SHAPES
from tsuika.world.pretrain import folder_bytes
from tsuika.world.pretrain_measure import generate_arrays, score_prompt


@pytest.fixture(scope="module")
def model():
    return load_base_model(base_model_path())


def test_path_is_the_shipped_diffusers_folder() -> None:
    folder = base_model_path()
    assert (folder / "model_index.json").is_file()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir(), part


def test_under_15_mb_in_fp16() -> None:
    folder = base_model_path()
    assert folder_bytes(folder) < 15_000_000
    for weights in folder.rglob("*.safetensors"):
        with safe_open(str(weights), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"F16"}, (weights, dtypes)


def test_sd1_shape(model) -> None:
    unet, vae = model.unet.config, model.vae.config
    assert unet.down_block_types == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet.up_block_types == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert unet.layers_per_block == 2 and len(unet.block_out_channels) == 4
    assert len(vae.block_out_channels) == 4 and vae.layers_per_block == 2
    assert model.vae_scale_factor == 8 and vae.latent_channels == 4
    assert unet.cross_attention_dim == model.text_encoder.config.hidden_size
    assert model.text_encoder.config.vocab_size == len(model.tokenizer) == 49408
    assert model.kind == "sd1" and model.prediction_type == "epsilon"
    # the latent scaling factor was measured (1/std of latents), not SD's 0.18215
    assert vae.scaling_factor != pytest.approx(0.18215)


def test_diffusers_pipeline_loads_it_and_agrees(model) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(base_model_path()),
        local_files_only=True,
        safety_checker=None,
        torch_dtype=torch.float32,
    )
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = model.tokenizer(["a red circle"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = model.unet(x, 500, model.text_encoder(ids)[0]).sample
        theirs = pipe.unet(x, 500, pipe.text_encoder(ids)[0]).sample
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_record_names_held_out_shape_and_training() -> None:
    info = json.loads((base_model_path() / "tsuika_world.json").read_text())
    assert info["held_out_shapes"] == list(HELD_OUT_SHAPES) == ["heart"]
    assert info["denoiser"]["steps"] > 0 and info["seconds"] > 0


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red circle on a white background", {"colour": "red", "shape": "circle"}),
        ("a blue square", {"colour": "blue", "shape": "square"}),
    ],
)
def test_draws_what_it_is_asked(model, prompt: str, expected: dict[str, str]) -> None:
    images = generate_arrays(model, prompt, 8, steps=15, cfg=6.0, seed=7)
    scores = score_prompt(load_evaluator(), images, expected)
    assert scores["colour"] >= 0.6, scores
    assert scores["shape"] >= 0.4, scores


def test_short_demo_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "3", "--pictures", "4", "--eval", "2"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3 and report["concept"]["shape"] in HELD_OUT_SHAPES
    for when in ("before", "after"):
        assert set(report[when]) == {"fidelity", "composition", "known_prompt"}
        assert all(0.0 <= v <= 1.0 for v in report[when].values())
    assert report["prep"]["images"] == 4 and report["prep"]["with_errors"] == 0
    lora = Path(report["lora"])
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("lora_unet_") for k in keys)
    assert any(k.startswith("lora_te_text_model_") for k in keys)  # train_text_encoder on
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (200 + 2 * 128, 5 * 128)  # 5 rows of 2 pictures, zoomed 2x
    text = (out / "report.md").read_text()
    assert "| fidelity (heart) | a zkz |" in text
    assert str(out / "grid.png") in result.output
