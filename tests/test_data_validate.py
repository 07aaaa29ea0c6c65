"""Validation helpers: near-duplicate search, output names, export collisions, TOML datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import noise_image
from tsuika.cli import main
from tsuika.data.validate import (
    DHASH_MAX_DISTANCE,
    PHASH_MAX_DISTANCE,
    near_duplicates,
    output_name,
)


def flip_bits(value: int, n: int, start: int = 0) -> int:
    return value ^ sum(1 << (start + k) for k in range(n))


def test_near_duplicates_need_both_hashes_close() -> None:
    d, p = 0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210
    hashes = [
        (d, p),
        (flip_bits(d, DHASH_MAX_DISTANCE), flip_bits(p, PHASH_MAX_DISTANCE)),  # at both limits
        (flip_bits(d, DHASH_MAX_DISTANCE + 1, 30), p),  # dHash too far
        (d, flip_bits(p, PHASH_MAX_DISTANCE + 1, 20)),  # pHash too far
        None,  # a broken file
        (flip_bits(d, 2, 40), flip_bits(p, 3, 50)),
    ]
    assert near_duplicates(hashes) == {
        1: (0, DHASH_MAX_DISTANCE, PHASH_MAX_DISTANCE),
        5: (0, 2, 3),
    }
    assert near_duplicates([]) == {} and near_duplicates([None, (1, 1)]) == {}


@pytest.mark.parametrize(
    ("rel", "out"),
    [
        ("10_a/x.jpg", "10_a/x.jpg"),
        ("10_a/x.JPEG", "10_a/x.JPEG"),
        ("x.webp", "x.webp"),
        ("x.png", "x.png"),
        ("3_b/y.bmp", "3_b/y.png"),
        ("3_b/y.v2.BMP", "3_b/y.v2.png"),
    ],
)
def test_output_name_keeps_path_and_base_name(rel: str, out: str) -> None:
    assert output_name(rel) == out


def run_json(*args: str) -> dict:
    result = CliRunner().invoke(main, ["prep", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_export_collision_is_reported_not_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "ds" / "1_x"
    folder.mkdir(parents=True)
    noise_image((300, 300), 1).save(folder / "a.bmp")
    noise_image((300, 300), 2).save(folder / "a.png")
    doc = run_json(str(tmp_path / "ds"), "--out", str(tmp_path / "out"))
    problems = {f["path"]: [p["kind"] for p in f["problems"]] for f in doc["files"]}
    assert problems == {"1_x/a.bmp": [], "1_x/a.png": ["export_skipped"]}
    assert doc["out"]["written"] == 1


def test_prep_reads_a_dataset_toml(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    noise_image((512, 384), 1).save(tmp_path / "imgs" / "p.jpg")
    (tmp_path / "imgs" / "p.txt").write_text("a picture")
    config = tmp_path / "data.toml"
    config.write_text("[[subsets]]\nimage_dir = 'imgs'\nnum_repeats = 4\n")
    doc = run_json(str(config))
    (entry,) = doc["files"]
    assert (entry["path"], entry["repeats"], entry["caption"]) == ("imgs/p.jpg", 4, "a picture")
    assert doc["summary"]["samples_per_epoch"] == 4
