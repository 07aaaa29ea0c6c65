"""The tiny world's renderer: 64x64 pictures of coloured shapes on backgrounds.

A :class:`Scene` names everything in a picture (shape, colour, background,
style, centre, size, rotation); :func:`render` draws it deterministically and
:func:`caption` describes it ("a red circle on a white background").
:func:`sample_scenes` draws reproducible random scenes and
:func:`write_dataset` writes them as a folder in kohya-ss/sd-scripts'
conventions (``<stem>.png`` + ``<stem>.txt``, optionally in ``N_name``).

Drawing: every shape is a polygon of unit circumradius; masks are drawn with
PIL at 4x and box-filtered down (anti-aliasing by supersampling), then the
style's texture is blended over the background with that mask.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tsuika.errors import TsuikaError

SIZE = 64
SUPERSAMPLE = 4
MIN_SIZE, MAX_SIZE = 13.0, 24.0  # circumradius in pixels: always clearly visible
MARGIN = 2.0  # pixels kept free between the shape's circle and the border
MAX_ROTATION = 40.0  # degrees, either way

Point = tuple[float, float]


class WorldError(TsuikaError, ValueError):
    """A scene or option outside the tiny world; the message names the field and allowed values."""


# --- shapes: unit-circumradius polygons centred on (0, 0), y pointing down ----------------


def _regular(n: int, phase: float = -math.pi / 2) -> list[Point]:
    return [
        (math.cos(phase + 2 * math.pi * k / n), math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(points: int = 5, inner: float = 0.45) -> list[Point]:
    out = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * k / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _cross(half_width: float = 0.34) -> list[Point]:
    w = half_width
    quarter = [(w, -1.0), (w, -w), (1.0, -w)]
    out: list[Point] = []
    for turn in range(4):  # rotate the quarter by 90 degrees four times
        c, s = math.cos(turn * math.pi / 2), math.sin(turn * math.pi / 2)
        out += [(x * c - y * s, x * s + y * c) for x, y in quarter]
    return out


def _heart(n: int = 64) -> list[Point]:
    """The classic parametric heart (x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - ...)."""
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x, -y))
    return pts


def _normalise(points: list[Point]) -> tuple[Point, ...]:
    """Centre the bounding box on (0, 0) and scale the farthest point to radius 1."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    r = max(math.hypot(x - cx, y - cy) for x, y in points)
    return tuple(((x - cx) / r, (y - cy) / r) for x, y in points)


SHAPES: dict[str, tuple[Point, ...]] = {
    "circle": _normalise(_regular(96)),
    "square": _normalise(_regular(4, phase=-math.pi / 4)),
    "triangle": _normalise(_regular(3)),
    "star": _normalise(_star()),
    "hexagon": _normalise(_regular(6, phase=0.0)),
    "cross": _normalise(_cross()),
    "heart": _normalise(_heart()),
}
ROTATION_FREE = frozenset({"circle"})  # rotating these changes nothing

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 215, 30),
    "orange": (245, 135, 20),
    "purple": (135, 45, 180),
    "pink": (245, 130, 190),
    "cyan": (30, 200, 220),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "brown": (125, 75, 35),
    "grey": (128, 128, 128),
}


@dataclass(frozen=True)
class Background:
    """A vertical gradient from ``top`` to ``bottom`` (equal for a plain one);
    ``clashes`` are the colours never drawn on it (its own and look-alikes)."""

    top: tuple[int, int, int]
    bottom: tuple[int, int, int]
    clashes: frozenset[str]


def _plain(rgb: tuple[int, int, int], *clashes: str) -> Background:
    return Background(rgb, rgb, frozenset(clashes))


BACKGROUNDS: dict[str, Background] = {
    "white": _plain((255, 255, 255), "white"),
    "black": _plain((0, 0, 0), "black"),
    "grey": _plain((128, 128, 128), "grey"),
    "beige": _plain((235, 222, 195), "white"),
    "navy": _plain((25, 35, 90), "blue", "black"),
    "blue gradient": Background((110, 160, 240), (215, 232, 255), frozenset({"blue", "cyan"})),
    "green gradient": Background((175, 225, 150), (55, 135, 65), frozenset({"green"})),
}

STYLES = ("solid", "outline", "stripes", "dots", "noise")
# What a caption says for each style; each phrase holds the style's keyword.
STYLE_PHRASES = {
    "solid": "",
    "outline": " in outline style",
    "stripes": " with stripes",
    "dots": " with polka dots",
    "noise": " with a noise texture",
}
STYLE_KEYWORDS = {s: s if s != "solid" else "" for s in STYLES}
CAPTION_TEMPLATES = (
    "{a} {colour} {shape}{style} on a {background} background",
    "{a} {colour} {shape}{style} against a {background} background",
    "a picture of {a} {colour} {shape}{style} on a {background} background",
)


