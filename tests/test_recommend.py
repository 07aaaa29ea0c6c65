"""`tsuika recommend`: every purpose picks its method with reasons, and the edges of the data.

The model is read from its configs only, so a diffusers folder of config files
(no weights) stands in for full-size SD 1.x / 2.x / SDXL models here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import noise_image
from PIL import Image
from tsuika.cli import main
from tsuika.config import load_config
from tsuika.recommend import RecommendError, recommend
from tsuika.world import base_model_path

TINY = base_model_path()  # the tiny world's model: a diffusers folder at 64 px, width 32


def draw(folder: Path, n: int, *, caption: str | None = "a photo of zkz", size=(64, 64),
         start: int = 0) -> Path:  # fmt: skip
    """``n`` different pictures (and captions) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        noise_image(size, seed=i).save(folder / f"{i:05d}.png")
        if caption is not None:
            (folder / f"{i:05d}.txt").write_text(caption.format(i=i), encoding="utf-8")
    return folder


def run_json(*args: str) -> dict:
    result = CliRunner().invoke(main, ["recommend", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def fake_model(folder: Path, *, width: int = 320, act: str = "quick_gelu", sdxl: bool = False):
    """A diffusers folder of config files only, like a full-size SD model's."""
    unet = {"block_out_channels": [width, 2 * width, 4 * width, 4 * width], "sample_size": 64}
    if sdxl:
        unet["addition_embed_type"] = "text_time"
        unet["sample_size"] = 128
    files = {
        "model_index.json": {},
        "unet/config.json": unet,
        "text_encoder/config.json": {"hidden_act": act},
        "vae/config.json": {"block_out_channels": [128, 256, 512, 512]},
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    return folder


# purpose, pictures, method, (key, value) the purpose's rules set
CASES = [
    ("character", 12, "lora", {"method.train_text_encoder": True, "data.flip": False}),
    ("person", 12, "lora", {"method.train_text_encoder": True, "data.color_jitter": 0.0}),
    ("style", 4, "textual_inversion", {"method.template": "captions"}),
    ("style", 12, "lora", {"data.flip": True, "method.train_text_encoder": False, "method.rank": 8}),
    ("style", 120, "hypernetwork", {"method.dims": "auto", "data.flip": True}),
    ("concept", 4, "textual_inversion", {"method.placeholder_token": "<zkz>"}),
    ("concept", 12, "lora", {"method.rank": 8, "method.alpha": 8.0}),
    ("object", 5, "textual_inversion", {"training.learning_rate": 5e-3}),
    ("object", 12, "lora", {"training.learning_rate": 2e-3}),
    ("pose", 12, "lora", {"data.color_jitter": 0.1, "data.cache_latents": False}),
]  # fmt: skip


@pytest.mark.parametrize(("purpose", "n", "method", "expected"), CASES)
def test_every_purpose_picks_its_method(tmp_path, purpose, n, method, expected) -> None:
    data = draw(tmp_path / "data", n)
    toml = tmp_path / "run.toml"
    doc = run_json(data, "--purpose", purpose, "--model", TINY, "--write", toml)
    assert doc["method"] == method
    assert doc["reason"] and doc["settings"]["method.name"]["value"] == method
    for key, value in expected.items():
        assert doc["settings"][key]["value"] == value, key
    assert all(s["reason"] for s in doc["settings"].values())
    assert doc["dataset"]["unique"] == n and doc["model"]["family"] == "sd1"
    cfg = load_config(toml)  # the written file loads as `tsuika train` reads it
    assert cfg.method.name == method
    assert cfg.model.path == TINY.resolve() and cfg.data.path == data.resolve()
    assert cfg.data.resolution == 64  # the tiny model's native size, from its configs
    assert cfg.training.steps == doc["settings"]["training.steps"]["value"]
    text = toml.read_text()
    assert "# " + doc["reason"][:40] in text  # the reason is written beside the choice
    validated = n >= 50  # a split only from 50 pictures (rules.VALIDATION)
    assert (cfg.validation.split > 0) == validated and (
        cfg.validation.patience is not None
    ) == validated
    if validated:  # smoothed, and no step of the first quarter is kept
        assert cfg.validation.smoothing == 0.7
        assert cfg.validation.min_steps == round(cfg.training.steps / 4) > 0


def test_text_output_names_method_problems_and_combination(tmp_path) -> None:
    data = draw(tmp_path / "data", 12)
    result = CliRunner().invoke(main, ["recommend", str(data), "--purpose", "character"])
    assert result.exit_code == 0, result.output
    assert "method: lora (purpose character)" in result.output
    assert "combination: textual_inversion at 1 + lora at 0.8" in result.output
    assert "training.steps = " in result.output


def test_one_picture(tmp_path) -> None:
    doc = run_json(draw(tmp_path / "d", 1), "--purpose", "concept", "--model", TINY)
    assert doc["method"] == "textual_inversion"
    kinds = [p["kind"] for p in doc["problems"]]
    assert "too_few" in kinds
    assert doc["settings"]["validation.split"]["value"] == 0.0
    assert "none can be spared" in doc["settings"]["validation.split"]["reason"]
    assert doc["settings"]["training.batch_size"]["value"] == 1
    assert doc["combinations"] == []  # pivotal tuning needs 10+ pictures


@pytest.fixture(scope="module")
def five_thousand(tmp_path_factory) -> Path:
    """5,000 different 8x8 PNGs with captions (random pixels: no two hash alike)."""
    folder = tmp_path_factory.mktemp("big") / "1_zkz"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5000, 8, 8, 3), dtype=np.uint8)
    for i in range(5000):
        Image.fromarray(pixels[i]).save(folder / f"{i:05d}.png", compress_level=0)
        (folder / f"{i:05d}.txt").write_text("zkz, a pattern")
    return folder.parent


def test_five_thousand_pictures(five_thousand) -> None:
    style = run_json(five_thousand, "--purpose", "style", "--model", TINY)
    assert style["method"] == "hypernetwork"
    assert style["dataset"]["unique"] == 5000
    assert style["settings"]["training.steps"]["value"] == 10000  # the step rule's ceiling
    assert "small" in [p["kind"] for p in style["problems"]]  # 8 px < 64 px
    obj = run_json(five_thousand, "--purpose", "object", "--model", TINY)
    assert obj["method"] == "lora"
    assert "too_many" in [p["kind"] for p in obj["problems"]]
    assert obj["dataset"]["identifier"] == "zkz"
    assert obj["dataset"]["identifier_source"].startswith("class tokens")


def test_no_captions(tmp_path) -> None:
    doc = run_json(draw(tmp_path / "d", 4, caption=None), "--purpose", "object", "--model", TINY)
    assert doc["dataset"]["captioned"] == 0 and doc["dataset"]["identifier"] is None
    assert "no_captions" in [p["kind"] for p in doc["problems"]]
    assert doc["settings"]["method.template"]["value"] == "object"  # templates, not captions


def test_only_duplicates(tmp_path) -> None:
    folder = draw(tmp_path / "d", 1)
    for i in range(1, 7):  # the same picture again, re-encoded larger
        Image.open(folder / "00000.png").resize((96, 96)).save(folder / f"copy{i}.png")
        (folder / f"copy{i}.txt").write_text("a photo of zkz")
    doc = run_json(folder, "--purpose", "character", "--model", TINY)
    assert doc["dataset"]["images"] == 7 and doc["dataset"]["unique"] == 1
    assert len(doc["dataset"]["duplicates"]) == 6
    kinds = [p["kind"] for p in doc["problems"]]
    assert "only_duplicates" in kinds and "too_few" in kinds


def test_duplicates_and_mixed_ratios_and_identifier_gaps(tmp_path) -> None:
    folder = draw(tmp_path / "d", 10, caption="zkz on a table")
    draw(folder, 2, caption="a chair", size=(64, 128), start=10)  # no identifier, tall
    draw(folder, 1, caption="zkz", size=(128, 48), start=12)  # a bucket of its own
    for i in range(4):  # four copies
        Image.open(folder / f"{i:05d}.png").save(folder / f"dup{i}.png")
    doc = run_json(folder, "--purpose", "object", "--model", TINY)
    by_kind = {p["kind"]: p["message"] for p in doc["problems"]}
    assert "4 of 17 pictures are near-duplicates" in by_kind["duplicates"]
    assert "bucket(s) hold a single picture" in by_kind["single_buckets"]
    assert "'zkz' is in 11 of 13 captions" in by_kind["identifier_missing"]


def test_kohya_folder_gives_identifier_and_class_word(tmp_path) -> None:
    data = tmp_path / "data"
    draw(data / "10_sks dog", 4, caption="a photo of sks dog")
    doc = run_json(data, "--purpose", "object", "--model", TINY)
    s = doc["settings"]
    assert s["method.placeholder_token"]["value"] == "<sks>"
    assert s["method.initializer_token"]["value"] == "dog"
    assert doc["dataset"]["samples_per_epoch"] == 40
    assert "4 pictures x 10 repeats x 10 epochs" in s["training.steps"]["reason"]


def test_folder_without_pictures_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    result = CliRunner().invoke(main, ["recommend", str(tmp_path / "empty"), "--purpose", "style"])
    assert result.exit_code == 1
    assert f"{tmp_path / 'empty'}: no images found" in result.output


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    data = draw(tmp_path / "d", 3)
    missing = tmp_path / "nope.safetensors"
    result = CliRunner().invoke(
        main, ["recommend", str(data), "--purpose", "style", "--model", str(missing)]
    )
    assert result.exit_code == 1
    assert f"{missing}: model not found" in result.output
    with pytest.raises(RecommendError, match="unknown purpose 'selfie'"):
        recommend(data, "selfie")


# vram GiB, family, batch, gradient checkpointing, mixed precision
MEMORY = [
    (None, "sd1", 1, False, "no"),
    (6, "sd1", 1, True, "fp16"),
    (12, "sd1", 2, True, "fp16"),
    (16, "sd1", 4, False, "fp16"),
    (24, "sd1", 8, False, "fp16"),
    (24, "sd2", 2, True, "fp16"),  # 768 px needs 1.6x the memory
]


@pytest.mark.parametrize(("vram", "family", "batch", "checkpointing", "precision"), MEMORY)
def test_vram_sets_batch_checkpointing_and_precision(
    tmp_path, vram, family, batch, checkpointing, precision
) -> None:
    model = fake_model(tmp_path / "m", act="gelu" if family == "sd2" else "quick_gelu")
    data = draw(tmp_path / "d", 12, size=(512, 512) if family == "sd1" else (768, 768))
    args = [data, "--purpose", "character", "--model", model]
    doc = run_json(*args, *(["--vram", str(vram)] if vram else []))
    s = doc["settings"]
    assert doc["model"]["family"] == family
    assert s["training.batch_size"]["value"] == batch
    assert s["training.gradient_checkpointing"]["value"] is checkpointing
    assert s["training.mixed_precision"]["value"] == precision
    assert s["training.learning_rate"]["value"] == 1e-4  # full-size LoRA rate
    assert s["method.rank"]["value"] == 16
    assert s["data.resolution"]["value"] == (512 if family == "sd1" else 512)  # 64 x VAE 8


# --vram GiB, batch, gradient checkpointing, the character LoRA's text encoders train
SDXL_MEMORY = [
    (16, 1, True, False),  # 16 / 3 = 5.3 SD 1.x GiB; under 24 GiB the text states are cached
    (48, 4, False, True),  # 16 SD 1.x GiB
    (80, 8, False, True),
]


@pytest.mark.parametrize(("vram", "batch", "checkpointing", "text"), SDXL_MEMORY)
def test_sdxl_full_size_rules(tmp_path, vram, batch, checkpointing, text) -> None:
    model = fake_model(tmp_path / "xl", sdxl=True)
    doc = run_json(draw(tmp_path / "d", 12), "--purpose", "character", "--model", model,
                   "--vram", vram)  # fmt: skip
    s = doc["settings"]
    assert doc["model"]["family"] == "sdxl" and doc["model"]["resolution"] == 1024
    assert s["data.resolution"]["value"] == 1024
    assert (s["data.min_bucket"]["value"], s["data.max_bucket"]["value"]) == (512, 2048)
    assert s["training.learning_rate"]["value"] == 6e-5  # SDXL's own LoRA rate
    assert "SDXL" in s["training.learning_rate"]["reason"]
    assert s["training.batch_size"]["value"] == batch
    assert s["training.gradient_checkpointing"]["value"] is checkpointing
    assert s["method.train_text_encoder"]["value"] is text
    cached = "text states are cached in memory: the text encoder is frozen"
    assert (cached in doc["notes"]) is (not text)
    if not text:
        assert "--network_train_unet_only" in s["method.train_text_encoder"]["reason"]
    sd1 = run_json(tmp_path / "d", "--purpose", "character", "--model",
                   fake_model(tmp_path / "v1"), "--vram", vram)  # fmt: skip
    assert sd1["settings"]["method.train_text_encoder"]["value"] is True  # SD 1.x keeps it
    assert sd1["settings"]["training.batch_size"]["value"] >= batch


def test_sdxl_single_file_without_configs_is_1024(tmp_path) -> None:
    import torch
    from safetensors.torch import save_file

    unet = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}
    save_file({**unet, "conditioner.embedders.1.model.ln_final.weight": torch.zeros(4)},
              str(tmp_path / "xl.safetensors"))  # fmt: skip
    d = recommend(draw(tmp_path / "d", 3), "style", model=tmp_path / "xl.safetensors")
    assert (d.model.family, d.model.resolution, d.model.width) == ("sdxl", 1024, 320)
    assert d.value("data.resolution") == 1024


