"""Crash-safe training: SIGKILL at random moments, resume until done, same adapter.

Each run is a separate process running ``tsuika train`` (the click command,
``tsuika.cli.main``). The processes are forked by multiprocessing's fork
server, a fresh single-threaded interpreter that has imported torch and
tsuika once: a fresh interpreter per run takes ~10 s to start on a busy
machine, a fork a few milliseconds, and 20 kills need 20 starts. Forking the
test process itself is not safe: after the rest of the suite it holds
threads (thread pools, the native engine's workers) whose locks a fork can
copy held, and the child then deadlocks.

Every run uses two torch threads: the bytes must not depend on a single
thread (see ``MKL_CBWR`` in ``tsuika/__init__.py``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from tsuika.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")  # no OpenMP pool in the parent before forks
STEPS, SAVE_EVERY = 6, 2
TOTAL_KILLS, KILLS_PER_RUN = 20, 7  # across three or more runs
SLOW_WRITE = "0.04"  # seconds after each checkpoint file: kills land inside writes
THREADS = 2  # torch threads in every run: bit-identity must not need a single thread


def draw_dataset(root: Path) -> Path:
    folder = root / "2_sks shape"
    folder.mkdir(parents=True)
    for i, colour in enumerate([(220, 40, 40), (40, 170, 60), (40, 70, 210), (235, 200, 30)]):
        image = Image.new("RGB", (64, 64), (245, 245, 245))
        ImageDraw.Draw(image).ellipse((10 + i, 12, 50 + i, 52), fill=colour)
        image.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"sks shape, circle {i}\n")
    return root


def write_config(path: Path, model: Path, data: Path, out: Path) -> Path:
    path.write_text(
        f"""[model]
path = "{model}"
[data]
path = "{data}"
resolution = 32
min_bucket = 32
max_bucket = 64
bucket_step = 32
flip = true
[method]
name = "lora"
rank = 4
alpha = 4
dropout = 0.1
[training]
steps = {STEPS}
batch_size = 1
learning_rate = 1e-2
save_every = {SAVE_EVERY}
lr_scheduler = "cosine"
lr_warmup_steps = 1
noise_offset = 0.05
[output]
dir = "{out}"
name = "tiny"
"""
    )
    return path


def _run_cli(args: list[str], log: str, env: dict[str, str]) -> None:
    """In the forked child: ``tsuika ARGS`` with stdout/stderr appended to ``log``."""
    from tsuika.cli import main

    code = 99
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.update(env)
        import torch

        torch.set_num_threads(THREADS)
        try:
            main(args, prog_name="tsuika", standalone_mode=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(["torch", "tsuika.cli", "tsuika.training.loop"])


def launch(args: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
    """Start a process (from the fork server) that runs ``tsuika ARGS`` with
    stdout/stderr in ``log``; the process handle (``.pid``)."""
    log.touch()
    env = dict(env or {})
    proc = _FORKSERVER.Process(target=_run_cli, args=(args, str(log), env))
    proc.start()
    return proc


def kill(proc: Any) -> None:
    """SIGKILL (a process that has just ended is left as it ended)."""
    proc.kill()
    proc.join()


def wait(proc: Any, timeout: float = 120) -> int:
    proc.join(timeout)
    if proc.exitcode is None:
        kill(proc)
        raise AssertionError(f"process {proc.pid} did not finish in {timeout} s")
    return proc.exitcode


def wait_for(predicate, proc: Any, timeout: float = 60) -> int | None:
    """Poll ``predicate`` until true (None); the exit code if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return None
        if proc.exitcode is not None:
            return proc.exitcode
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the run")


def writing_checkpoint(out: Path, pid: int) -> bool:
    """Whether process ``pid`` is inside a checkpoint write (its temporary folder exists)."""
    root = out / "checkpoints"
    return root.is_dir() and any(p.name.endswith(f".tmp-{pid}") for p in root.iterdir())


