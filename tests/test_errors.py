"""One error base: every exception class tsuika defines derives from TsuikaError and
keeps its builtin base; the one checker reads the same in every table; the config
and dataset modules import each other in one direction only."""

from __future__ import annotations

import ast
import importlib
import math
import pkgutil
from pathlib import Path

import pytest
import tsuika
from tsuika.checks import CheckError, Rule, check, check_table
from tsuika.errors import ConfigError, TsuikaError

PACKAGE = Path(tsuika.__file__).parent


def _modules() -> list[str]:
    names = ["tsuika", "tsuika._native"]
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="tsuika."):
        if not info.name.endswith("__main__"):  # running it would start the CLI
            names.append(info.name)
    return names


def _exception_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and not issubclass(value, Warning)
                # Ctrl-C's signal (training.interrupt) and private control-flow exceptions
                # that never leave their module are not errors a user sees.
                and not issubclass(value, KeyboardInterrupt)
                and not value.__name__.startswith("_")
                and value.__module__ == name
            ):
                found[f"{name}.{value.__qualname__}"] = value
    return found


def test_every_tsuika_exception_derives_from_tsuika_error() -> None:
    classes = _exception_classes()
    # The walk must see the known families, or it proves nothing.
    for expected in (
        "tsuika._native.CorruptImageError",
        "tsuika.training.checkpoint.CheckpointError",
        "tsuika.models.single_file.ModelFileError",
        "tsuika.data.index.DatasetError",
        "tsuika.formats.kohya_lora.LoraFileError",
        "tsuika.errors.ConfigError",
    ):
        assert expected in classes, sorted(classes)
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, TsuikaError))
    assert outside == []


def test_errors_keep_their_builtin_base() -> None:
    import tsuika._native as native
    from tsuika.training.checkpoint import CheckpointError

    assert issubclass(ConfigError, ValueError) and issubclass(CheckpointError, RuntimeError)
    assert issubclass(native.ImageError, ValueError) and issubclass(native.ImageError, TsuikaError)
    assert issubclass(native.DecompressionBombError, native.ImageError)


def test_the_two_checkpoint_errors_have_distinct_names() -> None:
    from tsuika.models import ModelFileError
    from tsuika.training.checkpoint import CheckpointError

    assert ModelFileError is not CheckpointError
    assert ModelFileError.__name__ != CheckpointError.__name__


def test_a_native_image_error_is_a_tsuika_error(tmp_path: Path) -> None:
    import tsuika._native as native

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n and nothing after")
    with pytest.raises(TsuikaError) as info:
        native.decode(str(bad))
    assert isinstance(info.value, native.ImageError) and info.value.path == str(bad)


@pytest.mark.parametrize(
    ("value", "rule", "message"),
    [
        (0, Rule(int, low=1), "k: must be >= 1, got 0"),
        (True, Rule(int, low=1), "k: must be an integer, got True"),
        (1.0, Rule(float, low=0, high=1, open_high=True), "k: must be in [0, 1), got 1.0"),
        (math.nan, Rule(float, low=0, finite=True), "k: must be a finite number >= 0, got nan"),
        (math.inf, Rule(float, low=0, finite=True), "k: must be a finite number >= 0, got inf"),
        ("x", Rule(float | None), "k: must be a number, got 'x'"),
        ("fp8", Rule(str, choices=("fp16", "bf16")), "k: must be one of 'fp16', 'bf16', got 'fp8'"),
        ("  ", Rule(str, nonempty=True), "k: must be a non-empty string, got '  '"),
        (["a", 2], Rule(list[str]), "k[1]: must be a string, got 2"),
        (1, Rule(bool), "k: must be true or false, got 1"),
    ],
)
def test_check_names_the_key_and_what_is_allowed(value, rule: Rule, message: str) -> None:
    with pytest.raises(CheckError) as info:
        check("k", value, rule)
    assert str(info.value) == message
    assert isinstance(info.value, TsuikaError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (None, Rule(float | None, low=0)),
        (3, Rule(float, low=0, finite=True)),
        (0.5, Rule(float, low=0, high=1, open_high=True)),
        (["a"], Rule(list[str])),
        ("bf16", Rule(str, choices=("fp16", "bf16"))),
    ],
)
def test_check_accepts_what_the_rule_allows(value, rule: Rule) -> None:
    check("k", value, rule)


def test_check_table_refuses_unknown_keys_listing_the_allowed_ones() -> None:
    rules = {"steps": Rule(int), "seed": Rule(int)}
    assert check_table({"steps": 3}, rules, "training") == {"steps": 3}
    with pytest.raises(
        CheckError, match=r"unknown training option\(s\) stepz; allowed: steps, seed"
    ) as info:
        check_table({"stepz": 3}, rules, "training")
    assert info.value.key == "training.stepz"


def _imports(module: str) -> set[str]:
    """Every tsuika module ``module`` imports, at the top or inside a function."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("tsuika") and m in set(_modules())}


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("tsuika.methods.registry", "tsuika.config"),
        ("tsuika.data.dataset_toml", "tsuika.data.scan"),
        ("tsuika.data.index", "tsuika.data.dataset_toml"),
        ("tsuika.checks", "tsuika.config"),
        ("tsuika.errors", "tsuika.checks"),
    ],
)
def test_lower_modules_do_not_import_higher_ones(low: str, high: str) -> None:
    """``high`` may import ``low``; ``low`` (even lazily, inside a function) never ``high``."""
    assert high not in _imports(low)
