"""`tsuika demo`: a short run through the CLI writes the grid, the report and the LoRA;
the concept helpers shared with benches/quality.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from tsuika.cli import main
from tsuika.demo import Concept, DemoError, picture_grid, prepare_dataset
from tsuika.world.base import HELD_OUT_SHAPES
from tsuika.world.render import Scene


def test_concept_captions_and_pictures() -> None:
    concept = Concept()
    scene = Scene("heart", "red", "white")
    assert concept.caption(scene).startswith("a red zkz ")
    assert "heart" not in concept.caption(scene)
    scenes = concept.scenes(40, seed=3)
    assert {s.shape for s in scenes} == {"heart"}
    assert concept.withheld_colour not in {s.colour for s in scenes}
    assert concept.composition_prompt == "a blue zkz on a white background"


def test_prepare_dataset_stops_at_a_broken_picture(tmp_path: Path) -> None:
    concept = Concept()
    folder, summary = prepare_dataset(tmp_path / "ok", concept.scenes(3, 0), concept.caption)
    assert summary["images"] == 3 and summary["with_errors"] == 0
    assert sorted(p.name for p in (folder / "1_shape").glob("*.txt")) == [
        "00000.txt", "00001.txt", "00002.txt"
    ]  # fmt: skip
    (folder / "1_shape" / "00001.png").write_bytes(b"not a png")
    with pytest.raises(DemoError, match="dataset check failed.*00001"):
        prepare_dataset(folder, [], concept.caption)


def test_grid_rows_and_columns() -> None:
    import numpy as np

    pictures = np.zeros((3, 64, 64, 3), np.uint8)
    grid = picture_grid([("a", pictures), ("b", pictures[:1])], zoom=1)
    assert grid.size == (200 + 3 * 64, 2 * 64)


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
