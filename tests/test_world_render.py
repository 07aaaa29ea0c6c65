"""The tiny world's renderer: determinism, captions, visibility, dataset layout."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from tsuika.data.scan import scan_dataset
from tsuika.world.render import (
    BACKGROUNDS,
    COLOURS,
    MARGIN,
    MIN_SIZE,
    SHAPES,
    STYLE_KEYWORDS,
    STYLES,
    Scene,
    WorldError,
    background_pixels,
    caption,
    render,
    sample_scenes,
    write_dataset,
)


def test_same_scene_renders_identically_and_same_seed_gives_same_scenes() -> None:
    scenes = sample_scenes(20, seed=7)
    assert scenes == sample_scenes(20, seed=7)
    assert scenes != sample_scenes(20, seed=8)
    for scene in scenes[:6]:
        first = render(scene)
        assert first.dtype == np.uint8 and first.shape == (64, 64, 3)
        # an equal scene built afresh draws the same bytes (noise included)
        assert np.array_equal(first, render(dataclasses.replace(scene)))


def test_scenes_differing_in_one_field_render_differently() -> None:
    base = Scene("star", "red", "white", "solid", 30.0, 33.0, 18.0, 10.0)
    for change in (
        {"shape": "heart"},
        {"colour": "blue"},
        {"background": "grey"},
        {"style": "dots"},
        {"x": 31.0},
        {"size": 19.0},
        {"rotation": 20.0},
    ):
        assert not np.array_equal(render(base), render(dataclasses.replace(base, **change))), change


@pytest.mark.parametrize("scene", sample_scenes(60, seed=3), ids=lambda s: f"{s.shape}-{s.style}")
def test_caption_names_shape_colour_style_and_background(scene: Scene) -> None:
    text = caption(scene)
    assert f"{scene.colour} {scene.shape}" in text
    assert f"{scene.background} background" in text
    for style, keyword in STYLE_KEYWORDS.items():
        if keyword:  # a style's keyword appears exactly when it is the scene's style
            assert (keyword in text) == (style == scene.style), (style, text)
    assert caption(scene) == text


def test_captions_use_the_right_article_and_vary() -> None:
    assert "an orange circle" in caption(Scene("circle", "orange", "white"))
    assert "a red circle" in caption(Scene("circle", "red", "white"))
    texts = [caption(s) for s in sample_scenes(40, 0)]
    openings = {t.split(" ")[1] for t in texts}
    assert "picture" in openings and len(openings) > 1  # "a picture of ..." and "a red ..."
    assert any(" against a " in t for t in texts) and any(" on a " in t for t in texts)


def test_colour_is_never_drawn_on_its_own_background() -> None:
    for scene in sample_scenes(2000, seed=11):
        assert scene.colour not in BACKGROUNDS[scene.background].clashes
        assert scene.colour != scene.background
    with pytest.raises(WorldError, match="'white'.*'white'"):
        Scene("circle", "white", "white")
    with pytest.raises(WorldError, match="clashes with every background"):
        sample_scenes(3, 0, colours=["white"], backgrounds=["white"])


def test_sampling_honours_restrictions_and_covers_the_vocabulary() -> None:
    some = sample_scenes(200, 5, shapes=["star", "heart"], colours=["red"], styles=["outline"])
    assert {s.shape for s in some} == {"star", "heart"}
    assert {s.colour for s in some} == {"red"} and {s.style for s in some} == {"outline"}
    every = sample_scenes(600, 1)
    assert {s.shape for s in every} == set(SHAPES)
    assert {s.colour for s in every} == set(COLOURS)
    assert {s.style for s in every} == set(STYLES)
    assert {s.background for s in every} == set(BACKGROUNDS)
    for s in every:  # the shape's circle stays inside the picture
        assert s.size + MARGIN <= s.x <= 64 - s.size - MARGIN + 0.05
        assert s.size + MARGIN <= s.y <= 64 - s.size - MARGIN + 0.05
    with pytest.raises(WorldError, match="unknown shape 'blob'"):
        sample_scenes(1, 0, shapes=["blob"])


def test_max_rotation_bounds_rotations_and_leaves_the_rest_of_the_draw_alone() -> None:
    default = sample_scenes(300, 3, shapes=["square", "star"])
    assert max(abs(s.rotation) for s in default) > 30.0
    narrow = sample_scenes(300, 3, shapes=["square", "star"], max_rotation=10.0)
    assert 5.0 < max(abs(s.rotation) for s in narrow) <= 10.0
    upright = sample_scenes(300, 3, shapes=["square", "star"], max_rotation=0.0)
    assert {s.rotation for s in upright} == {0.0}
    # only the rotation changes: the same shapes, colours, places and sizes
    strip = lambda s: dataclasses.replace(s, rotation=0.0)  # noqa: E731
    assert [strip(s) for s in upright] == [strip(s) for s in default]
    with pytest.raises(WorldError, match="max_rotation -1.0 outside"):
        sample_scenes(1, 0, max_rotation=-1.0)


@pytest.mark.parametrize("field,value", [("shape", "blob"), ("colour", "gray"), ("style", "x")])
def test_unknown_values_are_refused_naming_the_field(field: str, value: str) -> None:
    kwargs = {"shape": "circle", "colour": "red", field: value}
    with pytest.raises(WorldError, match=f"Scene.{field}: unknown '{value}'"):
        Scene(**kwargs)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_and_style_is_visible(shape: str, style: str) -> None:
    for colour, background in (("red", "white"), ("white", "black"), ("black", "green gradient")):
        scene = Scene(shape, colour, background, style, 32.0, 32.0, MIN_SIZE, 25.0)
        picture = render(scene).astype(np.int16)
        bg = np.rint(background_pixels(background)).astype(np.int16)
        changed = np.abs(picture - bg).max(axis=2) > 60
        # at the smallest size the foreground still covers a good number of pixels ...
        assert changed.sum() >= 40, (colour, background, changed.sum())
        # ... and only near the shape's circle
        yy, xx = np.nonzero(changed)
        assert np.hypot(xx + 0.5 - 32, yy + 0.5 - 32).max() <= MIN_SIZE + 2.5


def test_write_dataset_layout_and_captions(tmp_path) -> None:
    scenes = sample_scenes(5, seed=2)
    root = write_dataset(tmp_path / "plain", scenes)
    assert root == tmp_path / "plain"
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [f"{i:05d}.png" for i in range(5)] + [f"{i:05d}.txt" for i in range(5)]
    )
    for i, scene in enumerate(scenes):
        assert (root / f"{i:05d}.txt").read_text(encoding="utf-8") == caption(scene) + "\n"
        with Image.open(root / f"{i:05d}.png") as image:
            assert image.mode == "RGB"
            assert np.array_equal(np.asarray(image), render(scene))

    sub = write_dataset(tmp_path / "kohya", scenes[:3], repeats=10, class_tokens="sks shape")
    assert sub == tmp_path / "kohya" / "10_sks shape"
    index = scan_dataset(tmp_path / "kohya")  # the project's own kohya scanner reads it back
    assert [(i.path.name, i.repeats, i.class_tokens) for i in index.items] == [
        (f"{i:05d}.png", 10, "sks shape") for i in range(3)
    ]
    assert [i.caption for i in index.items] == [caption(s) for s in scenes[:3]]
    with pytest.raises(WorldError, match="repeats"):
        write_dataset(tmp_path / "bad", scenes, repeats=0, class_tokens="x")
