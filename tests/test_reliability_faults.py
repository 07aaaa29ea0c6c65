"""Faults: an output folder that cannot be written, a full disk, dataset files
that vanish or change during training."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from PIL import Image
from tsuika.cli import main
from tsuika.data.buckets import BucketSpec, group_by_bucket
from tsuika.data.loader import BatchLoader
from tsuika.data.sampler import BucketBatchSampler
from tsuika.data.scan import scan_dataset
from tsuika.data.watch import DatasetChangedError
from tsuika.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")


def _pictures(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32, 32), (40 * i, 200, 90)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"thing {i}")
    return folder


def _config(tmp_path: Path, model: Path, out: Path) -> Path:
    data = _pictures(tmp_path / "data" / "1_thing", 2).parent
    config = tmp_path / "run.toml"
    config.write_text(
        f'[model]\npath = "{model}"\n[data]\npath = "{data}"\nresolution = 32\n'
        "min_bucket = 32\nmax_bucket = 64\nbucket_step = 32\n"
        '[method]\nname = "lora"\nrank = 2\n[training]\nsteps = 4\nsave_every = 2\n'
        f'[output]\ndir = "{out}"\nname = "x"\n'
    )
    return config


def _train(*args: str):
    result = CliRunner().invoke(main, ["train", *args])
    return result, result.output + str(result.exception or "")


def test_an_output_folder_that_cannot_be_written_is_a_clear_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder's parent should be")
    out = blocker / "out"
    result, message = _train(str(_config(tmp_path, tiny_model_dir, out)))
    assert result.exit_code != 0
    assert f"{out}: output folder cannot be written: Not a directory" in message
    assert blocker.read_text().startswith("a file")


def _disk_full_after(real, budget: list[int]):
    """A safetensors writer that writes half the file, then fails as a full disk
    would, once ``budget`` calls have passed."""

    def write(tensors, filename, metadata=None):
        budget[0] -= 1
        if budget[0] >= 0:
            return real(tensors, filename, metadata=metadata)
        data = safetensors.torch.save(tensors, metadata=metadata)
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_a_full_disk_is_a_clear_error_and_earlier_files_stay_whole(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / "x.safetensors"
    safetensors.torch.save_file({"w": torch.ones(3)}, earlier)  # an earlier run's file
    earlier_bytes = earlier.read_bytes()
    config = str(_config(tmp_path, tiny_model_dir, out))

    # 1. the disk fills while the step-4 checkpoint is written
    monkeypatch.setattr(ckpt, "save_file", _disk_full_after(ckpt.save_file, [1]))
    result, message = _train(config)
    assert result.exit_code != 0
    assert f"{ckpt.checkpoint_dir(out, 4)}: cannot write: No space left on device" in message
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2]
    assert ckpt.verify_checkpoint(ckpt.checkpoint_dir(out, 2)) is None
    assert not list((out / "checkpoints").glob(".*")), "a half-written checkpoint was left"
    assert earlier.read_bytes() == earlier_bytes
    monkeypatch.undo()

    # 2. resumed, the disk fills while the final file replaces the earlier one
    monkeypatch.setattr(
        safetensors.torch, "save_file", _disk_full_after(safetensors.torch.save_file, [0])
    )
    result, message = _train(config, "--resume")
    assert result.exit_code != 0
    assert f"{earlier}: cannot write: No space left on device" in message
    assert earlier.read_bytes() == earlier_bytes
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2, 4]
    assert not [p for p in out.glob(".*") if p.is_file()], "a temporary file was left"
    monkeypatch.undo()

    # 3. with room again, the run finishes from its last checkpoint
    result, message = _train(config, "--resume")
    assert result.exit_code == 0, message
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step-4") and summary["steps_done"] == 4
    assert earlier.read_bytes() != earlier_bytes
    safetensors.torch.load_file(earlier)


# ------------------------------------------------------------------ vanishing files


def _loader(folder: Path, on_missing: str, reports: list[str]) -> BatchLoader:
    index = scan_dataset(folder)
    groups = group_by_bucket(index, BucketSpec(32, 32, 64, 32))
    sampler = BucketBatchSampler(groups.buckets, groups.repeats, 2, seed=1)
    loader = BatchLoader(index, groups.buckets, sampler, threads=1, on_missing=on_missing)
    loader.watch.report = reports.append
    return loader


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_vanished_file_is_reported_and_skipped_when_asked(tmp_path: Path, prefetch: int) -> None:
    folder = _pictures(tmp_path / "data" / "1_thing", 4).parent
    reports: list[str] = []
    loader = _loader(folder, "skip", reports)
    loader.prefetch = prefetch
    gone = loader.index[1].path
    with loader:
        stream = loader.iterate(0, 0, epochs=4)
        next(stream)
        gone.unlink()
        later = list(stream)
    assert len(reports) == 1 and str(gone) in reports[0] and "vanished" in reports[0]
    assert later, "training stopped instead of going on"
    # batches fetched ahead before the deletion may still hold it; none after that
    assert all(1 not in b["indices"] for b in later[prefetch + 1 :])
    assert all(b["pixels"].shape[0] == 2 for b in later)


def test_a_vanished_or_changed_file_stops_the_run_by_default(tmp_path: Path) -> None:
    folder = _pictures(tmp_path / "data" / "1_thing", 4).parent
    loader = _loader(folder, "stop", [])
    loader.prefetch = 0
    changed = loader.index[2].path
    with loader:
        stream = loader.iterate(0, 0, epochs=4)
        next(stream)
        Image.new("RGB", (48, 32), (0, 0, 0)).save(changed)
        with pytest.raises(DatasetChangedError) as err:
            list(stream)
    assert str(changed) in str(err.value) and "changed" in str(err.value)
    assert 'data.on_missing = "skip"' in str(err.value)


def test_on_missing_takes_only_stop_or_skip(tmp_path: Path) -> None:
    from tsuika.config import ConfigError, load_config

    config = tmp_path / "c.toml"
    config.write_text('[data]\non_missing = "ignore"\n')
    with pytest.raises(ConfigError, match="on_missing"):
        load_config(config, [])
