"""Small line charts as PNG, drawn with PIL (no matplotlib): loss curves and lr-find.

:func:`line_chart` draws axes with "nice" ticks (Heckbert 1990, "Nice
numbers for graph labels", Graphics Gems), linear or log10 x, any number of
series (a line, optional point markers), optional vertical marker lines and
a legend. Non-finite values are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 800, 480
MARGIN = (70, 40, 20, 50)  # left, top, right, bottom
TRAIN_COLOUR = (120, 160, 220)
SMOOTH_COLOUR = (30, 80, 180)
VAL_COLOUR = (220, 90, 30)


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: tuple[int, int, int]
    width: int = 2
    markers: bool = False


@dataclass
class Chart:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    log_x: bool = False
    vlines: list[tuple[float, str, tuple[int, int, int]]] = field(default_factory=list)


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values covering [low, high] (Heckbert's nice numbers).

    A range too narrow for float steps (one point, or values equal to many digits)
    is widened first, and ticks are counted by index, so the loop always ends."""
    scale = max(abs(low), abs(high))
    if not high - low > 1e-9 * scale:
        low, high = low - (0.5 * scale or 0.5), high + (0.5 * scale or 0.5)
    raw = (high - low) / max(1, count - 1)
    exp = math.floor(math.log10(raw))
    frac = raw / 10**exp
    step = (1 if frac < 1.5 else 2 if frac < 3 else 5 if frac < 7 else 10) * 10**exp
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}" if value else "0"


def _finite(series: Series, log_x: bool) -> list[tuple[float, float]]:
    pts = []
    for x, y in zip(series.xs, series.ys, strict=True):
        if not (math.isfinite(x) and math.isfinite(y)) or (log_x and x <= 0):
            continue
        pts.append((math.log10(x) if log_x else float(x), float(y)))
    return pts


def _bounds(points: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    if not points:
        return 0.0, 1.0, 0.0, 1.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 0.5
    return x0, x1, y0 - pad, y1 + pad


def line_chart(chart: Chart, path: Path) -> Path:
    """Draw ``chart`` into the PNG ``path``; return the path."""
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, top, right, bottom = MARGIN
    pw, ph = WIDTH - left - right, HEIGHT - top - bottom
    per_series = [_finite(s, chart.log_x) for s in chart.series]
    x0, x1, y0, y1 = _bounds([p for pts in per_series for p in pts])

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * pw, top + (1 - (y - y0) / (y1 - y0)) * ph

    draw.rectangle((left, top, left + pw, top + ph), outline="black")
    xticks = (
        [float(e) for e in range(math.ceil(x0), math.floor(x1) + 1)]
        if chart.log_x
        else nice_ticks(x0, x1)
    )
    for t in xticks:
        x, _ = px(t, y0)
        draw.line((x, top + ph, x, top + ph + 5), fill="black")
        draw.line((x, top, x, top + ph), fill=(235, 235, 235))
        text = f"1e{int(t)}" if chart.log_x else _label(t)
        draw.text((x, top + ph + 8), text, fill="black", font=font, anchor="ma")
    for t in nice_ticks(y0, y1):
        _, y = px(x0, t)
        draw.line((left - 5, y, left, y), fill="black")
        draw.line((left, y, left + pw, y), fill=(235, 235, 235))
        draw.text((left - 8, y), _label(t), fill="black", font=font, anchor="rm")
    for value, label, colour in chart.vlines:
        vx = math.log10(value) if chart.log_x else value
        if x0 <= vx <= x1:
            x, _ = px(vx, y0)
            draw.line((x, top, x, top + ph), fill=colour, width=1)
            draw.text((x + 4, top + 4), label, fill=colour, font=font)
    for s, pts in zip(chart.series, per_series, strict=True):
        xy = [px(x, y) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=s.colour, width=s.width)
        if s.markers or len(xy) == 1:
            for x, y in xy:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=s.colour)
    for i, s in enumerate(chart.series):
        y = top + 10 + 16 * i
        draw.line((left + pw - 150, y, left + pw - 125, y), fill=s.colour, width=3)
        draw.text((left + pw - 120, y), s.label, fill="black", font=font, anchor="lm")
    draw.text((WIDTH / 2, 12), chart.title, fill="black", font=font, anchor="ma")
    draw.text((left + pw / 2, HEIGHT - 16), chart.xlabel, fill="black", font=font, anchor="ma")
    draw.text((8, top - 24), chart.ylabel, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def ema(values: Sequence[float], beta: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (Adam's / fastai's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def plot_losses(train: list[list[float]], val: list[list[float]], path: Path) -> Path:
    """``loss.png``: training loss (raw and smoothed) and the validation loss per evaluation."""
    steps = [s for s, _ in train]
    values = [v for _, v in train]
    series = [
        Series("train", steps, values, TRAIN_COLOUR, width=1),
        Series("train (smoothed)", steps, ema(values), SMOOTH_COLOUR),
    ]
    if val:
        series.append(
            Series("validation", [s for s, _ in val], [v for _, v in val], VAL_COLOUR, markers=True)
        )
    return line_chart(Chart("loss", "step", "loss", series), path)
