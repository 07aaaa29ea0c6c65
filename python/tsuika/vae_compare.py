"""``tsuika vae compare``: which VAE reproduces the user's own pictures best.

Each picture is encoded (the posterior's mode) and decoded by each VAE; the
reconstruction is scored against the picture by PSNR and SSIM, averaged over
the pictures. The best VAE has the highest mean PSNR (SSIM breaks ties).
Large pictures go through the VAE tiled, one at a time
(:mod:`tsuika.generation.vae`), so the comparison runs on a CPU. A
side-by-side PNG shows the same centre crop of each picture and of each
VAE's reconstruction.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from tsuika.errors import TsuikaError

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class VaeCompareError(TsuikaError, ValueError):
    """Inputs that cannot be compared; the message names the file."""


# --------------------------------------------------------------------------- metrics


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of pictures in [0, 1] (peak 1); ``inf`` when equal."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(1.0 / mse)).item()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).reshape(1, 1, size, size)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of ``[C, H, W]`` pictures in [0, 1], per channel, averaged.

    Wang, Bovik, Sheikh, Simoncelli 2004, "Image quality assessment: from
    error visibility to structural similarity": Gaussian window 11 x 11,
    sigma 1.5, K1 = 0.01, K2 = 0.03, dynamic range 1; only windows that lie
    inside the picture (as scikit-image's ``structural_similarity`` with
    ``gaussian_weights=True``).
    """
    window = _gaussian_window()
    if min(a.shape[-2:]) < window.shape[-1]:
        raise VaeCompareError(f"SSIM needs pictures of at least 11 x 11, got {tuple(a.shape)}")
    x, y = a.double().unsqueeze(1), b.double().unsqueeze(1)  # channels as batch
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    sxx = F.conv2d(x * x, window) - mu_x**2
    syy = F.conv2d(y * y, window) - mu_y**2
    sxy = F.conv2d(x * y, window) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return float((num / den).mean())


# --------------------------------------------------------------------------- inputs


def picture_paths(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to their pictures (sorted)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in PICTURE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"picture not found: {item}")
    if not paths:
        raise VaeCompareError("no pictures to compare (give files or folders with pictures)")
    return paths


def _read(path: Path, multiple: int) -> Image.Image:
    """The picture in RGB, centre-cropped to sides that are multiples of ``multiple``."""
    try:
        with Image.open(path) as opened:
            picture = opened.convert("RGB")
    except OSError as exc:
        raise VaeCompareError(f"{path}: not a readable picture ({exc})") from None
    w, h = (picture.width // multiple) * multiple, (picture.height // multiple) * multiple
    if w == 0 or h == 0:
        raise VaeCompareError(f"{path}: {picture.size} is smaller than the VAE factor {multiple}")
    left, top = (picture.width - w) // 2, (picture.height - h) // 2
    return picture.crop((left, top, left + w, top + h))


# --------------------------------------------------------------------------- comparison


@dataclass
class VaeScore:
    name: str
    source: str
    psnr: float
    ssim: float
    per_picture: list[dict[str, float | str]] = field(default_factory=list)


def _factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name}-{i}", i + 1
    taken.add(candidate)
    return candidate


def load_vaes(
    vaes: Sequence[str | os.PathLike], model: str | os.PathLike | None = None
) -> list[tuple[str, str, object]]:
    """``[(name, source, AutoencoderKL)]``: the model's own first (``model:<name>``), then ``vaes``."""
    from tsuika.models import load_vae

    taken: set[str] = set()
    out = []
    if model is not None:
        path = Path(model)
        out.append((_unique(f"model:{path.stem}", taken), str(path), load_vae(path)))
    for item in map(Path, vaes):
        out.append((_unique(item.stem, taken), str(item), load_vae(item)))
    if not out:
        raise VaeCompareError("nothing to compare: give --vae (and/or --model)")
    return out


def score(
    named_vaes: Sequence[tuple[str, str, object]],
    pictures: Sequence[Path],
    *,
    tile_above: int | None = None,
) -> tuple[list[VaeScore], dict[str, list[Image.Image]], list[str]]:
    """Scores per VAE, the reconstructions per VAE name, and the pictures that went tiled."""
    from tsuika.generation.vae import round_trip, to_picture, to_tensor, wants_tiling

    multiple = max(_factor(v) for _, _, v in named_vaes)
    originals = [_read(p, multiple) for p in pictures]
    scores, recon = [], {}
    tiled = {
        str(p)
        for p, o in zip(pictures, originals, strict=True)
        for _, _, v in named_vaes
        if wants_tiling(v, o.height, o.width, tile_above)
    }
    for name, source, vae in named_vaes:
        rows, recon[name] = [], []
        for path, original in zip(pictures, originals, strict=True):
            x = to_tensor(original)
            y = round_trip(vae, x, tile_above=tile_above)[0].clamp(-1, 1)
            a, b = (x[0] + 1) / 2, (y + 1) / 2
            rows.append({"picture": str(path), "psnr": psnr(a, b), "ssim": ssim(a, b)})
            recon[name].append(to_picture(y))
        mean_psnr = sum(r["psnr"] for r in rows) / len(rows)
        mean_ssim = sum(r["ssim"] for r in rows) / len(rows)
        scores.append(VaeScore(name, source, mean_psnr, mean_ssim, rows))
    recon["original"] = originals
    return scores, recon, sorted(tiled)


def side_by_side(
    recon: dict[str, list[Image.Image]], names: Sequence[str], crop: int = 256
) -> Image.Image:
    """One row per picture: the original's centre crop, then each VAE's; names on top."""
    columns = ["original", *names]
    originals = recon["original"]
    size = min(crop, *(min(o.size) for o in originals))
    label = 14
    sheet = Image.new("RGB", (size * len(columns), label + size * len(originals)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * size + 2, 1), name[: max(1, size // 6)], fill="black")
        for r, picture in enumerate(recon[name]):
            left, top = (picture.width - size) // 2, (picture.height - size) // 2
            sheet.paste(
                picture.crop((left, top, left + size, top + size)), (c * size, label + r * size)
            )
    return sheet


def compare(
    images: Iterable[str | os.PathLike],
    vaes: Sequence[str | os.PathLike] = (),
    *,
    model: str | os.PathLike | None = None,
    out: str | os.PathLike | None = "vae-compare.png",
    tile_above: int | None = None,
    crop: int = 256,
) -> dict:
    """Compare VAEs on pictures; returns the report (``best`` names the winner).

    ``out`` is where the side-by-side PNG goes (``None``: not written).
    """
    pictures = picture_paths(images)
    named = load_vaes(vaes, model)
    with torch.no_grad():
        scores, recon, tiled = score(named, pictures, tile_above=tile_above)
    best = max(scores, key=lambda s: (s.psnr, s.ssim))
    report = {
        "pictures": [str(p) for p in pictures],
        "vaes": [asdict(s) for s in scores],
        "best": best.name,
        "tiled": tiled,
        "side_by_side": None,
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        side_by_side(recon, [s.name for s in scores], crop).save(out)
        report["side_by_side"] = str(out)
    return report


def format_table(report: dict) -> str:
    """The report as a text table, the best VAE marked."""
    rows = [("VAE", "PSNR (dB)", "SSIM", "")]
    for s in report["vaes"]:
        mark = "best" if s["name"] == report["best"] else ""
        rows.append((s["name"], f"{s['psnr']:.2f}", f"{s['ssim']:.4f}", mark))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"best: {report['best']}")
    if report.get("side_by_side"):
        lines.append(f"side by side: {report['side_by_side']}")
    return "\n".join(lines)