def test_single_file_family_from_tensor_names(tmp_path) -> None:
    import torch
    from safetensors.torch import save_file

    unet = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}
    save_file({**unet, "cond_stage_model.model.ln_final.weight": torch.zeros(4)},
              str(tmp_path / "v2.safetensors"))  # fmt: skip
    save_file({**unet, "cond_stage_model.transformer.x": torch.zeros(4)},
              str(tmp_path / "v1.safetensors"))  # fmt: skip
    data = draw(tmp_path / "d", 3)
    assert recommend(data, "style", model=tmp_path / "v2.safetensors").model.family == "sd2"
    v1 = recommend(data, "style", model=tmp_path / "v1.safetensors")
    assert (v1.model.family, v1.model.resolution, v1.model.width) == ("sd1", 512, 320)
    (tmp_path / "junk.safetensors").write_bytes(b"not a header")
    with pytest.raises(RecommendError, match="junk.safetensors: not a readable safetensors"):
        recommend(data, "style", model=tmp_path / "junk.safetensors")


def test_flip_and_identifier_can_be_asked_for(tmp_path) -> None:
    data = draw(tmp_path / "d", 12, caption="mx7 standing, a photo of a red robot")
    doc = run_json(data, "--purpose", "character", "--model", TINY)
    assert doc["dataset"]["identifier"] == "mx7"  # inferred: the uncommon word every caption has
    assert doc["settings"]["data.flip"]["value"] is False
    asked = run_json(data, "--purpose", "character", "--model", TINY, "--flip",
                     "--identifier", "robot")  # fmt: skip
    assert asked["settings"]["data.flip"] == {
        "value": True,
        "reason": "as asked (--flip/--no-flip)",
    }
    assert asked["dataset"]["identifier"] == "robot"
    assert asked["dataset"]["identifier_source"] == "--identifier"


# pictures, purpose, steps, the arithmetic in the reason: the bench's datasets
STEPS = [
    (30, "object", 400, "30 pictures x 1 repeats x 100 epochs / batch 8 = 375, rounded up"),
    (15, "character", 200, "15 pictures x 1 repeats x 100 epochs / batch 8 = 188, rounded up"),
    (60, "object", 700, "54 pictures x 1 repeats x 100 epochs / batch 8 = 675, rounded up"),
]


@pytest.mark.parametrize(("n", "purpose", "steps", "reason"), STEPS)
def test_steps_round_up_and_split_from_fifty(tmp_path, n, purpose, steps, reason) -> None:
    doc = run_json(draw(tmp_path / "d", n), "--purpose", purpose, "--model", TINY)
    s = doc["settings"]
    assert s["training.steps"]["value"] == steps
    assert s["training.steps"]["reason"].startswith(reason)
    assert s["validation.split"]["value"] == (0.1 if n >= 50 else 0.0)  # 60: 6 held out
