"""A config written by `tsuika recommend --write` trains as written on the tiny world's model.

Only the step count and the output folder are overridden (``--set``), to keep
the runs short; every other value is the one recommend chose.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import noise_image
from tsuika.cli import main
from tsuika.config import load_config
from tsuika.world import base_model_path

pytestmark = pytest.mark.usefixtures("one_thread")

# purpose, pictures, the method recommend picks for them
RUNS = [
    ("character", 12, "lora"),
    ("person", 10, "lora"),
    ("style", 3, "textual_inversion"),
    ("style", 100, "hypernetwork"),
    ("concept", 4, "textual_inversion"),
    ("object", 10, "lora"),
    ("pose", 10, "lora"),
]


@pytest.mark.parametrize(("purpose", "n", "method"), RUNS)
def test_written_config_trains(tmp_path: Path, purpose: str, n: int, method: str) -> None:
    data = tmp_path / "data" / "1_thing"
    data.mkdir(parents=True)
    for i in range(n):
        noise_image((64, 64), seed=i).save(data / f"{i:03d}.png")
        (data / f"{i:03d}.txt").write_text("a photo of zkz thing")
    toml = tmp_path / "run.toml"
    runner = CliRunner()
    args = ["recommend", str(data.parent), "--purpose", purpose, "--model", str(base_model_path())]
    result = runner.invoke(main, [*args, "--write", str(toml)])
    assert result.exit_code == 0, result.output
    cfg = load_config(toml)
    assert cfg.method.name == method
    out = tmp_path / "out"
    steps = 3 if cfg.validation.split == 0 else 4
    overrides = [f"training.steps={steps}", f"output.dir={out}", "validation.every=2"]
    if cfg.validation.split:  # the written start of early stopping is a quarter of its steps
        assert cfg.validation.min_steps == round(cfg.training.steps / 4)
        overrides.append("validation.min_steps=1")
    result = runner.invoke(
        main, ["train", str(toml), *[a for o in overrides for a in ("--set", o)]]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_done"] == steps
    assert summary["method"] == method
    assert Path(summary["final_file"]).is_file()
    written = summary["config"]
    assert written["training"]["learning_rate"] == cfg.training.learning_rate
    assert written["data"]["flip"] == cfg.data.flip
    if cfg.validation.split:
        assert summary["best_step"] in (2, 4)  # validated at steps 2 and 4