def _check(field: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise WorldError(f"Scene.{field}: unknown {value!r}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class Scene:
    """One picture: ``x, y`` the centre in pixels, ``size`` the circumradius in
    pixels, ``rotation`` in degrees (counter-clockwise on screen)."""

    shape: str
    colour: str
    background: str = "white"
    style: str = "solid"
    x: float = SIZE / 2
    y: float = SIZE / 2
    size: float = 20.0
    rotation: float = 0.0

    def __post_init__(self) -> None:
        _check("shape", self.shape, list(SHAPES))
        _check("colour", self.colour, list(COLOURS))
        _check("background", self.background, list(BACKGROUNDS))
        _check("style", self.style, STYLES)
        if self.colour in BACKGROUNDS[self.background].clashes:
            raise WorldError(
                f"Scene: colour {self.colour!r} cannot be drawn on background "
                f"{self.background!r} (it would not show)"
            )
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise WorldError(f"Scene.size: {self.size} outside [{MIN_SIZE}, {MAX_SIZE}] pixels")

    def key(self) -> int:
        """A stable 32-bit hash of the scene (seeds its noise and caption template)."""
        return zlib.crc32(repr(self).encode())


# --- drawing ----------------------------------------------------------------------------


def _polygon(scene: Scene, scale: float) -> list[Point]:
    a = math.radians(scene.rotation)
    c, s = math.cos(a), math.sin(a)
    r = scene.size * scale
    cx, cy = scene.x * scale, scene.y * scale
    # y points down, so (c, s) on screen turns counter-clockwise with -s.
    return [(cx + r * (x * c + y * s), cy + r * (-x * s + y * c)) for x, y in SHAPES[scene.shape]]


def _mask(points: list[Point], *, fill: bool, line_width: float = 0.0) -> np.ndarray:
    """A supersampled mask of the polygon (filled, or its outline), in [0, 1]."""
    big = SIZE * SUPERSAMPLE
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    if fill:
        draw.polygon(points, fill=255)
    if line_width > 0:
        width = max(1, round(line_width * SUPERSAMPLE))
        draw.line([*points, points[0], points[1]], fill=255, width=width, joint="curve")
    return np.asarray(image, dtype=np.float32) / 255.0


def _downsample(mask: np.ndarray) -> np.ndarray:
    """Box-filter a supersampled mask to 64x64."""
    k = SUPERSAMPLE
    return mask.reshape(SIZE, k, SIZE, k).mean(axis=(1, 3))


def _shape_frame(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel coordinates (in 64-pixel units) turned into the shape's frame."""
    big = SIZE * SUPERSAMPLE
    coords = (np.arange(big, dtype=np.float32) + 0.5) / SUPERSAMPLE
    yy, xx = np.meshgrid(coords - scene.y, coords - scene.x, indexing="ij")
    a = math.radians(scene.rotation)
    return xx * math.cos(a) - yy * math.sin(a), xx * math.sin(a) + yy * math.cos(a)


def _stripes(scene: Scene) -> np.ndarray:
    u, v = _shape_frame(scene)
    period = 6.0
    return (np.mod(u + v, period) < period / 2).astype(np.float32)  # diagonal bands


def _dots(scene: Scene) -> np.ndarray:
    u, v = _shape_frame(scene)
    period, radius = 6.0, 1.7
    du = np.mod(u, period) - period / 2
    dv = np.mod(v, period) - period / 2
    return (du * du + dv * dv <= radius * radius).astype(np.float32)


def _noise_texture(scene: Scene, rgb: np.ndarray) -> np.ndarray:
    """The colour mottled by blotchy + fine noise, darkened (light colours) or lightened."""
    rng = np.random.default_rng(scene.key())
    blotch = rng.random((8, 8)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(blotch).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    amount = 0.55 * blotch + 0.45 * rng.random((SIZE, SIZE), dtype=np.float32)
    direction = -1.0 if rgb.mean() > 110 else 1.0
    return rgb + direction * 110.0 * amount[..., None]


def _alpha(scene: Scene) -> np.ndarray:
    """The 64x64 coverage of the scene's foreground, in [0, 1]."""
    points = _polygon(scene, SUPERSAMPLE)
    if scene.style == "outline":
        return _downsample(_mask(points, fill=False, line_width=2.6))
    if scene.style in ("stripes", "dots"):
        pattern = _stripes(scene) if scene.style == "stripes" else _dots(scene)
        inside = _mask(points, fill=True) * pattern
        edge = _mask(points, fill=False, line_width=1.5)
        return _downsample(np.maximum(inside, edge))
    return _downsample(_mask(points, fill=True))


def background_pixels(name: str) -> np.ndarray:
    """The background as float32 [64, 64, 3] in 0..255."""
    _check("background", name, list(BACKGROUNDS))
    bg = BACKGROUNDS[name]
    t = np.linspace(0.0, 1.0, SIZE, dtype=np.float32)[:, None, None]
    column = (1 - t) * np.array(bg.top, np.float32) + t * np.array(bg.bottom, np.float32)
    return np.broadcast_to(column, (SIZE, SIZE, 3)).copy()


def render(scene: Scene) -> np.ndarray:
    """Draw ``scene``: uint8 [64, 64, 3] RGB, identical for equal scenes."""
    rgb = np.array(COLOURS[scene.colour], dtype=np.float32)
    texture = _noise_texture(scene, rgb) if scene.style == "noise" else rgb
    alpha = _alpha(scene)[..., None]
    out = background_pixels(scene.background) * (1 - alpha) + texture * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- captions -----------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(scene: Scene) -> str:
    """A natural caption naming shape, colour, style (unless solid) and background.

    The template varies with the scene but is fixed for a given scene.
    """
    template = CAPTION_TEMPLATES[scene.key() % len(CAPTION_TEMPLATES)]
    return template.format(
        a=_article(scene.colour),
        colour=scene.colour,
        shape=scene.shape,
        style=STYLE_PHRASES[scene.style],
        background=scene.background,
    )


# --- sampling and writing -----------------------------------------------------------------


def _choices(field: str, given: Sequence[str] | None, allowed: Sequence[str]) -> list[str]:
    if given is None:
        return list(allowed)
    if isinstance(given, str):
        given = [given]
    if not given:
        raise WorldError(f"sample_scenes: {field} is empty; allowed: {', '.join(allowed)}")
    for value in given:
        if value not in allowed:
            raise WorldError(
                f"sample_scenes: unknown {field[:-1]} {value!r}; allowed: {', '.join(allowed)}"
            )
    return list(given)


def sample_scenes(
    n: int,
    seed: int,
    *,
    shapes: Sequence[str] | None = None,
    colours: Sequence[str] | None = None,
    styles: Sequence[str] | None = None,
    backgrounds: Sequence[str] | None = None,
    max_rotation: float = MAX_ROTATION,
) -> list[Scene]:
    """``n`` random scenes, the same for the same arguments.

    Each option restricts the draw to the listed values (None: all). The
    background is drawn among those that do not clash with the colour.
    Rotations are uniform in ``[-max_rotation, max_rotation]`` degrees (0: upright).
    """
    if not 0.0 <= max_rotation <= 180.0:
        raise WorldError(f"sample_scenes: max_rotation {max_rotation} outside [0, 180] degrees")
    shape_pool = _choices("shapes", shapes, list(SHAPES))
    colour_pool = _choices("colours", colours, list(COLOURS))
    style_pool = _choices("styles", styles, STYLES)
    bg_pool = _choices("backgrounds", backgrounds, list(BACKGROUNDS))
    fits = {c: [b for b in bg_pool if c not in BACKGROUNDS[b].clashes] for c in colour_pool}
    for colour, fitting in fits.items():
        if not fitting:
            raise WorldError(
                f"sample_scenes: colour {colour!r} clashes with every background in {bg_pool}"
            )
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        shape = shape_pool[rng.integers(len(shape_pool))]
        colour = colour_pool[rng.integers(len(colour_pool))]
        style = style_pool[rng.integers(len(style_pool))]
        background = fits[colour][rng.integers(len(fits[colour]))]
        size = round(float(rng.uniform(MIN_SIZE, MAX_SIZE)), 1)
        low, high = size + MARGIN, SIZE - size - MARGIN
        x, y = (round(float(v), 1) for v in rng.uniform(low, high, size=2))
        rotation = round(float(rng.uniform(-max_rotation, max_rotation)), 1)
        if shape in ROTATION_FREE:
            rotation = 0.0
        scenes.append(Scene(shape, colour, background, style, x, y, size, rotation))
    return scenes


def write_dataset(
    folder: str | Path,
    scenes: Sequence[Scene],
    *,
    repeats: int | None = None,
    class_tokens: str | None = None,
    caption_fn: Callable[[Scene], str] = caption,
) -> Path:
    """Write ``scenes`` as ``00000.png`` + ``00000.txt`` (caption) and return the image folder.

    With ``repeats`` or ``class_tokens`` the pictures go into the kohya
    sub-folder ``<repeats>_<class_tokens>`` (defaults 1 and ``"shape"``),
    otherwise straight into ``folder`` (a dataset root: 1 repeat).
    """
    root = Path(folder)
    target = root
    if repeats is not None or class_tokens is not None:
        repeats = 1 if repeats is None else repeats
        tokens = "shape" if class_tokens is None else class_tokens.strip()
        if not isinstance(repeats, int) or repeats < 1:
            raise WorldError(f"write_dataset: repeats must be a positive integer, got {repeats!r}")
        if not tokens or "/" in tokens:
            raise WorldError(f"write_dataset: class_tokens {class_tokens!r} is not a folder name")
        target = root / f"{repeats}_{tokens}"
    target.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes):
        Image.fromarray(render(scene)).save(target / f"{i:05d}.png")
        (target / f"{i:05d}.txt").write_text(caption_fn(scene) + "\n", encoding="utf-8")
    return target
