"""Hostile files: pickles that would run code, lying safetensors headers, dataset
TOMLs that point outside their folder, adapters with bad tensors."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file
from tsuika.cli import main
from tsuika.data.dataset_toml import scan_dataset_toml
from tsuika.data.scan import DatasetError
from tsuika.formats.safetensors_check import SafetensorsHeaderError, check_bytes, check_file
from tsuika.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")


class RunsCode:
    """Unpickling this runs ``exec``: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """A torch file whose unpickling writes a marker file, and the marker's path."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": RunsCode(marker)}, path)
    torch.load(path, weights_only=False)  # the file really is hostile ...
    assert marker.exists()
    marker.unlink()  # ... so every command below must refuse it unread
    return path, marker


def _picture(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (200, 40, 40)).save(path)
    return path


def _train_config(tmp_path: Path, model: Path, resume_dir: Path | None = None) -> Path:
    data = tmp_path / "data" / "1_sks"
    for i in range(2):
        _picture(data / f"{i}.png")
    out = resume_dir or tmp_path / "out"
    config = tmp_path / "run.toml"
    config.write_text(
        f'[model]\npath = "{model}"\n[data]\npath = "{data.parent}"\nresolution = 32\n'
        "min_bucket = 32\nmax_bucket = 64\nbucket_step = 32\ncache_latents = false\n"
        f'[method]\nname = "lora"\nrank = 2\n[training]\nsteps = 2\nsave_every = 1\n'
        f'[output]\ndir = "{out}"\nname = "x"\n'
    )
    return config


def _hostile_resume(tmp_path: Path, evil_file: Path, model: Path) -> list[str]:
    """A checkpoint whose state.pt is the hostile pickle (its manifest agrees)."""
    out = tmp_path / "out"
    folder = ckpt.save_checkpoint(out, {"w": torch.ones(1)}, ckpt.TrainingState(step=1), {})
    (folder / "state.pt").write_bytes(evil_file.read_bytes())
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    data = (folder / "state.pt").read_bytes()
    manifest["files"]["state.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    return ["train", str(_train_config(tmp_path, model, out)), "--resume", str(folder)]


# command name -> args, given (tmp_path, hostile file, tiny model folder); the
# hostile file is copied to the suffix each reader expects.
COMMANDS = {
    "train model": lambda t, e, m: ["train", str(_train_config(t, e))],
    "train resume": _hostile_resume,
    "generate model": lambda t, e, m: ["generate", "--model", str(e), "--prompt", "x", "--out", str(t / "g")],
    "generate embedding": lambda t, e, m: ["generate", "--model", str(m), "--embedding", str(e.rename(e.with_suffix(".pt"))), "--prompt", "x", "--steps", "1", "--out", str(t / "g")],
    "generate hypernetwork": lambda t, e, m: ["generate", "--model", str(m), "--hypernetwork", str(e.rename(e.with_suffix(".pt"))), "--prompt", "x", "--steps", "1", "--out", str(t / "g")],
    "generate lora": lambda t, e, m: ["generate", "--model", str(m), "--lora", str(e.rename(e.with_suffix(".bin"))), "--prompt", "x", "--steps", "1", "--out", str(t / "g")],
    "generate vae": lambda t, e, m: ["generate", "--model", str(m), "--vae", str(e.rename(e.with_suffix(".pt"))), "--prompt", "x", "--steps", "1", "--out", str(t / "g")],
    "merge model": lambda t, e, m: ["merge", "--model", str(e), "--out", str(t / "m.safetensors")],
    "merge lora": lambda t, e, m: ["merge", "--model", str(m), "--lora", str(e.rename(e.with_suffix(".pt"))), "--out", str(t / "m.safetensors")],
    "convert": lambda t, e, m: ["convert", str(e.rename(e.with_suffix(".pt"))), str(t / "c.safetensors"), "--to", "safetensors"],
    "vae compare": lambda t, e, m: ["vae", "compare", str(_picture(t / "p.png")), "--vae", str(e.rename(e.with_suffix(".pt"))), "--out", str(t / "v.png")],
}  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_pickled_code_is_refused_by_every_command(
    command: str, evil: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    path, marker = evil
    args = COMMANDS[command](tmp_path, path, tiny_model_dir)
    named = "state.pt" if command == "train resume" else str(tmp_path / "evil.")
    result = CliRunner().invoke(main, args)
    message = result.output + str(result.exception or "")
    assert result.exit_code != 0, message
    assert not marker.exists(), f"{command}: the pickle's code ran"
    assert named in message, message
    assert not list(tmp_path.glob("*.safetensors")) and not (tmp_path / "g").exists()


# ------------------------------------------------------------------ safetensors headers


def _st(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _f32(*offsets: int, shape: list[int] | None = None, dtype: str = "F32") -> dict:
    return {"dtype": dtype, "shape": shape or [2], "data_offsets": list(offsets)}


LIES = {
    "too short": (b"\x01\x00\x00", "too short for the 8-byte header length"),
    "length past the end": (_st({"a": _f32(0, 8)}, bytes(8), length=4096), "runs past the end"),
    "length 2**63": (_st({"a": _f32(0, 8)}, bytes(8), length=2**63), "runs past the end"),
    "not json": (_st(b"{'a': 1}", b""), "header is not JSON"),
    "not an object": (_st(b"[1, 2]", b""), "header is not a JSON object"),
    "metadata not strings": (_st({"__metadata__": {"x": 1}}, b""), "__metadata__ must map"),
    "unknown dtype": (_st({"a": _f32(0, 8, dtype="F33")}, bytes(8)), "'a': unknown dtype 'F33'"),
    "negative size": (_st({"a": _f32(0, 8, shape=[-2])}, bytes(8)), "'a': shape [-2]"),
    "size lies": (_st({"a": _f32(0, 8, shape=[3])}, bytes(8)), "'a': data_offsets [0, 8] span 8 bytes, but F32 [3] needs 12"),
    "past the data": (_st({"a": _f32(0, 16, shape=[4])}, bytes(8)), "'a': data_offsets end at 16, past the 8 data bytes"),
    "overlap": (_st({"a": _f32(0, 8), "b": _f32(4, 12)}, bytes(12)), "'b': data_offsets start at 4, which overlaps"),
    "gap": (_st({"a": _f32(0, 8), "b": _f32(12, 20)}, bytes(20)), "'b': data_offsets start at 12, which leaves a gap"),
    "trailing bytes": (_st({"a": _f32(0, 8)}, bytes(12)), "4 bytes after the last tensor"),
    "offsets reversed": (_st({"a": _f32(8, 0)}, bytes(8)), "span -8 bytes"),
}  # fmt: skip


@pytest.mark.parametrize("case", LIES)
def test_lying_safetensors_headers_are_refused(case: str, tmp_path: Path) -> None:
    data, problem = LIES[case]
    with pytest.raises(SafetensorsHeaderError, match="not a readable safetensors file") as err:
        check_bytes(data, "x.safetensors")
    assert problem in str(err.value)
    path = tmp_path / "lie.safetensors"
    path.write_bytes(data)
    with pytest.raises(SafetensorsHeaderError) as err:
        check_file(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_a_true_header_passes_and_matches_what_safetensors_writes(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.ones(3), "b": torch.zeros(2, 2, dtype=torch.float16)}, str(path))
    header = check_file(path)
    assert header["a"]["shape"] == [3] and header["b"]["dtype"] == "F16"
    assert check_bytes(_st({"a": _f32(0, 8)}, bytes(8)))["a"]["data_offsets"] == [0, 8]


READERS = {
    "lora": lambda p: __import__("tsuika.formats.kohya_lora", fromlist=["x"]).load_kohya_lora(p),
    "embedding": lambda p: __import__("tsuika.formats.embedding", fromlist=["x"]).read_embedding(p),
    "hypernetwork": lambda p: __import__(
        "tsuika.formats.a1111_hypernetwork", fromlist=["x"]
    ).load_hypernetwork_file(p),
    "model": lambda p: __import__("tsuika.models.single_file", fromlist=["x"]).read_checkpoint(p),
    "convert": lambda p: __import__("tsuika.convert", fromlist=["x"]).detect(p),
}


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_refuses_a_lying_header_naming_the_file(reader: str, tmp_path: Path) -> None:
    path = tmp_path / "lie.safetensors"
    path.write_bytes(LIES["past the data"][0])
    with pytest.raises(ValueError, match="not a readable safetensors file") as err:
        READERS[reader](path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------ dataset TOML paths


@pytest.mark.parametrize("image_dir", ["../outside", "inside/../../outside", "link"])
def test_a_dataset_toml_cannot_reach_outside_its_folder(tmp_path: Path, image_dir: str) -> None:
    _picture(tmp_path / "outside" / "secret.png")
    root = tmp_path / "dataset"
    _picture(root / "inside" / "a.png")
    (root / "link").symlink_to(tmp_path / "outside")
    toml = root / "data.toml"
    toml.write_text(f'[[subsets]]\nimage_dir = "{image_dir}"\n')
    with pytest.raises(DatasetError, match="leads outside the TOML's folder") as err:
        scan_dataset_toml(toml)
    assert str(toml) in str(err.value) and "subsets[0].image_dir" in str(err.value)


def test_a_dataset_toml_reads_inside_and_absolute_paths(tmp_path: Path) -> None:
    _picture(tmp_path / "elsewhere" / "b.png")
    root = tmp_path / "dataset"
    _picture(root / "inside" / "a.png")
    toml = root / "data.toml"
    toml.write_text(
        f'[[subsets]]\nimage_dir = "inside"\n[[subsets]]\nimage_dir = "{tmp_path / "elsewhere"}"\n'
    )
    index = scan_dataset_toml(toml)
    assert sorted(item.path.name for item in index) == ["a.png", "b.png"]


# ------------------------------------------------------------------ adapters in a resume checkpoint


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        ("nan", "non-finite"),
        ("shape", "does not fit the layer"),
        ("unknown", "unexpected"),
    ],
)
def test_a_checkpoint_adapter_with_bad_tensors_is_refused_naming_the_key(
    tiny_model_dir: Path, corrupt: str, message: str
) -> None:
    from tsuika.methods.registry import build_method
    from tsuika.models import load_base_model

    method = build_method("lora", {"rank": 2})
    method.prepare(load_base_model(tiny_model_dir))
    state = {k: v.clone() for k, v in method.adapter_state().items()}
    key = sorted(k for k in state if k.endswith("lora_up.weight"))[0]
    if corrupt == "nan":
        state[key][0, 0] = float("nan")
    elif corrupt == "shape":
        state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    else:
        key = "lora_unet_no_such_block_proj.lora_up.weight"
        state[key] = torch.zeros(4, 2)
        state[key.replace("up", "down")] = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=message) as err:
        method.load_adapter_state(state)
    assert key.split(".")[0] in str(err.value)
