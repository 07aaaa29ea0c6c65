"""Folders written by diffusers' ``save_pretrained`` under transformers 5: the tokenizer is
``tokenizer.json`` alone (no vocab.json / merges.txt). train, generate, merge and vae
compare must all take them, for SD1 and SD2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from test_train_cli import draw_dataset
from tsuika.api import train
from tsuika.cli import main
from tsuika.merge import merge
from tsuika.models import load_base_model
from tsuika.models.tiny import build_tiny_model
from tsuika.models.tokenizer import load_clip_tokenizer, prompt_ids

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red circle!! on a white background", "sks shape"]


def save_with_diffusers(kind: str, folder: Path) -> Path:
    """A tiny model of ``kind`` saved the way diffusers' training scripts save one."""
    from diffusers import StableDiffusionPipeline

    model = build_tiny_model(seed=3)
    model.tokenizer = load_clip_tokenizer(kind)
    if kind == "sd2":  # tsuika reads an OpenCLIP (SD 2.x) text encoder from its activation
        model.text_encoder.config.hidden_act = "gelu"
    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=model.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def folder(request, tmp_path_factory) -> tuple[str, Path]:
    kind = request.param
    path = save_with_diffusers(kind, tmp_path_factory.mktemp(kind) / "model")
    written = {p.name for p in (path / "tokenizer").iterdir()}
    assert "tokenizer.json" in written and not written & {"vocab.json", "merges.txt"}, written
    return kind, path


def test_loads_with_the_same_tokens_and_kind(folder) -> None:
    kind, path = folder
    model = load_base_model(path)
    assert model.kind == kind
    expected = prompt_ids(load_clip_tokenizer(kind), PROMPTS)
    assert torch.equal(prompt_ids(model.tokenizer, PROMPTS), expected)


def test_trains_a_lora(folder, tmp_path) -> None:
    _, path = folder
    data = draw_dataset(tmp_path / "data", n=2)
    summary = train(
        {
            "model": {"path": str(path)},
            "data": {
                "path": str(data),
                "resolution": 64,
                "min_bucket": 32,
                "max_bucket": 64,
                "bucket_step": 32,
            },
            "method": {"name": "lora", "rank": 2, "alpha": 2},
            "training": {"steps": 2, "batch_size": 1, "learning_rate": 1e-3},
            "output": {"dir": str(tmp_path / "out"), "name": "t5"},
        }
    )
    assert summary["steps_done"] == 2
    with safe_open(summary["final_file"], "pt") as f:
        assert any(k.endswith(".lora_down.weight") for k in f.keys())  # noqa: SIM118


def test_generates(folder, tmp_path) -> None:
    _, path = folder
    out = tmp_path / "pics"
    args = ["generate", "--model", str(path), "--prompt", "a circle", "--n", "1",
            "--steps", "2", "--seed", "1", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(list(out.glob("*.png"))) == 1


def test_merges(folder, tmp_path) -> None:
    kind, path = folder
    out = merge(path, tmp_path / "merged.safetensors")
    assert load_base_model(out).kind == kind


def test_vae_compare(folder, tmp_path) -> None:
    _, path = folder
    from PIL import Image

    picture = tmp_path / "p.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture)
    args = ["vae", "compare", str(picture), "--vae", str(path), "--model", str(path),
            "--out", str(tmp_path / "cmp.png"), "--json"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(json.loads(result.output)["vaes"]) == 2


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_tokenizer_saved_either_way_reads_like_ours(kind, tmp_path) -> None:
    """SD 2.x pads with "!": loaded as an added token it split "!!" (one token) in two."""
    from tsuika.models.tokenizer import copy_tokenizer_files, load_folder_tokenizer

    ours = load_clip_tokenizer(kind)
    ours.save_pretrained(str(tmp_path / "transformers"))
    copy_tokenizer_files(tmp_path / "stock", pad_token=ours.pad_token)
    expected = prompt_ids(ours, PROMPTS)
    assert expected[0, 4].item() == 748  # "!!</w>"
    for folder in ("transformers", "stock"):
        loaded = load_folder_tokenizer(tmp_path / folder)
        assert loaded.pad_token == ours.pad_token, folder
        assert torch.equal(prompt_ids(loaded, PROMPTS), expected), folder
