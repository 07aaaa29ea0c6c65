"""`tsuika train` end to end on a tiny model and a drawn dataset (and, slow, on SD 1.5's shape)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from tsuika.cli.train import train as train_command
from tsuika.models import build_tiny_model, save_diffusers
from tsuika.training import checkpoint as ckpt

COLOURS = [(220, 40, 40), (40, 170, 60), (40, 70, 210), (235, 200, 30)]


def draw_dataset(root: Path, n: int = 4) -> Path:
    """``n`` 64x64 pictures of a coloured circle with captions, in a kohya ``2_sks shape`` folder."""
    folder = root / "2_sks shape"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        draw_picture(folder / f"{i}.png", COLOURS[i % len(COLOURS)], i)
        (folder / f"{i}.txt").write_text(f"sks shape, a circle number {i}\n")
    return root


def draw_picture(path: Path, colour: tuple[int, int, int], offset: int = 0) -> None:
    image = Image.new("RGB", (64, 64), (245, 245, 245))
    ImageDraw.Draw(image).ellipse((10 + offset, 12, 50 + offset, 52), fill=colour)
    image.save(path)


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        for key, value in table.items():
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def run_config(model_path: Path, data_path: Path, out: Path, **overrides: dict[str, Any]) -> dict:
    cfg = {
        "model": {"path": str(model_path)},
        "data": {
            "path": str(data_path),
            "resolution": 64,
            "min_bucket": 32,
            "max_bucket": 128,
            "bucket_step": 32,
            "flip": True,
        },
        "method": {"name": "lora", "rank": 4, "alpha": 8, "dropout": 0.1},  # scale 2
        "training": {
            "steps": 4,
            "batch_size": 2,
            "gradient_accumulation": 2,
            "learning_rate": 1e-2,
            "save_every": 2,
            "lr_scheduler": "cosine",
            "lr_warmup_steps": 1,
            "min_snr_gamma": 5.0,
            "noise_offset": 0.05,
        },
        "output": {"dir": str(out), "name": "tiny_lora"},
    }
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(toml_text(cfg))
    return path


def invoke(*args: str):
    return CliRunner().invoke(train_command, list(args), catch_exceptions=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_diffusers(build_tiny_model(seed=0), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(tiny_model: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted run (4 steps, checkpoints at 2 and 4, samples at 4)."""
    root = tmp_path_factory.mktemp("run")
    cfg = run_config(
        tiny_model,
        dataset,
        root / "out",
        sample={"prompts": ["sks shape", "a circle"], "every": 4, "steps": 2},
    )
    result = invoke(str(write_config(root / "run.toml", cfg)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((root / "out" / "summary.json").read_text())
    return {"root": root, "summary": summary, "cfg": cfg, "output": result.output}


def test_run_writes_file_summary_checkpoints_samples_logs(trained: dict) -> None:
    out, summary = trained["root"] / "out", trained["summary"]
    assert summary["method"] == "lora" and summary["steps_done"] == 4
    assert [s for s, _ in summary["train_loss"]] == [1, 2, 3, 4]
    assert all(math.isfinite(v) and v > 0 for _, v in summary["train_loss"])
    assert summary["final_file"] == str(out / "tiny_lora.safetensors")
    assert Path(summary["final_file"]).is_file()
    assert [Path(p).name for p in summary["checkpoints"]] == ["step-2", "step-4"]
    assert summary["seconds_per_step"] > 0 and summary["peak_memory"]["rss_bytes"] > 0
    assert summary["config"]["training"]["steps"] == 4
    with Image.open(out / "samples" / "step-4.png") as grid:
        assert grid.size == (128, 64)  # two prompts side by side
    assert list((out / "logs").glob("events.out.tfevents.*"))
    assert "trained lora for 4 steps" in trained["output"]


def test_lora_file_loads_in_diffusers_and_matches_our_layers(
    trained: dict, tiny_model: Path
) -> None:
    from diffusers import StableDiffusionPipeline
    from tsuika.methods.lora import LoraConfig, LoraMethod
    from tsuika.models import load_base_model

    file = trained["summary"]["final_file"]
    g = torch.Generator().manual_seed(0)
    x, t, ctx = (
        torch.randn(1, 4, 8, 8, generator=g),
        torch.tensor([500]),
        torch.randn(1, 77, 32, generator=g),
    )
    pipe = StableDiffusionPipeline.from_pretrained(
        str(tiny_model), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=ctx).sample
        pipe.load_lora_weights(file)
        theirs = pipe.unet(x, t, encoder_hidden_states=ctx).sample

    model = load_base_model(tiny_model)
    options = trained["cfg"]["method"]
    assert options["alpha"] != options["rank"]  # a wrong alpha / rank scale would show
    method = LoraMethod(LoraConfig(rank=options["rank"], alpha=options["alpha"]))
    method.prepare(model)
    method.load_file(file)
    model.unet.eval()
    with torch.no_grad():
        ours = model.unet(x, t, encoder_hidden_states=ctx).sample
    tolerance = 1e-6
    assert (ours - base).abs().max() > 100 * tolerance  # the trained update landed
    torch.testing.assert_close(ours, theirs, atol=tolerance, rtol=0)


def test_resume_after_a_crash_gives_the_uninterrupted_result(
    trained: dict, tiny_model: Path, dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = run_config(tiny_model, dataset, tmp_path / "out")
    config = write_config(tmp_path / "run.toml", cfg)
    real_save = ckpt.save_checkpoint

    def save_then_crash(out_dir, adapter, state, config_dict):
        path = real_save(out_dir, adapter, state, config_dict)
        if state.step == 2:
            raise RuntimeError("simulated crash after the step-2 checkpoint")
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_crash)
    crashed = invoke(str(config))
    assert crashed.exit_code != 0 and "simulated crash" in str(crashed.exception)
    assert (tmp_path / "out" / "checkpoints" / "step-2").is_dir()
    assert not (tmp_path / "out" / "tiny_lora.safetensors").exists()
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)

    resumed = invoke(str(config), "--resume")
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step-2") and summary["steps_done"] == 4
    expected = load_file(trained["summary"]["final_file"])
    got = load_file(summary["final_file"])
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0, msg=key)
    want = [v for _, v in trained["summary"]["train_loss"]]
    assert [v for _, v in summary["train_loss"]] == pytest.approx(want, abs=1e-6)


