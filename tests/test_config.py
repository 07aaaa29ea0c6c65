"""The run configuration: TOML -> typed dataclasses, with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from tsuika.config import (
    ConfigError,
    RunConfig,
    as_run_config,
    config_from_dict,
    load_config,
    parse_override_value,
)
from tsuika.methods import registry

GOOD = """
[model]
path = "models/base.safetensors"
vae = "models/vae.safetensors"

[data]
path = "data/sks_dog"
resolution = 512
min_bucket = 256
max_bucket = 1024
bucket_step = 64
caption_extension = ".txt"
cache_latents = true
flip = true

[method]
name = "lora"
rank = 4
alpha = 2

[training]
steps = 1500
batch_size = 2
learning_rate = 1
seed = 3
save_every = 250
weight_decay = 0.01
optimizer = "adamw"
lr_scheduler = "cosine"
lr_warmup_steps = 10
min_snr_gamma = 5
mixed_precision = "bf16"

[validation]
split = 0.1
every = 100
patience = 5

[sample]
prompts = ["a photo of sks dog"]
every = 250

[output]
dir = "out/sks_dog"
name = "sks_dog"
format = "kohya"
"""


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(GOOD)
    return path


def test_good_config_is_typed_and_paths_resolve_against_its_folder(good: Path) -> None:
    cfg = load_config(good)
    assert cfg.model.path == good.parent / "models" / "base.safetensors"
    assert cfg.model.vae == good.parent / "models" / "vae.safetensors"
    assert cfg.data.path == good.parent / "data" / "sks_dog"
    assert cfg.output.dir == good.parent / "out" / "sks_dog"
    assert cfg.training.learning_rate == 1.0 and isinstance(cfg.training.learning_rate, float)
    assert cfg.training.batch_size == 2 and cfg.training.lr_scheduler == "cosine"
    assert cfg.method.name == "lora" and cfg.method.options == {"rank": 4, "alpha": 2}
    assert cfg.validation.patience == 5 and cfg.sample.prompts == ["a photo of sks dog"]
    # defaults for keys left out
    assert cfg.training.gradient_accumulation == 1 and cfg.training.max_grad_norm == 1.0
    assert cfg.data.random_crop is False and cfg.output.format == "kohya"


def test_to_dict_round_trips(good: Path) -> None:
    cfg = load_config(good)
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def _err(tmp_path: Path, text: str, overrides: list[str] | None = None) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[training]\nstepz = 3\n", ["training.stepz", "allowed", "steps", "bad.toml"]),
        ("[trainin]\nsteps = 3\n", ["[trainin]", "allowed", "training"]),
        ('[training]\nsteps = "ten"\n', ["training.steps", "integer", "'ten'"]),
        ("[training]\nsteps = 1.5\n", ["training.steps", "integer"]),
        ("[training]\nsteps = true\n", ["training.steps", "integer"]),
        ("[data]\nflip = 1\n", ["data.flip", "true/false"]),
        ("[training]\nsteps = 0\n", ["training.steps", ">= 1"]),
        ('[training]\nmixed_precision = "fp8"\n', ["training.mixed_precision", "'fp8'", "'bf16'"]),
        ('[training]\nlr_scheduler = "cosin"\n', ["training.lr_scheduler", "'cosine'"]),
        ('[training]\noptimizer = "sgd"\n', ["training.optimizer", "'sgd'", "'adamw'", "'lion'"]),
        ('[model]\nkind = "sd3"\n', ["model.kind", "'sd1'"]),
        ("[sample]\nprompts = [1, 2]\n", ["sample.prompts[0]", "string"]),
        ('[method]\nname = "loar"\n', ["method.name", "'loar'", "'lora'"]),
        ('[method]\nname = "lora"\nrank = "x"\n', ["method.rank", "integer"]),
        ('[method]\nname = "lora"\nrnak = 4\n', ["rnak", "allowed", "rank"]),
        ("[data]\nmin_bucket = 512\nmax_bucket = 256\n", ["data.min_bucket", "data.max_bucket"]),
        ("[validation]\npatience = 3\n", ["validation.patience", "validation.split"]),
        ("[validation]\nsplit = 0.1\npatience = 0\n", ["validation.patience", ">= 1"]),
        ("[data]\nrotation = 200\n", ["data.rotation", "<= 180"]),
        ("[data]\ncolor_jitter = 1.5\n", ["data.color_jitter", "<= 1"]),
        ("[data]\ncaption_dropout = 2\n", ["data.caption_dropout", "<= 1"]),
        ("[validation]\nsplit = 0.95\n", ["validation.split", "<= 0.9"]),
        ("[validation]\nsplit = 0.1\nsmoothing = 1.0\n", ["validation.smoothing", "<= 0.95"]),
        ("[validation]\nsplit = 0.1\ndraws = 0\n", ["validation.draws", ">= 1"]),
        ("[validation]\nsplit = 0.1\nmin_steps = -5\n", ["validation.min_steps", ">= 0"]),
        (
            "[training]\nsteps = 40\n[validation]\nsplit = 0.1\nmin_steps = 40\n",
            ["validation.min_steps (40)", "training.steps (40)"],
        ),
        ("[training]\nsteps = [\n", ["not valid TOML"]),
        ("training = 3\n", ["[training]", "table"]),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, needles: list[str]) -> None:
    message = _err(tmp_path, text)
    for needle in needles:
        assert needle in message, (needle, message)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("10", 10),
        ("1e-4", 1e-4),
        ("true", True),
        ('"quoted"', "quoted"),
        ("bare_word", "bare_word"),
        ("out/dir", "out/dir"),
        ('["a", "b"]', ["a", "b"]),
        (" 3 ", 3),
    ],
)
def test_override_values_parse_as_toml_else_string(raw: str, value: object) -> None:
    assert parse_override_value(raw) == value


def test_overrides_apply_and_are_typed(good: Path) -> None:
    cfg = load_config(
        good,
        [
            "training.steps=10",
            "training.learning_rate=2e-4",
            "output.name=my_lora",
            "method.rank=8",
            'sample.prompts=["x", "y"]',
            "data.flip=false",
        ],
    )
    assert cfg.training.steps == 10 and cfg.training.learning_rate == 2e-4
    assert cfg.output.name == "my_lora" and cfg.method.options["rank"] == 8
    assert cfg.sample.prompts == ["x", "y"] and cfg.data.flip is False


def test_override_paths_resolve_against_cwd(good: Path, tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(good, ["output.dir=out2"])
    assert cfg.output.dir == elsewhere / "out2"
    assert cfg.data.path == good.parent / "data" / "sks_dog"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("training.steps", "section.key=value"),
        ("steps=3", "section.key=value"),
        ("trainig.steps=3", "unknown section"),
        ("training.stepz=3", "training.stepz"),
        ("training.steps=ten", "training.steps"),
    ],
)
def test_bad_overrides(good: Path, override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        load_config(good, [override])


def test_as_run_config_accepts_path_dict_and_object(good: Path) -> None:
    from_path = as_run_config(good)
    from_obj = as_run_config(from_path)
    assert from_obj is from_path
    from_dict = as_run_config(from_path.to_dict(), ["training.steps=7"])
    assert isinstance(from_dict, RunConfig) and from_dict.training.steps == 7
    with pytest.raises(TypeError, match="path, a dict or a RunConfig"):
        as_run_config(3)


def test_registry_unknown_method_lists_registered() -> None:
    with pytest.raises(ValueError, match="registered methods: .*lora"):
        registry.build_method("nope", {})
    assert registry.default_format("lora") == "kohya"


def test_registered_method_validates_its_own_table() -> None:
    seen: list[dict] = []

    def factory(table: dict) -> object:
        if "bad" in table:
            raise ValueError("method.bad: not allowed")
        seen.append(table)
        return object()

    registry.register_method("fake_method", factory, default_format="fmt")
    try:
        cfg = config_from_dict({"method": {"name": "fake_method", "x": 1}})
        assert cfg.method.options == {"x": 1} and seen == [{"x": 1}]
        with pytest.raises(ConfigError, match="method.bad: not allowed"):
            config_from_dict({"method": {"name": "fake_method", "bad": 1}})
    finally:
        registry.METHODS.pop("fake_method")
        registry.DEFAULT_FORMATS.pop("fake_method")


@pytest.mark.parametrize(
    ("data", "blocked"),
    [
        ({"flip": True}, []),
        ({"random_crop": True}, ["data.random_crop"]),
        ({"rotation": 10.0, "color_jitter": 0.2}, ["data.rotation", "data.color_jitter"]),
    ],
)
def test_cache_latents_with_augmentations_parses_and_names_what_cannot_be_cached(
    data: dict, blocked: list[str]
) -> None:
    from tsuika.config import config_from_dict, uncacheable_augmentations

    cfg = config_from_dict({"data": {"cache_latents": True, **data}})
    assert uncacheable_augmentations(cfg.data) == blocked
