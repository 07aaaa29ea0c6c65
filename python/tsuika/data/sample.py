"""A small drawn dataset in kohya conventions, for the README's first command and tests.

Pictures of coloured shapes on plain backgrounds, drawn with PIL, in varied
sizes and aspect ratios (one large), spread over ``10_sks shape`` (captioned),
``3_shape`` (some without a caption file: they take the class tokens) and
the dataset root (1 repeat).
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 210),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 170),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
# (width, height): square, landscape, portrait, wide, tall, small, and a large one.
SIZES = ((512, 512), (768, 512), (512, 768), (960, 384), (384, 960), (320, 240), (2400, 1600))
# (folder, suffix, captioned?) in the order images are dealt out.
FOLDERS = (("10_sks shape", ".png", True), ("3_shape", ".jpg", False), ("", ".webp", True))


def draw_shape(size: tuple[int, int], shape: str, colour: str, background: str) -> Image.Image:
    """One picture: ``shape`` in ``colour`` centred on ``background``."""
    width, height = size
    image = Image.new("RGB", size, BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    r = min(width, height) * 0.35
    cx, cy = width / 2, height / 2
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    return image


def draw_sample_dataset(folder: str | Path, n: int = 12, seed: int = 0) -> Path:
    """Write ``n`` captioned pictures into ``folder`` (created) and return its path.

    Image i uses size ``SIZES[i % len(SIZES)]`` (so n >= 7 includes the large
    one) and folder ``FOLDERS[i % 3]``; in ``3_shape`` every other image has no
    caption file. Deterministic for a given (n, seed).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    root = Path(folder)
    rng = random.Random(seed)
    for i in range(n):
        sub, suffix, captioned = FOLDERS[i % len(FOLDERS)]
        shape = rng.choice(SHAPES)
        colour = rng.choice(list(COLOURS))
        background = rng.choice(list(BACKGROUNDS))
        directory = root / sub
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{i:03d}_{colour}_{shape}{suffix}"
        image = draw_shape(SIZES[i % len(SIZES)], shape, colour, background)
        if suffix == ".jpg":
            image.save(path, quality=92)
        elif suffix == ".png":
            image.save(path, compress_level=1)
        else:
            image.save(path)
        if captioned or i % 2 == 0:
            caption = f"a {colour} {shape} on a {background} background"
            if sub.startswith("10_"):
                caption = f"sks shape, {caption}"
            path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return root