def test_latent_cache_hits_and_reencodes_a_changed_picture(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    from diffusers import AutoencoderKL
    from tsuika.api import train

    data = draw_dataset(tmp_path / "data")
    calls: list[int] = []
    real_encode = AutoencoderKL.encode

    def counting_encode(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return real_encode(self, x, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", counting_encode)
    cfg = run_config(
        tiny_model,
        data,
        tmp_path / "out",
        data={"flip": False},
        training={"steps": 1, "gradient_accumulation": 1, "save_every": 0},
    )
    first = train(cfg)
    assert sum(calls) == 4 and first["latent_cache"] == {"hits": 0, "encoded": 4}
    calls.clear()
    second = train(cfg)
    assert calls == [] and second["latent_cache"] == {"hits": 4, "encoded": 0}
    draw_picture(data / "2_sks shape" / "1.png", (0, 0, 0), 3)
    third = train(cfg)
    assert sum(calls) == 1 and third["latent_cache"] == {"hits": 3, "encoded": 1}


def test_cli_errors_name_the_problem(tiny_model: Path, dataset: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "run.toml", run_config(tiny_model, dataset, tmp_path / "out"))
    bad_key = invoke(str(config), "--set", "training.stepz=3")
    assert bad_key.exit_code == 2 and "training.stepz" in bad_key.output
    bad_value = invoke(str(config), "--set", "training.optimizer=sgd")
    assert bad_value.exit_code == 2 and "'adamw'" in bad_value.output
    no_data = invoke(str(config), "--set", f"data.path={tmp_path / 'nowhere'}")
    assert no_data.exit_code == 1 and "dataset folder not found" in no_data.output
    no_checkpoint = invoke(str(config), "--resume")
    assert no_checkpoint.exit_code == 1 and "no checkpoint found" in no_checkpoint.output


FULL_SIZE_BUILD = textwrap.dedent(
    """
    import sys, torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from tsuika.models import BaseModel, load_clip_tokenizer, save_single_file
    from tsuika.models.derive import shipped_config

    torch.manual_seed(0)
    model = BaseModel(
        unet=UNet2DConditionModel.from_config(shipped_config("sd1", "unet")),
        vae=AutoencoderKL.from_config(shipped_config("sd1", "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig(**shipped_config("sd1", "text_encoder"))),
        tokenizer=load_clip_tokenizer("sd1"),
        scheduler=DDPMScheduler.from_config(shipped_config("sd1", "scheduler")),
    )
    save_single_file(model, sys.argv[1], dtype=torch.float16)
    """
)


@pytest.mark.slow
def test_full_size_sd15_single_file_trains_offline(dataset: Path, tmp_path: Path) -> None:
    """SD 1.5's real architecture (random weights) as one original-layout file, nothing beside it."""
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    model = model_dir / "sd15-random.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", FULL_SIZE_BUILD, str(model)], check=True, env=env)
    assert sorted(p.name for p in model_dir.iterdir()) == [model.name]
    cfg = run_config(
        model,
        dataset,
        tmp_path / "out",
        data={"flip": False},
        training={"steps": 2, "batch_size": 1, "gradient_accumulation": 1, "save_every": 0},
    )
    config = write_config(tmp_path / "run.toml", cfg)
    script = "import sys; from tsuika.cli.train import train; train(sys.argv[1:])"
    subprocess.run([sys.executable, "-c", script, str(config)], check=True, env=env)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps_done"] == 2
    assert all(math.isfinite(v) for _, v in summary["train_loss"])
    tensors = load_file(summary["final_file"])
    # SD 1.5 attention LoRA: 16 transformer blocks x 2 attentions x 4 projections, 3 tensors each
    assert len(tensors) == 16 * 2 * 4 * 3
    assert (
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight" in tensors
    )
    print(
        f"\nfull-size: {summary['seconds_per_step']:.2f} s/step, "
        f"peak RSS {summary['peak_memory']['rss_bytes'] / 2**30:.2f} GiB"
    )
