"""Dataset scan: kohya folder conventions and the dataset TOML."""

from __future__ import annotations

from pathlib import Path

import pytest
from tsuika.data.scan import (
    ROOT_SUBSET,
    DatasetError,
    parse_subset_dir,
    require_images,
    scan_dataset,
    scan_folder,
)


def touch(path: Path, text: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by the scan")
    if text is not None:
        path.with_suffix(".txt").write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def kohya_folder(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    touch(root / "10_sks dog" / "b.png", "sks dog on a sofa")
    touch(root / "10_sks dog" / "a.JPG")  # no caption: class tokens
    touch(root / "10_sks dog" / "c.webp")
    (root / "10_sks dog" / "c.caption").write_text("\nfrom the fallback\nsecond line\n")
    touch(root / "3_dog_breed" / "x.bmp", "a dog")
    touch(root / "3_dog_breed" / ".hidden.png")
    touch(root / "3_dog_breed" / "notes.md")
    touch(root / "root.jpeg", "root image")
    touch(root / "x_dog" / "skipped.png")
    touch(root / "cats" / "skipped.png")
    touch(root / "0_none" / "skipped.png")
    touch(root / ".git" / "objects.png")
    return root


def test_kohya_folder_repeats_class_tokens_and_captions(kohya_folder: Path) -> None:
    index = scan_folder(kohya_folder)
    got = [
        (i.path.relative_to(kohya_folder).as_posix(), i.repeats, i.class_tokens, i.caption)
        for i in index
    ]
    assert got == [
        ("root.jpeg", 1, "", "root image"),
        ("10_sks dog/a.JPG", 10, "sks dog", "sks dog"),
        ("10_sks dog/b.png", 10, "sks dog", "sks dog on a sofa"),
        ("10_sks dog/c.webp", 10, "sks dog", "from the fallback"),
        ("3_dog_breed/x.bmp", 3, "dog_breed", "a dog"),
    ]
    assert index.num_samples == 1 + 3 * 10 + 3
    assert [i.subset for i in index] == [ROOT_SUBSET] + ["10_sks dog"] * 3 + ["3_dog_breed"]
    assert index[1].caption_path is None
    assert index[3].caption_path == kohya_folder / "10_sks dog" / "c.caption"
    skipped = {w.path.name for w in index.warnings}
    assert skipped == {"x_dog", "cats", "0_none"}


def test_primary_caption_extension_wins_over_fallback(tmp_path: Path) -> None:
    image = touch(tmp_path / "1_a" / "p.png")
    image.with_suffix(".caption").write_text("fallback")
    image.with_suffix(".tags").write_text("primary")
    assert scan_folder(tmp_path, caption_extension=".tags")[0].caption == "primary"
    assert scan_folder(tmp_path)[0].caption == "fallback"


def test_bad_caption_files_fall_back_to_class_tokens_with_a_warning(tmp_path: Path) -> None:
    touch(tmp_path / "2_cat" / "empty.png").with_suffix(".txt").write_text("  \n\n")
    touch(tmp_path / "2_cat" / "latin1.png").with_suffix(".txt").write_bytes(b"caf\xe9")
    touch(tmp_path / "2_cat" / "bom.png").with_suffix(".txt").write_bytes(b"\xef\xbb\xbfwith bom")
    index = scan_folder(tmp_path)
    assert [i.caption for i in index] == ["with bom", "cat", "cat"]
    problems = sorted((w.path.name, w.problem.split(" (")[0].split(";")[0]) for w in index.warnings)
    assert problems == [
        ("empty.txt", "caption file is empty"),
        ("latin1.txt", "caption file is not UTF-8"),
    ]


def test_order_is_sorted_and_repeatable(tmp_path: Path) -> None:
    for name in ["z.png", "a.png", "m.jpg", "B.png"]:
        touch(tmp_path / "1_x" / name)
    first = [i.path.name for i in scan_folder(tmp_path)]
    assert first == sorted(first) == ["B.png", "a.png", "m.jpg", "z.png"]
    assert first == [i.path.name for i in scan_folder(tmp_path)]


def test_unreadable_entries_are_listed_and_odd_folders_warned(tmp_path: Path) -> None:
    (tmp_path / "1_x").mkdir()
    (tmp_path / "1_x" / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "1_x" / "folder.jpg").mkdir()
    (tmp_path / "1_x" / "nested").mkdir()
    index = scan_folder(tmp_path)
    assert [i.path.name for i in index] == ["gone.png"]
    assert sorted(w.path.name for w in index.warnings) == ["folder.jpg", "nested"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("10_sks dog", (10, "sks dog")),
        ("1_a_b", (1, "a_b")),
        ("x_dog", None),
        ("10", None),
        ("10_", None),
    ],
)
def test_parse_subset_dir(name: str, expected: tuple[int, str] | None) -> None:
    assert parse_subset_dir(name) == expected


def test_missing_and_empty_datasets_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere: dataset folder not found"):
        scan_dataset(tmp_path / "nowhere")
    (tmp_path / "cats").mkdir()
    with pytest.raises(DatasetError, match="no images found.*cats"):
        require_images(scan_dataset(tmp_path))


TOML = """
[general]
caption_extension = ".cap"
keep_tokens = 1
flip_aug = true

[[datasets]]

  [[datasets.subsets]]
  image_dir = "imgs/inst"
  num_repeats = 5
  class_tokens = "sks cat"

  [[datasets.subsets]]
  image_dir = "{reg}"
  class_tokens = "cat"
  is_reg = true
  keep_tokens = 0
  caption_extension = ".txt"
"""


def test_dataset_toml_subsets_inherit_and_resolve(tmp_path: Path) -> None:
    inst = tmp_path / "imgs" / "inst"
    touch(inst / "a.png").with_suffix(".cap").write_text("sks cat, sitting")
    touch(inst / "b.png")
    reg = tmp_path / "elsewhere" / "reg"
    touch(reg / "r.png", "a cat")
    config = tmp_path / "dataset.toml"
    config.write_text(TOML.format(reg=reg.as_posix()))
    index = scan_dataset(config)
    got = [(i.path, i.caption, i.repeats, i.is_reg, i.keep_tokens) for i in index]
    assert got == [
        (inst / "a.png", "sks cat, sitting", 5, False, 1),
        (inst / "b.png", "sks cat", 5, False, 1),
        (reg / "r.png", "a cat", 1, True, 0),
    ]
    assert [w.problem for w in index.warnings] == ["general.flip_aug is a kohya key tsuika ignores"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[subsets]]\nimage_dir = 'a'\nnum_repeat = 3\n",
            r"unknown key subsets\[0\]\.num_repeat \(allowed",
        ),
        ("[[subsets]]\nimage_dir = 'a'\nnum_repeats = '3'\n", "num_repeats has the wrong type"),
        ("[[subsets]]\nimage_dir = 'a'\nnum_repeats = 0\n", "num_repeats must be >= 1"),
        ("[[subsets]]\nclass_tokens = 'x'\n", "image_dir is required"),
        (
            "[[subsets]]\nimage_dir = 'nowhere'\n",
            "nowhere: image folder of subset 'nowhere' not found",
        ),
        ("[general]\nkeep_tokens = 1\n", "no \\[\\[datasets\\]\\]"),
        ("[[datasets]]\nmetadata_file = 'm.json'\n", "fine-tuning"),
        (
            "[[datasets]]\nresolution = 768\n[[datasets.subsets]]\nimage_dir = 'a'\n",
            r"datasets\[0\]\.resolution is not read from a dataset TOML; tsuika sets it in "
            r"data\.resolution",
        ),
        ("[general]\nbatch_size = 4\n[[subsets]]\nimage_dir = 'a'\n", "in training.batch_size"),
        (
            "[[subsets]]\nimage_dir = 'a'\nbucket_no_upscale = true\n",
            r"subsets\[0\]\.bucket_no_upscale .* data\.no_upscale",
        ),
        ("[[subsets]\n", "invalid TOML"),
    ],
)
def test_dataset_toml_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    touch(tmp_path / "a" / "x.png")
    config = tmp_path / "d.toml"
    config.write_text(text)
    with pytest.raises(DatasetError, match=message) as info:
        scan_dataset(config)
    assert str(config) in str(info.value)


def test_dataset_toml_top_level_subsets_shorthand(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "x.png", "hello")
    touch(tmp_path / "b" / "y.png")
    config = tmp_path / "d.toml"
    config.write_text(
        "[[subsets]]\nimage_dir = 'a'\n[[subsets]]\nimage_dir = 'b'\nnum_repeats = 2\nclass_tokens = 'b'\n"
    )
    index = scan_dataset(config)
    assert [(i.caption, i.repeats, i.subset) for i in index] == [("hello", 1, "a"), ("b", 2, "b")]