def assert_nothing_half_written(out: Path) -> None:
    """Every file a user can see in ``out`` is whole; checkpoints match their manifests.

    ``logs/`` is TensorBoard's append-only event log (CRC-framed records, a
    cut last record is skipped by its reader) and is not checked here.
    """
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        if (
            not path.is_file()
            or rel.parts[0] == "logs"
            or any(p.startswith(".") for p in rel.parts)
        ):
            continue
        if path.suffix == ".safetensors":
            load_file(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            Image.open(path).verify()
        elif path.suffix == ".pt":
            torch.load(path, weights_only=True)
    for step, folder in ckpt.list_checkpoints(out):
        assert ckpt.verify_checkpoint(folder) is None, (step, ckpt.verify_checkpoint(folder))


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("crash")
    data = draw_dataset(root / "data")
    out = root / "reference"
    config = write_config(root / "reference.toml", tiny_model_dir, data, out)
    code = wait(launch(["train", str(config)], root / "reference.log"))
    assert code == 0, (root / "reference.log").read_text()
    reference = (out / "tiny.safetensors").read_bytes()
    return {"root": root, "model": tiny_model_dir, "data": data, "reference": reference}


def run_with_kills(setup: dict, name: str, kills: int, rng: random.Random) -> dict:
    """Train, SIGKILL up to ``kills`` times (every other kill while a checkpoint
    is being written), resume after each, until the run finishes."""
    root = setup["root"]
    out = root / name
    config = write_config(root / f"{name}.toml", setup["model"], setup["data"], out)
    done = in_write = 0
    for attempt in range(4 * kills + 4):
        log = root / f"{name}-{attempt}.log"
        resume = ["--resume"] if ckpt.list_checkpoints(out) else []
        proc = launch(["train", str(config), *resume], log, {ckpt.SLOW_WRITE_ENV: SLOW_WRITE})
        if done >= kills:
            assert wait(proc) == 0, log.read_text()[-3000:]
            break
        if done % 2:
            ended = wait_for(lambda: writing_checkpoint(out, proc.pid), proc)  # noqa: B023
            delay = rng.uniform(0.0, 0.1)
        else:
            ended = wait_for(lambda: b"train:" in log.read_bytes(), proc)  # noqa: B023
            delay = rng.uniform(0.0, 1.5)
        if ended is not None:  # finished before the kill moment came
            assert ended == 0, log.read_text()[-3000:]
            break
        time.sleep(delay)
        kill(proc)
        done += 1
        in_write += writing_checkpoint(out, proc.pid)
        assert_nothing_half_written(out)
    return {"out": out, "kills": done, "in_write": in_write}


def test_sigkill_20_times_and_resume_gives_the_same_adapter_bit_for_bit(setup: dict) -> None:
    """20 kills across at least three runs; each run ends with the reference's bytes."""
    rng = random.Random(16)
    kills = in_write = runs = 0
    while kills < TOTAL_KILLS or runs < 3:
        quota = max(1, min(KILLS_PER_RUN, TOTAL_KILLS - kills))
        result = run_with_kills(setup, f"killed-{runs}", quota, rng)
        assert (result["out"] / "tiny.safetensors").read_bytes() == setup["reference"], runs
        assert_nothing_half_written(result["out"])
        leftovers = [p for p in result["out"].rglob(".*") if "logs" not in p.parts]
        assert leftovers == [], leftovers
        kills, in_write, runs = kills + result["kills"], in_write + result["in_write"], runs + 1
    assert kills >= TOTAL_KILLS
    assert in_write >= 3, f"only {in_write} of {kills} kills landed inside a checkpoint write"


def test_a_cut_short_checkpoint_is_skipped_with_a_message(setup: dict) -> None:
    root = setup["root"]
    out = root / "cut"
    config = write_config(root / "cut.toml", setup["model"], setup["data"], out)
    assert wait(launch(["train", str(config)], root / "cut.log")) == 0
    (out / "tiny.safetensors").unlink()
    newest = ckpt.checkpoint_dir(out, STEPS)
    adapter = newest / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-7])  # e.g. unflushed data lost on power loss
    (ckpt.checkpoint_dir(out, STEPS - SAVE_EVERY) / ckpt.MANIFEST).unlink()

    log = root / "cut-resume.log"
    assert wait(launch(["train", str(config), "--resume"], log)) == 0, log.read_text()
    text = log.read_text()
    assert f"skipping checkpoint {newest}: adapter.safetensors has" in text
    assert f"step-{STEPS - SAVE_EVERY}: no manifest.json" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith(f"step-{STEPS - 2 * SAVE_EVERY}")
    assert (out / "tiny.safetensors").read_bytes() == setup["reference"]


def test_an_explicit_damaged_checkpoint_is_refused(setup: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    state = ckpt.TrainingState(step=3)
    folder = ckpt.save_checkpoint(out, {"w": torch.ones(2)}, state, {})
    assert ckpt.verify_checkpoint(folder) is None
    (folder / "state.pt").write_bytes(b"\0" * (folder / "state.pt").stat().st_size)
    with pytest.raises(ckpt.CheckpointError, match="state.pt does not match its SHA-256"):
        ckpt.resume_target(out, str(folder))


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(setup: dict) -> None:
    """A real ``tsuika train`` process gets SIGINT mid-run."""
    root = setup["root"]
    out = root / "ctrl-c"
    config = write_config(root / "ctrl-c.toml", setup["model"], setup["data"], out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", ckpt.SLOW_WRITE_ENV: "0"}
    env.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    cmd = [
        sys.executable,
        "-m",
        "tsuika.cli",
        "train",
        str(config),
        "--set",
        "training.save_every=0",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    seen = b""
    while b"train:" not in seen and b"step/s" not in seen:
        chunk = proc.stderr.read1(4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    proc.send_signal(signal.SIGINT)
    out_rest, err_rest = proc.communicate(timeout=300)
    text = (seen + err_rest + out_rest).decode(errors="replace")
    assert proc.returncode == 130, text
    saved = ckpt.list_checkpoints(out)
    assert len(saved) == 1 and 0 < saved[0][0] < STEPS, (saved, text)
    assert ckpt.verify_checkpoint(saved[0][1]) is None
    want = f"tsuika train {config} --set training.save_every=0 --resume"
    assert f"resume with: {want}" in text
    assert "Traceback" not in text
    assert not (out / "tiny.safetensors").exists()
    # the printed command finishes the run, with the uninterrupted result
    resumed = subprocess.run(
        [sys.executable, "-m", "tsuika.cli", *want.split()[1:]], capture_output=True, env=env
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert (out / "tiny.safetensors").read_bytes() == setup["reference"]


def test_the_same_adapter_gives_the_same_bytes(tmp_path: Path) -> None:
    """safetensors stores metadata in hash order; our writer sorts it, so files compare."""
    from tsuika.formats.kohya_lora import atomic_save_safetensors

    tensors = {"b": torch.arange(4.0), "a": torch.ones(2, 2)}
    meta = {f"ss_key_{i}": str(i) for i in range(12)}
    files = [
        atomic_save_safetensors(
            tensors,
            tmp_path / f"{i}.safetensors",
            dict(reversed(meta.items()) if i % 2 else meta.items()),
        )
        for i in range(6)
    ]
    assert len({f.read_bytes() for f in files}) == 1
    assert load_file(files[0])["b"].tolist() == [0.0, 1.0, 2.0, 3.0]
