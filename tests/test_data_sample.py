"""The drawn sample dataset: deterministic, kohya layout, varied sizes, some captions missing."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from tsuika.data.sample import draw_sample_dataset
from tsuika.data.scan import scan_dataset


def test_sample_dataset_layout_and_determinism(tmp_path: Path) -> None:
    a = draw_sample_dataset(tmp_path / "a", n=12, seed=3)
    b = draw_sample_dataset(tmp_path / "b", n=12, seed=3)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files_a) > 12  # 12 pictures and the captions of most
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    index = scan_dataset(a)
    assert len(index) == 12 and not index.warnings
    assert {i.subset: i.repeats for i in index} == {".": 1, "10_sks shape": 10, "3_shape": 3}
    uncaptioned = [i for i in index if i.caption_path is None]
    assert uncaptioned and all(i.caption == "shape" for i in uncaptioned)
    sizes = set()
    for item in index:
        with Image.open(item.path) as image:
            sizes.add(image.size)
            if item.caption_path is not None:
                colour = item.caption.split(" on ")[0].split()[-2]
                assert colour in item.path.name  # the caption describes the picture
    ratios = {round(w / h, 2) for w, h in sizes}
    assert len(ratios) >= 5 and max(w for w, _ in sizes) >= 2000
    other = draw_sample_dataset(tmp_path / "c", n=12, seed=4)
    assert sorted(p.name for p in other.rglob("*.txt")) != sorted(p.name for p in a.rglob("*.txt"))
