"""`tsuika prep`: every problem file reported with its kind, buckets, --out, --json, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import noise_image, write_bad_files, write_good_files
from PIL import Image
from tsuika.cli import main


def prep(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["prep", *args])
    return result.exit_code, result.stdout, result.stderr


def prep_json(*args: str) -> dict:
    code, out, err = prep(*args, "--json")
    assert code == 0, out + err
    return json.loads(out)  # the whole of stdout is one JSON document


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict, dict]:
    root = tmp_path / "corpus"
    bad = write_bad_files(root / "2_broken")
    good = write_good_files(root / "3_odd but fine")
    noise_image((100, 80), 5).save(root / "tiny.png")
    (root / "tiny.txt").write_text("a tiny picture")
    return root, bad, good


def test_json_names_every_problem_file_with_its_kind(corpus) -> None:
    root, bad, good = corpus
    doc = prep_json(str(root))
    files = {f["path"]: f for f in doc["files"]}
    assert len(files) == len(bad) + len(good) + 1
    for name, (_, kind) in bad.items():
        entry = files[f"2_broken/{name}"]
        assert not entry["ok"]
        assert [p["kind"] for p in entry["problems"]] == [kind], entry
        assert name in entry["problems"][0]["message"]
    for name in good:
        entry = files[f"3_odd but fine/{name}"]
        assert entry["ok"] and entry["problems"] == [], entry
        assert entry["bucket"] is not None
    exif = files["3_odd but fine/exif6.jpg"]
    assert (exif["width"], exif["height"]) == (300, 400)  # upright size
    tiny = files["tiny.png"]
    assert tiny["ok"] and [p["kind"] for p in tiny["problems"]] == ["too_small"]
    summary = doc["summary"]
    assert summary["images"] == len(files)
    assert summary["with_errors"] == len(bad)
    assert summary["ok"] == len(good) + 1
    assert sum(b["images"] for b in doc["buckets"]) == len(good) + 1
    assert summary["samples_per_epoch"] == 3 * len(good) + 1
    assert sum(b["samples"] for b in doc["buckets"]) == summary["samples_per_epoch"]


def test_text_report_lists_problems_and_the_bucket_table(corpus) -> None:
    root, bad, _ = corpus
    code, out, err = prep(str(root), "--resolution", "512")
    assert code == 0, out + err
    for name, (_, kind) in bad.items():
        line = next(line for line in out.splitlines() if f"2_broken/{name}:" in line)
        assert kind in line and "error" in line
    assert "too_small" in out and "tiny.png" in out
    assert "bucket" in out and "samples/epoch" in out
    assert "Traceback" not in out + err


def test_out_writes_bucketed_copies_with_captions(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    good = write_good_files(root / "5_sks thing")
    (root / "5_sks thing" / "plain.txt").write_text("sks thing, plain")
    noise_image((500, 300), 7).save(root / "5_sks thing" / "legacy.bmp")
    (root / "5_sks thing" / "legacy.caption").write_text("a bitmap")
    out = tmp_path / "prepped"
    doc = prep_json(str(root), "--out", str(out), "--resolution", "384", "--min-bucket", "128")
    assert doc["out"]["written"] == len(good) + 1
    for entry in doc["files"]:
        rel = Path(entry["path"])
        expected = rel.with_suffix(".png") if rel.suffix == ".bmp" else rel
        assert entry["output"] == expected.as_posix()
        with Image.open(out / expected) as image:
            assert image.size == tuple(entry["bucket"])
    assert (out / "5_sks thing" / "plain.txt").read_text() == "sks thing, plain"
    assert (out / "5_sks thing" / "legacy.caption").read_text() == "a bitmap"
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))
    upright = np.asarray(Image.open(out / "5_sks thing" / "exif6.jpg").convert("RGB")).astype(int)
    height, width, _ = upright.shape
    assert height > width  # stored 400x300 landscape, shown portrait
    red = np.array([230, 20, 20])
    corner = upright[: height // 8, -width // 8 :].reshape(-1, 3).mean(0)
    assert np.abs(corner - red).max() < 40, corner  # marker ends top-right
    for region in (upright[: height // 8, : width // 8], upright[-height // 8 :, -width // 8 :]):
        assert np.abs(region.reshape(-1, 3).mean(0) - red).max() > 100


def test_dedup_flags_resized_copies_only(tmp_path: Path) -> None:
    root = tmp_path / "ds" / "1_x"
    root.mkdir(parents=True)
    noise_image((640, 480), 1).save(root / "a.png")
    noise_image((640, 480), 1).resize((400, 300)).save(root / "b_copy.jpg", quality=80)
    noise_image((640, 480), 2).save(root / "c_other.png")
    doc = prep_json(str(tmp_path / "ds"), "--dedup")
    problems = {f["path"]: f["problems"] for f in doc["files"]}
    assert problems["1_x/a.png"] == [] and problems["1_x/c_other.png"] == []
    (dup,) = problems["1_x/b_copy.jpg"]
    assert dup["kind"] == "near_duplicate" and dup["duplicate_of"] == "1_x/a.png"
    assert dup["dhash_distance"] <= 10 and dup["phash_distance"] <= 10
    assert prep_json(str(tmp_path / "ds"))["summary"]["problems"] == {}  # only with --dedup


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "dataset folder not found"),
        (["{empty}"], "no images found"),
        (
            ["{ds}", "--min-bucket", "1024", "--max-bucket", "512"],
            "--min-bucket 1024 is larger than --max-bucket 512",
        ),
        (["{ds}", "--resolution", "abc"], "expected N or W,H"),
        (["{ds}", "--resolution", "32"], "smaller than --bucket-step"),
        (["{ds}", "--bucket-step", "0"], "--bucket-step"),
        (["{ds}", "--out", "{ds}"], "is the dataset folder itself"),
        (["{ds}", "--caption-extension", "txt"], "must start with '.'"),
    ],
)
def test_cannot_run_exits_non_zero_with_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    ds = tmp_path / "ds"
    (ds / "1_x").mkdir(parents=True)
    noise_image((300, 300), 1).save(ds / "1_x" / "a.png")
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "ds": ds}
    code, out, err = prep(*[a.format(**paths) for a in args], "--json")
    assert code != 0
    assert out == ""
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("Error")]) == 1


def test_sample_dataset_prepares_cleanly(sample_dataset: Path) -> None:
    doc = prep_json(str(sample_dataset), "--resolution", "512")
    summary = doc["summary"]
    assert summary["with_errors"] == 0 and summary["images"] == 9
    assert summary["buckets"] >= 4  # varied aspect ratios
    widths = {f["width"] for f in doc["files"]}
    assert max(widths) >= 2000  # the large one
    subsets = {f["subset"] for f in doc["files"]}
    assert subsets == {".", "10_sks shape", "3_shape"}


def test_no_upscale_and_rectangular_resolution(sample_dataset: Path) -> None:
    doc = prep_json(str(sample_dataset), "--resolution", "768,512", "--no-upscale")
    assert doc["settings"]["no_upscale"] and doc["settings"]["resolution"] == [768, 512]
    for f in doc["files"]:
        bw, bh = f["bucket"]
        assert bw <= f["width"] and bh <= f["height"]  # never enlarged
        assert bw * bh <= 768 * 512
