"""Every command, given bad arguments, fails with one `Error:` line naming the culprit.

The table of cases is checked against ``main.commands``: a new command
fails ``test_every_command_has_bad_argument_cases`` until it gets cases, and
every command gets the generic cases (an unknown option, an out-of-range
number) built from its own click parameters.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from PIL import Image
from tsuika.cli import main
from tsuika.errors import TsuikaError

# Files each case may use; made once per test in `files`.
BAD_CONFIG_VALUE = "[training]\nsteps = 0\n"
CONFIG_BAD_MODEL = '[model]\npath = "garbage.safetensors"\n[data]\npath = "pics"\n'
CONFIG_EMPTY_DATA = '[model]\npath = "garbage.safetensors"\n[data]\npath = "empty"\n'

# command path -> [(case, args with {name} placeholders, text the error must name)]
CASES: dict[str, list[tuple[str, list[str], str]]] = {
    "prep": [
        ("missing folder", ["{missing}"], "{missing}"),
        ("file, not a folder", ["{garbage_png}"], "{garbage_png}"),
        ("corrupt dataset toml", ["{corrupt_toml}"], "{corrupt_toml}"),
        ("bad dataset toml value", ["{bad_dataset_toml}"], "num_repeats"),
        ("bad option value", ["{folder}", "--resolution", "big"], "'big'"),
    ],
    "convert": [
        ("missing file", ["{missing}", "{out_file}", "--to", "kohya"], "{missing}"),
        ("folder, not a file", ["{folder}", "{out_file}", "--to", "kohya"], "{folder}"),
        ("corrupt file", ["{garbage_safetensors}", "{out_file}", "--to", "kohya"], "garbage"),
        ("bad option value", ["{garbage_safetensors}", "{out_file}", "--to", "ckpt"], "'ckpt'"),
    ],
    "vae compare": [
        ("missing picture", ["{missing}", "--vae", "{garbage_safetensors}"], "{missing}"),
        ("corrupt vae", ["{garbage_png}", "--vae", "{garbage_safetensors}"], "garbage"),
        ("no vae", ["{garbage_png}"], "--vae"),
    ],
    "recommend": [
        ("missing dataset", ["{missing}", "--purpose", "style"], "{missing}"),
        ("folder without pictures", ["{empty}", "--purpose", "style"], "{empty}"),
        ("missing model", ["{pics}", "--purpose", "style", "--model", "{missing}"], "{missing}"),
        (
            "corrupt model",
            ["{pics}", "--purpose", "style", "--model", "{garbage_safetensors}"],
            "garbage.safetensors",
        ),
        ("bad purpose", ["{pics}", "--purpose", "landscape"], "--purpose"),
    ],  # fmt: skip
    "demo": [
        ("file, not a folder", ["--out", "{garbage_png}"], "{garbage_png}"),
        ("bad option value", ["--steps", "0"], "--steps"),
    ],
}
MODEL_CASES = [
    ("missing model", ["--model", "{missing}"], "{missing}"),
    ("corrupt model", ["--model", "{garbage_safetensors}"], "garbage.safetensors"),
    ("empty model folder", ["--model", "{empty}"], "{empty}"),
]
CASES["generate"] = [
    (name, [*args, "--prompt", "x", "--out", "{out_dir}"], needle)
    for name, args, needle in MODEL_CASES
] + [
    ("bad option value", ["--model", "{empty}", "--prompt", "x", "--out", "{out_dir}", "--steps",
                          "0"], "--steps"),
]  # fmt: skip
CASES["merge"] = [
    (name, [*args, "--out", "{out_file}"], needle) for name, args, needle in MODEL_CASES
] + [("not a .safetensors out", ["--model", "{garbage_safetensors}", "--out", "{out_dir}/m.ckpt"],
      "m.ckpt")]  # fmt: skip
CONFIG_CASES = [
    ("missing config", ["{missing}"], "{missing}"),
    ("folder, not a config", ["{folder}"], "{folder}"),
    ("corrupt config", ["{corrupt_toml}"], "{corrupt_toml}"),
    ("bad config value", ["{bad_config}"], "training.steps"),
    ("bad --set value", ["{bad_model_config}", "--set", "training.lr_scheduler=cosin"],
     "training.lr_scheduler"),
    ("unknown --set key", ["{bad_model_config}", "--set", "training.stepz=3"], "training.stepz"),
    ("corrupt base model", ["{bad_model_config}"], "garbage.safetensors"),
    # formats are checked before the model loads (else a run is lost at its save)
    ("unknown output format", ["{bad_model_config}", "--set", "output.format=bogus"],
     "output.format = 'bogus' is not a LoRA format"),
    ("DoRA in the diffusers format", ["{bad_model_config}", "--set", "method.dora=true",
     "--set", "output.format=diffusers"], "DoRA cannot be saved in the diffusers format"),
    ("dataset without pictures", ["{empty_data_config}"], "{empty}"),
]  # fmt: skip
for _name in ("train", "cv", "lr-find"):
    CASES[_name] = list(CONFIG_CASES)


def _leaf_commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out.update(_leaf_commands(command, f"{prefix}{name} "))
        else:
            out[f"{prefix}{name}"] = command
    return out


COMMANDS = _leaf_commands(main)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "work"
    (root / "empty").mkdir(parents=True)
    (root / "folder" / "sub").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "a").mkdir()
    (root / "pics").mkdir()
    for i in range(6):  # enough pictures for cv's five folds
        Image.new("RGB", (64, 64), (200, 30 * i, 30)).save(root / "pics" / f"p{i}.png")
    paths = {
        "missing": root / "no_such_file.toml",
        "folder": root / "folder",
        "empty": root / "empty",
        "pics": root / "pics",
        "out_dir": root / "out",
        "out_file": root / "out" / "result.safetensors",
        "garbage_png": root / "garbage.png",
        "garbage_safetensors": root / "garbage.safetensors",
        "corrupt_toml": root / "corrupt.toml",
        "bad_dataset_toml": root / "dataset.toml",
        "bad_config": root / "bad_config.toml",
        "bad_model_config": root / "bad_model.toml",
        "empty_data_config": root / "empty_data.toml",
    }
    paths["garbage_png"].write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    paths["garbage_safetensors"].write_bytes(b"\xff" * 64)
    paths["corrupt_toml"].write_text("[training\nsteps = 3\n")
    paths["bad_dataset_toml"].write_text("[[subsets]]\nimage_dir = 'a'\nnum_repeats = '3'\n")
    paths["bad_config"].write_text(BAD_CONFIG_VALUE)
    paths["bad_model_config"].write_text(CONFIG_BAD_MODEL)
    paths["empty_data_config"].write_text(CONFIG_EMPTY_DATA)
    return {k: str(v) for k, v in paths.items()}


def _run(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(main, args, env=env or {"TSUIKA_DEBUG": ""})


def _assert_one_line_error(result, needle: str) -> None:
    stderr = result.stderr
    assert result.exit_code not in (0, None), (result.exit_code, result.output)
    assert "Traceback" not in stderr and result.exc_info[0] is SystemExit, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    assert needle in errors[0], (needle, stderr)


def test_every_command_has_bad_argument_cases() -> None:
    assert set(COMMANDS) == set(CASES), (
        f"commands without cases: {set(COMMANDS) - set(CASES)}; "
        f"cases without a command: {set(CASES) - set(COMMANDS)}"
    )


@pytest.mark.parametrize(
    ("command", "case", "args", "needle"),
    [(c, name, args, needle) for c, cases in CASES.items() for name, args, needle in cases],
    ids=[f"{c}: {name}" for c, cases in CASES.items() for name, _, _ in cases],
)
def test_bad_arguments_give_one_line_naming_the_culprit(
    files: dict[str, str], command: str, case: str, args: list[str], needle: str, one_thread
) -> None:
    result = _run([*command.split(), *(a.format(**files) for a in args)])
    _assert_one_line_error(result, needle.format(**files))


def _generic_cases() -> list[tuple[str, list[str], str]]:
    """For every command: an unknown option, and each bounded number option out of range."""
    cases = []
    for name, command in COMMANDS.items():
        cases.append((name, ["--no-such-option"], "--no-such-option"))
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, click.IntRange):
                low = param.type.min
                if low is not None:
                    flag = param.opts[0]
                    cases.append((name, [flag, str(low - 1)], flag))
    return cases


@pytest.mark.parametrize(("command", "args", "needle"), _generic_cases())
def test_generic_bad_options_are_usage_errors(command: str, args: list[str], needle: str) -> None:
    result = _run([*command.split(), *args])
    assert result.exit_code == 2
    _assert_one_line_error(result, needle)


def test_a_config_error_exits_2_and_a_file_error_1(files: dict[str, str]) -> None:
    assert _run(["train", files["bad_config"]]).exit_code == 2
    assert _run(["prep", files["missing"]]).exit_code == 1


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(files: dict[str, str], how: str) -> None:
    args = ["prep", files["missing"]]
    result = _run(["--debug", *args]) if how == "flag" else _run(args, env={"TSUIKA_DEBUG": "1"})
    assert result.exit_code != 0
    assert isinstance(result.exception, TsuikaError)
    assert files["missing"] in str(result.exception)


def test_every_command_turns_errors_into_messages_on_its_own(files: dict[str, str]) -> None:
    """A command run without the group (tests, ``accelerate launch``) keeps the one-line rule."""
    from tsuika.cli.messages import TsuikaCommand

    assert all(isinstance(c, TsuikaCommand) for c in COMMANDS.values()), [
        name for name, c in COMMANDS.items() if not isinstance(c, TsuikaCommand)
    ]
    result = CliRunner().invoke(COMMANDS["prep"], [files["missing"]], env={"TSUIKA_DEBUG": ""})
    _assert_one_line_error(result, files["missing"])
    assert result.exit_code == 1
