"""`tsuika train` with method.name = "dreambooth" end to end on a tiny model.

Checks the engine's wiring of DreamBooth's hooks too: class pictures are
generated into class_data, every micro-batch gets its paired class batch,
class captions never pass through the caption hook, and the files load in
diffusers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from tsuika.cli.train import train as train_command
from tsuika.methods.dreambooth import DreamBoothMethod

CLASS_PROMPT = "a photo of a shape"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    folder = root / "1_sks shape"
    folder.mkdir()
    for i, colour in enumerate([(220, 40, 40), (40, 170, 60), (40, 70, 210)]):
        image = Image.new("RGB", (64, 64), (245, 245, 245))
        ImageDraw.Draw(image).ellipse((10 + i, 12, 50 + i, 52), fill=colour)
        image.save(folder / f"{i}.png")
    (folder / "0.txt").write_text("sks shape, red\n")
    return root


@pytest.fixture
def spies(monkeypatch) -> dict[str, list[Any]]:
    calls: dict[str, list[Any]] = {"paired": [], "captions": []}
    real_paired, real_caption = DreamBoothMethod.paired_batch, DreamBoothMethod.transform_caption

    def paired_batch(self, batch, step):
        out = real_paired(self, batch, step)
        size = batch["pixels"].shape[0] if "pixels" in batch else batch["latents"].shape[0]
        calls["paired"].append((step, size, None if out is None else out["pixels"].shape[0]))
        return out

    def transform_caption(self, caption, class_tokens, rng):
        calls["captions"].append(caption)
        return real_caption(self, caption, class_tokens, rng)

    monkeypatch.setattr(DreamBoothMethod, "paired_batch", paired_batch)
    monkeypatch.setattr(DreamBoothMethod, "transform_caption", transform_caption)
    return calls


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(
    tmp_path: Path, model: Path, data: Path, method: dict, output: dict, **training: Any
) -> dict:
    cfg = {
        "model": {"path": str(model)},
        "data": {
            "path": str(data),
            "resolution": 64,
            "min_bucket": 32,
            "max_bucket": 128,
            "bucket_step": 32,
        },
        "method": {
            "name": "dreambooth",
            "instance_prompt": "a photo of sks shape",
            "class_prompt": CLASS_PROMPT,
            "class_data": str(tmp_path / "class"),
            "num_class_images": 3,
            "class_generation_steps": 2,
            **method,
        },
        "training": {
            "steps": 2,
            "batch_size": 2,
            "gradient_accumulation": 2,
            "learning_rate": 1e-4,
            "min_snr_gamma": 5.0,
            "save_every": 0,
            **training,
        },
        "output": {"dir": str(tmp_path / "out"), "name": "sks", **output},
    }
    result = CliRunner().invoke(train_command, [str(write_config(tmp_path / "run.toml", cfg))])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((tmp_path / "out" / "summary.json").read_text())


def check_wiring(calls: dict[str, list[Any]], tmp_path: Path) -> None:
    pictures = sorted(p.name for p in (tmp_path / "class").glob("*.png"))
    assert pictures == ["class-00000.png", "class-00001.png", "class-00002.png"]
    assert len(calls["paired"]) == 4  # steps x gradient_accumulation micro-batches
    # one class picture per instance picture (a partial last batch of the epoch included)
    assert all(paired == size for _, size, paired in calls["paired"])
    # the hook sees every instance caption, never a class caption: once per picture (3)
    # before the first step, as the frozen text encoders' outputs are cached, then per step
    assert len(calls["captions"]) == 3 + sum(size for _, size, _ in calls["paired"])
    assert CLASS_PROMPT not in calls["captions"]


def test_full_dreambooth_run(tiny_model_dir: Path, dataset: Path, tmp_path: Path, spies) -> None:
    from diffusers import StableDiffusionPipeline

    summary = run(tmp_path, tiny_model_dir, dataset, {}, {"format": "diffusers+single"})
    check_wiring(spies, tmp_path)
    out = tmp_path / "out"
    assert summary["method"] == "dreambooth" and summary["steps_done"] == 2
    assert summary["final_file"] == str(out / "sks.safetensors")
    assert all(v > 0 for _, v in summary["train_loss"])

    folder = StableDiffusionPipeline.from_pretrained(str(out / "sks"), local_files_only=True)
    single = StableDiffusionPipeline.from_single_file(
        str(out / "sks.safetensors"), config=str(tiny_model_dir), local_files_only=True
    )
    base = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), local_files_only=True)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        outputs = [p.unet(x, torch.tensor([300]), ctx).sample for p in (folder, single, base)]
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    assert (outputs[0] - outputs[2]).abs().max() > 1e-6  # the UNet trained
    for name, value in base.text_encoder.state_dict().items():  # the text encoder did not
        assert torch.equal(folder.text_encoder.state_dict()[name], value), name


def test_dreambooth_lora_run(tiny_model_dir: Path, dataset: Path, tmp_path: Path, spies) -> None:
    """The kohya file DreamBooth-LoRA writes (rank 4, alpha 2: scale 0.5) gives diffusers'
    UNet the output of our UNet with the same file applied."""
    from diffusers import StableDiffusionPipeline
    from tsuika.methods.lora.stack import apply_lora_files
    from tsuika.models import load_base_model

    method = {"lora": True, "rank": 4, "alpha": 2}
    summary = run(tmp_path, tiny_model_dir, dataset, method, {}, learning_rate=1e-2)
    check_wiring(spies, tmp_path)
    final = tmp_path / "out" / "sks.safetensors"
    assert summary["final_file"] == str(final)
    tensors = load_file(str(final))
    assert any(k.endswith(".lora_up.weight") for k in tensors)
    assert all(k.startswith("lora_unet_") for k in tensors)
    assert {float(v) for k, v in tensors.items() if k.endswith(".alpha")} == {2.0}
    assert not (tmp_path / "out" / "sks").exists()  # no full model for DreamBooth-LoRA

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), local_files_only=True)
    ours = load_base_model(tiny_model_dir)
    apply_lora_files(ours, [(final, 1.0)])
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        plain = pipe.unet(x, torch.tensor([300]), ctx).sample
        pipe.load_lora_weights(str(final))
        theirs = pipe.unet(x, torch.tensor([300]), ctx).sample
        mine = ours.unet(x, torch.tensor([300]), ctx).sample
    tolerance = 1e-5
    assert (mine - plain).abs().max() > 100 * tolerance  # the trained LoRA acts
    torch.testing.assert_close(theirs, mine, atol=tolerance, rtol=0)
