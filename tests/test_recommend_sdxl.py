"""`tsuika recommend --model` on a tiny SDXL (a diffusers folder and a single file the test
builds): the family and native size are read without loading weights, and the written
config trains as written (only steps and the output folder are set).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import noise_image
from tsuika.cli import main
from tsuika.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> dict[str, Path]:
    from tsuika.models import build_tiny_sdxl_model, save_diffusers, save_single_file

    root = tmp_path_factory.mktemp("tiny_sdxl")
    model = build_tiny_sdxl_model(0)
    folder = save_diffusers(model, root / "folder")
    single = save_single_file(model, root / "single" / "tiny_sdxl.safetensors")
    return {"folder": folder, "single": single}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "1_zkz"
    folder.mkdir()
    for i in range(12):
        noise_image((64, 64), seed=i).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text("a photo of zkz thing")
    return folder.parent


@pytest.mark.parametrize("form", ["folder", "single"])
def test_tiny_sdxl_is_read_and_its_config_trains(tiny_sdxl, data, tmp_path, form) -> None:
    runner = CliRunner()
    toml = tmp_path / "run.toml"
    args = ["recommend", str(data), "--purpose", "character", "--model", str(tiny_sdxl[form])]
    result = runner.invoke(main, [*args, "--write", str(toml), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    model = doc["model"]
    assert (model["family"], model["width"]) == ("sdxl", 32)
    assert model["resolution"] == 64  # 16 latent px x VAE factor 4, from the stored configs
    assert doc["method"] == "lora"
    s = doc["settings"]
    assert s["data.resolution"]["value"] == 64
    assert s["training.learning_rate"]["value"] == 2e-3  # narrow: the tiny world's rate
    cfg = load_config(toml)
    assert cfg.model.path == Path(tiny_sdxl[form]).resolve()
    out = tmp_path / "out"
    overrides = ["training.steps=4", f"output.dir={out}"]
    result = runner.invoke(
        main, ["train", str(toml), *[a for o in overrides for a in ("--set", o)]]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_done"] == 4 and summary["method"] == "lora"
    assert cfg.validation.split == 0 and summary.get("best_step") is None  # 12: no split
    assert Path(summary["final_file"]).is_file()
