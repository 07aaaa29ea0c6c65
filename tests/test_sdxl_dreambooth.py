"""DreamBooth on SDXL end to end: class pictures from the SDXL pipeline, the UNet and both
text encoders trained, a diffusers folder plus one single file in the original ``sgm``
layout that ``StableDiffusionXLPipeline.from_single_file`` reads equal to the folder, and
that file alone in a folder trains again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_train_cli import draw_dataset, invoke, run_config, write_config
from tsuika.models import build_tiny_sdxl_model, save_diffusers

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5


@torch.no_grad()
def _outputs(pipe) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 49408, (1, 9), generator=gen)
    latents = torch.randn(1, 4, 16, 16, generator=gen)
    context = torch.randn(1, 9, 96, generator=gen)
    added = {"text_embeds": torch.randn(1, 48, generator=gen), "time_ids": torch.ones(1, 6) * 64}
    unet = pipe.unet(latents, 400, encoder_hidden_states=context, added_cond_kwargs=added)
    return {
        "unet": unet.sample,
        "text_1": pipe.text_encoder(ids)[0],
        "text_2": pipe.text_encoder_2(ids)[0],
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sdxl_db")
    base = save_diffusers(build_tiny_sdxl_model(0), root / "base")
    data = draw_dataset(root / "data", n=2)
    cfg = run_config(base, data, root / "out")
    cfg["method"] = {
        "name": "dreambooth",
        "instance_prompt": "a photo of sks shape",
        "class_prompt": "a photo of a shape",
        "class_data": str(root / "class"),
        "num_class_images": 2,
        "class_generation_steps": 2,
        "train_text_encoder": True,
    }
    cfg["training"].update(
        steps=2, save_every=0, gradient_accumulation=1, batch_size=1, learning_rate=1e-3
    )
    result = invoke(str(write_config(root / "run.toml", cfg)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((root / "out" / "summary.json").read_text())
    return {"root": root, "base": base, "summary": summary, "data": data}


def test_class_pictures_come_from_the_sdxl_pipeline(trained) -> None:
    pictures = sorted((trained["root"] / "class").glob("class-*.png"))
    assert len(pictures) == 2
    with Image.open(pictures[0]) as image:
        assert image.size == (64, 64)  # the tiny model's native size


def test_single_file_reads_equal_to_the_folder_in_diffusers(trained) -> None:
    from diffusers import StableDiffusionXLPipeline

    out = trained["root"] / "out"
    name = trained["summary"]["config"]["output"]["name"]
    single, folder = out / f"{name}.safetensors", out / name
    assert trained["summary"]["final_file"] == str(single)
    from_file = StableDiffusionXLPipeline.from_single_file(
        str(single), config=str(folder), local_files_only=True
    )
    from_folder = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
    base = StableDiffusionXLPipeline.from_pretrained(str(trained["base"]), local_files_only=True)
    ours, theirs, before = _outputs(from_file), _outputs(from_folder), _outputs(base)
    for key in ours:
        assert (theirs[key] - before[key]).abs().max() > 100 * TOLERANCE, key  # it trained
        torch.testing.assert_close(ours[key], theirs[key], atol=TOLERANCE, rtol=0, msg=key)


def test_the_single_file_alone_trains_again(trained, tmp_path: Path) -> None:
    out = trained["root"] / "out"
    name = trained["summary"]["config"]["output"]["name"]
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / f"{name}.safetensors", alone / "model.safetensors")
    cfg = run_config(alone / "model.safetensors", trained["data"], tmp_path / "again")
    cfg["training"].update(steps=1, save_every=0, gradient_accumulation=1)
    result = invoke(str(write_config(tmp_path / "again.toml", cfg)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary["steps_done"] == 1 and Path(summary["final_file"]).is_file()
