"""`tsuika demo`: a short run through the CLI writes the grid, the report and the LoRA;
the concept helpers shared with benches/quality.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from tsuika.demo import Concept, DemoError, picture_grid, prepare_dataset
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
