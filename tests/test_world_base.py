"""The tiny world's shipped pretrained model: found, loadable, SD1-shaped, small, and it
draws what it is asked for (measured with the world's evaluator)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tsuika.world import base as world_base
from tsuika.world.pretrain import main as pretrain_main
from tsuika.world.pretrain_data import short_caption
from tsuika.world.render import Scene


def test_missing_model_names_the_file_and_the_fix(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(world_base, "BASE_MODEL_DIR", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="model_index.json.*tsuika.world.pretrain"):
        world_base.base_model_path()


def test_short_caption_drops_only_the_background() -> None:
    scene = Scene("square", "blue", "beige", "stripes")
    assert short_caption(scene) == "a blue square with stripes"
    assert short_caption(Scene("circle", "orange")) == "an orange circle"


def test_pretraining_is_reproducible(tmp_path: Path) -> None:
    args = ["--scenes", "32", "--vae-steps", "2", "--unet-steps", "2", "--batch", "4",
            "--measure", "0"]  # fmt: skip
    pretrain_main([*args, "--out", str(tmp_path / "a")])
    pretrain_main([*args, "--out", str(tmp_path / "b")])
    for weights in (tmp_path / "a").rglob("*.safetensors"):
        other = tmp_path / "b" / weights.relative_to(tmp_path / "a")
        assert weights.read_bytes() == other.read_bytes(), weights
    info = json.loads((tmp_path / "a" / "tsuika_world.json").read_text())
    assert info["denoiser"]["steps"] == 2 and info["held_out_shapes"] == ["heart"]
