"""Class pictures: generated up to num_class_images and kept, paired batches at the
instance batch's size, deterministic draws, captions."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tsuika.methods.dreambooth import DreamBoothConfig, DreamBoothMethod, class_images
from tsuika.models import build_tiny_model

CLASS_PROMPT = "a photo of a dog"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(seed=3)


@pytest.fixture
def generated(monkeypatch) -> list[list[int]]:
    """Records the seeds of every generate_pictures call."""
    calls: list[list[int]] = []
    real = class_images.generate_pictures

    def spy(model, prompt, seeds, **kwargs):
        calls.append(list(seeds))
        return real(model, prompt, seeds, **kwargs)

    monkeypatch.setattr(class_images, "generate_pictures", spy)
    return calls


def config(folder: Path, n: int = 3, **extra) -> DreamBoothConfig:
    return DreamBoothConfig(
        instance_prompt="a photo of sks dog",
        class_prompt=CLASS_PROMPT,
        class_data=str(folder),
        num_class_images=n,
        class_generation_steps=2,
        class_generation_batch=2,
        **extra,
    )


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_missing_pictures_are_generated_and_kept(model, generated, tmp_path: Path) -> None:
    folder = tmp_path / "class"
    images = class_images.ensure_class_images(model, config(folder, 3))
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"class-0000{i}.{e}" for i in range(3) for e in ("png", "txt")]
    assert [p.name for p in images.paths] == [
        "class-00000.png",
        "class-00001.png",
        "class-00002.png",
    ]
    assert all((folder / f"class-0000{i}.txt").read_text() == CLASS_PROMPT + "\n" for i in range(3))
    assert images.captions == (CLASS_PROMPT,) * 3
    assert generated == [[0, 1], [2]]  # seed = class_generation_seed + number, in batches of 2
    with Image.open(images.paths[0]) as image:
        assert image.size == (64, 64)  # the tiny model's native size
    assert not np.array_equal(pixels(images.paths[0]), pixels(images.paths[1]))

    generated.clear()
    again = class_images.ensure_class_images(model, config(folder, 3))
    assert generated == [] and again == images  # a second run generates nothing

    before = pixels(folder / "class-00001.png")
    (folder / "class-00001.png").unlink()
    class_images.ensure_class_images(model, config(folder, 3))
    assert generated == [[1]]  # exactly the deleted one, from its own seed
    # the same picture: alone instead of in a batch of 2, convolutions may round a
    # pixel differently, never by more than one level
    regenerated = pixels(folder / "class-00001.png").astype(int)
    assert np.abs(regenerated - before.astype(int)).max() <= 1

    generated.clear()
    class_images.ensure_class_images(model, config(folder, 5))
    assert generated == [[3, 4]]  # a larger num_class_images tops the folder up


def test_users_own_pictures_count_and_extra_ones_are_not_used(
    model, generated, tmp_path: Path
) -> None:
    folder = tmp_path / "class"
    folder.mkdir()
    for name in ("b.jpg", "a.png"):
        Image.new("RGB", (80, 48), (10, 200, 30)).save(folder / name)
    (folder / ".hidden.png").write_bytes(b"")
    images = class_images.ensure_class_images(model, config(folder, 3))
    assert generated == [[0]]
    assert [p.name for p in images.paths] == ["a.png", "b.jpg", "class-00000.png"]
    fewer = class_images.ensure_class_images(model, config(folder, 2))
    assert [p.name for p in fewer.paths] == ["a.png", "b.jpg"]


def test_class_data_that_is_a_file_is_refused(model, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="method.class_data: .* is not a folder"):
        class_images.ensure_class_images(model, config(tmp_path / "f"))


def test_captions_of_class_pictures_follow_use_captions(model, tmp_path: Path) -> None:
    folder = tmp_path / "class"
    folder.mkdir()
    for i, colour in enumerate([(200, 0, 0), (0, 0, 200)]):
        Image.new("RGB", (64, 64), colour).save(folder / f"{i}.png")
    (folder / "0.txt").write_text("a red dog\n")
    (folder / "1.txt").write_text("\n")
    plain = class_images.ensure_class_images(model, config(folder, 2))
    own = class_images.ensure_class_images(model, config(folder, 2, use_captions=True))
    assert plain.captions == (CLASS_PROMPT, CLASS_PROMPT)
    assert own.captions == ("a red dog", CLASS_PROMPT)


@pytest.fixture
def prepared(model, tmp_path: Path) -> DreamBoothMethod:
    folder = tmp_path / "class"
    folder.mkdir()
    for i in range(6):  # different sizes and colours: any picture fits any bucket
        Image.new("RGB", (40 + 16 * i, 90 - 8 * i), (40 * i, 255 - 40 * i, 90)).save(
            folder / f"{i}.png"
        )
    method = DreamBoothMethod(config(folder, 6))
    method.prepare(model)
    return method


@pytest.mark.parametrize("shape", [(2, 3, 64, 96), (1, 3, 96, 64), (3, 3, 32, 32)])
def test_paired_batch_matches_the_instance_batch(prepared: DreamBoothMethod, shape) -> None:
    batch = {"pixels": torch.zeros(shape), "captions": ["x"] * shape[0], "epoch": 0, "batch": 0}
    paired = prepared.paired_batch(batch, step=4)
    assert paired["pixels"].shape == shape and paired["pixels"].dtype == torch.float32
    assert paired["captions"] == [CLASS_PROMPT] * shape[0]
    assert -1.0 <= float(paired["pixels"].min()) and float(paired["pixels"].max()) <= 1.0
    colours = {tuple(p[:, 0, 0].tolist()) for p in paired["pixels"]}
    assert len(colours) == shape[0]  # distinct pictures while the folder has enough


def test_paired_batch_of_cached_latents_uses_the_picture_size(prepared) -> None:
    batch = {"latents": torch.zeros(2, 4, 8, 12), "captions": ["x", "y"], "epoch": 1, "batch": 3}
    assert prepared.paired_batch(batch, 0)["pixels"].shape == (2, 3, 64, 96)


def test_paired_batches_are_deterministic_in_seed_step_and_batch(prepared, model) -> None:
    batch = {"pixels": torch.zeros(2, 3, 32, 32), "epoch": 0, "batch": 0}
    draws = [prepared.paired_batch(batch, step)["pixels"] for step in range(8)]
    torch.testing.assert_close(prepared.paired_batch(batch, 5)["pixels"], draws[5])
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # steps draw differently
    other = prepared.paired_batch({**batch, "batch": 1}, 5)["pixels"]
    reseeded = DreamBoothMethod(prepared.config)
    reseeded.prepare(model)
    assert torch.equal(reseeded.paired_batch(batch, 5)["pixels"], draws[5])  # a new run agrees
    reseeded.seed = 12345
    changed = [
        not torch.equal(reseeded.paired_batch(batch, s)["pixels"], draws[s]) for s in range(8)
    ]
    assert any(changed)  # the seed matters
    assert not torch.equal(other, draws[5])  # so does the batch (micro-batches differ)


def test_more_instance_pictures_than_class_pictures_repeat(model, tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(folder / "only.png")
    method = DreamBoothMethod(config(folder, 1))
    method.prepare(model)
    paired = method.paired_batch({"pixels": torch.zeros(3, 3, 32, 32)}, 0)
    assert paired["pixels"].shape == (3, 3, 32, 32)
    assert torch.equal(paired["pixels"][0], paired["pixels"][2])


def test_no_prior_means_no_paired_batch_and_no_folder(model, tmp_path: Path) -> None:
    cfg = DreamBoothConfig(instance_prompt="sks dog", prior_loss_weight=0.0)
    method = DreamBoothMethod(cfg)
    method.prepare(model)
    assert method.paired_batch({"pixels": torch.zeros(1, 3, 32, 32)}, 0) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("use_captions", "caption", "class_tokens", "expected"),
    [
        (False, "sks dog on grass", "sks dog", "a photo of sks dog"),
        (True, "sks dog on grass", "sks dog", "sks dog on grass"),
        (True, "sks dog", "sks dog", "a photo of sks dog"),  # no caption file: class tokens
        (True, "", "", "a photo of sks dog"),
        (False, "", "", "a photo of sks dog"),
    ],
)
def test_transform_caption(use_captions, caption, class_tokens, expected) -> None:
    cfg = DreamBoothConfig(
        instance_prompt="a photo of sks dog", prior_loss_weight=0.0, use_captions=use_captions
    )
    method = DreamBoothMethod(cfg)
    assert method.transform_caption(caption, class_tokens, random.Random(0)) == expected
