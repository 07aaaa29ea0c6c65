"""kohya dataset TOML ``is_reg = true`` subsets through ``tsuika train``: DreamBooth trains
them as its class pictures (prior preservation), never as pictures of the concept; methods
with no use for them, and a second source of class pictures, are errors naming the cause."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw
from test_dreambooth_cli import write_config
from tsuika.cli.train import train as train_command
from tsuika.methods.dreambooth import DreamBoothMethod

pytestmark = pytest.mark.usefixtures("one_thread")

TOML = """
[[datasets]]

  [[datasets.subsets]]
  image_dir = "inst"
  class_tokens = "sks shape"

  [[datasets.subsets]]
  image_dir = "reg"
  class_tokens = "a shape"
  is_reg = true
"""


def draw(path: Path, colour: tuple[int, int, int], box: tuple[int, int, int, int]) -> None:
    image = Image.new("RGB", (64, 64), (245, 245, 245))
    ImageDraw.Draw(image).rectangle(box, fill=colour)
    image.save(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toml")
    (root / "inst").mkdir()
    (root / "reg").mkdir()
    for i in range(3):
        draw(root / "inst" / f"{i}.png", (220, 40, 40), (10 + i, 10, 50, 50))
    draw(root / "reg" / "r0.png", (40, 70, 210), (8, 8, 40, 56))
    draw(root / "reg" / "r1.png", (40, 170, 60), (20, 4, 60, 30))
    (root / "reg" / "r1.txt").write_text("a green shape\n")
    (root / "dataset.toml").write_text(TOML)
    return root


@pytest.fixture
def seen(monkeypatch) -> dict[str, list[Any]]:
    calls: dict[str, list[Any]] = {"class_captions": [], "instance_captions": []}
    real_paired, real_caption = DreamBoothMethod.paired_batch, DreamBoothMethod.transform_caption

    def paired_batch(self, batch, step):
        out = real_paired(self, batch, step)
        calls["class_captions"] += [] if out is None else out["captions"]
        calls.setdefault("class_paths", list(self.class_images.paths))
        return out

    def transform_caption(self, caption, class_tokens, rng):
        calls["instance_captions"].append(caption)
        return real_caption(self, caption, class_tokens, rng)

    monkeypatch.setattr(DreamBoothMethod, "paired_batch", paired_batch)
    monkeypatch.setattr(DreamBoothMethod, "transform_caption", transform_caption)
    return calls


def train(tmp_path: Path, model: Path, data: Path, method: dict[str, Any]):
    cfg = {
        "model": {"path": str(model)},
        "data": {"path": str(data), "resolution": 64, "min_bucket": 32, "max_bucket": 64,
                 "bucket_step": 32},
        "method": method,
        "training": {"steps": 3, "batch_size": 1, "learning_rate": 1e-4, "save_every": 0},
        "output": {"dir": str(tmp_path / "out"), "name": "sks"},
    }  # fmt: skip
    return CliRunner().invoke(train_command, [str(write_config(tmp_path / "run.toml", cfg))])


DREAMBOOTH = {"name": "dreambooth", "instance_prompt": "a photo of sks shape", "lora": True}


def test_is_reg_pictures_are_dreamboths_class_pictures(
    tiny_model_dir: Path, dataset: Path, tmp_path: Path, seen
) -> None:
    result = train(tmp_path, tiny_model_dir, dataset / "dataset.toml", DREAMBOOTH)
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps_done"] == 3
    assert seen["class_paths"] == [dataset / "reg" / "r0.png", dataset / "reg" / "r1.png"]
    # every step had its class picture, captioned by its own caption file or class tokens
    assert len(seen["class_captions"]) == 3
    assert set(seen["class_captions"]) <= {"a shape", "a green shape"}
    # only the three instance pictures ever trained as pictures of the concept: the hook
    # saw each once before the first step (the frozen text encoders' outputs are cached
    # up front), then one per step
    assert len(seen["instance_captions"]) == 3 + 3
    assert set(seen["instance_captions"]) == {"sks shape"}
    assert not (tmp_path / "class").exists()  # nothing generated


@pytest.mark.parametrize(
    ("method", "message"),
    [
        (
            {"name": "lora", "rank": 2},
            "2 is_reg (class) picture(s), e.g. {reg}/r0.png: method 'lora' has no use for "
            "regularisation pictures",
        ),
        (
            {
                "name": "textual_inversion",
                "placeholder_token": "<sks>",
                "initializer_token": "shape",
            },
            "method 'textual_inversion' has no use",
        ),
        (
            {**DREAMBOOTH, "class_prompt": "a shape", "class_data": "elsewhere"},
            "method.class_data: and the dataset's is_reg subsets both give class pictures",
        ),
        (
            {**DREAMBOOTH, "prior_loss_weight": 0.0},
            "method.prior_loss_weight: is 0 (prior preservation off), but the dataset has is_reg",
        ),
    ],
)
def test_is_reg_refused_where_it_has_no_use(
    tiny_model_dir: Path, dataset: Path, tmp_path: Path, method: dict, message: str
) -> None:
    result = train(tmp_path, tiny_model_dir, dataset / "dataset.toml", method)
    assert result.exit_code != 0
    assert message.format(reg=dataset / "reg") in result.output, result.output
    assert not (tmp_path / "out" / "summary.json").exists()
