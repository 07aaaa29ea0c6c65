"""With the text cache on, the text encoders leave the device once every caption is cached.

End to end (``tsuika train``) on the tiny SD1 and SDXL models: where the run
offloads, the encoders are made to raise from then on, so any later call
(a training caption, a validation caption, a class prompt that was not cached)
fails the run; sample pictures bring them back for their time. The cases that
need the encoders keep them, and ``summary.json`` says why.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from test_train_cli import draw_dataset, invoke, run_config, write_config
from tsuika.methods.dreambooth import DreamBoothConfig, DreamBoothMethod
from tsuika.methods.dreambooth.class_images import ClassImages
from tsuika.methods.registry import build_method
from tsuika.models import build_tiny_model, build_tiny_sdxl_model, save_diffusers
from tsuika.training.cache import TextCache
from tsuika.training.text_encoders import KEPT_TRAINS, TextEncoderPlacement, run_captions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "sd1": save_diffusers(build_tiny_model(seed=0), root / "sd1"),
        "sdxl": save_diffusers(build_tiny_sdxl_model(0), root / "sdxl"),
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return draw_dataset(tmp_path_factory.mktemp("data"), n=5)


class Refusal:
    """Installed on offload: every later forward of a text encoder raises, except
    inside ``on_device`` (sample pictures)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offloads = 0
        self.allowed = False
        real_offload, real_on_device = TextEncoderPlacement.offload, TextEncoderPlacement.on_device
        refusal = self

        def offload(placement: TextEncoderPlacement) -> None:
            real_offload(placement)
            refusal.offloads += 1
            for encoder in placement.encoders:
                encoder.register_forward_pre_hook(refusal.check)

        def on_device(placement: TextEncoderPlacement):
            refusal.allowed = True
            with real_on_device(placement):
                yield
            refusal.allowed = False

        monkeypatch.setattr(TextEncoderPlacement, "offload", offload)
        monkeypatch.setattr(TextEncoderPlacement, "on_device", contextlib.contextmanager(on_device))

    def check(self, module, args) -> None:
        if not self.allowed:
            raise RuntimeError("a text encoder was called after it was offloaded")


CASES = {
    # family, method table, extra [data], extra [sample], offloaded, reason fragment
    "sd1 lora (UNet only), validation and samples": (
        "sd1",
        {"name": "lora", "rank": 4, "alpha": 4, "dropout": 0.0},
        {},
        {"prompts": ["a circle"], "every": 2, "steps": 2},
        True,
        "captions encoded into the text cache",
    ),
    "sdxl hypernetwork, validation": (
        "sdxl",
        {"name": "hypernetwork", "dims": [96]},
        {},
        {},
        True,
        "captions encoded into the text cache",
    ),
    "sd1 lora training text encoder": (
        "sd1",
        {"name": "lora", "rank": 4, "alpha": 4, "dropout": 0.0, "train_text_encoder": True},
        {},
        {},
        False,
        KEPT_TRAINS,
    ),
    "sdxl lora, shuffled captions": (
        "sdxl",
        {"name": "lora", "rank": 4, "alpha": 4, "dropout": 0.0},
        {"shuffle_caption": True},
        {},
        False,
        "data.shuffle_caption",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_text_encoders_leave_the_device_when_every_caption_is_cached(
    case: str, folders, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    family, method, data, sample, offloaded, reason = CASES[case]
    refusal = Refusal(monkeypatch)
    cfg = run_config(
        folders[family],
        dataset,
        tmp_path / "out",
        data=data,
        sample=sample,
        training={"steps": 2, "save_every": 0, "gradient_accumulation": 1},
        validation={"split": 0.2, "every": 1},
    )
    cfg["method"] = method
    result = invoke(str(write_config(tmp_path / "run.toml", cfg)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    placement = summary["text_encoders"]
    assert placement["offloaded"] is offloaded and reason in placement["reason"]
    assert refusal.offloads == int(offloaded)
    assert [s for s, _ in summary["val_loss"]] == [1, 2]  # validation ran after the offload
    if offloaded:
        # 4 training pictures + 1 validation picture, each its own caption
        assert placement["device"] == "cpu" and placement["cached_captions"] == 5
    if sample:
        assert len(summary["samples"]) == 1


def test_run_captions_table(tmp_path: Path) -> None:
    """Which captions are cached up front: the pictures' (through the caption hook),
    the validation captions and DreamBooth's class prompts; none when drawn."""
    index = [type("Item", (), {"class_tokens": "sks"})()] * 2
    lora = build_method("lora", {})

    def hook(c, k, rng):
        return c

    captions, _ = run_captions(["a", "b"], index, lora, hook, ["v"])
    assert captions == ["a", "b", "v"]
    assert run_captions(None, index, lora, hook)[0] is None
    ti = build_method(
        "textual_inversion", {"placeholder_token": "<zq>", "initializer_token": "circle"}
    )
    captions, reason = run_captions(["a", "b"], index, ti, hook)
    assert captions is None and "'textual_inversion' draws its captions" in reason

    db = DreamBoothMethod(
        DreamBoothConfig(instance_prompt="sks dog", class_prompt="a dog", class_data=str(tmp_path))
    )
    db.class_images = ClassImages((tmp_path / "1.png", tmp_path / "2.png"), ("a dog", "a dog"))
    captions, _ = run_captions(["x", "y"], index, db, db.transform_caption)
    assert captions == ["sks dog", "a dog"]


def test_a_filled_text_cache_takes_no_new_caption() -> None:
    calls: list[str] = []

    def encode(captions):
        calls.extend(captions)
        return torch.stack([torch.full((2, 3), float(len(c))) for c in captions])

    cache = TextCache(max_entries=1)
    cache.fill(["a", "bb", "a"], encode)
    assert calls == ["a", "bb"] and len(cache) == 2  # none evicted past max_entries
    out = cache.get(["bb", "a"], encode)
    assert out[:, 0, 0].tolist() == [2.0, 1.0] and calls == ["a", "bb"]
    with pytest.raises(RuntimeError, match="'ccc' is not in the text cache"):
        cache.get(["ccc"], encode)
