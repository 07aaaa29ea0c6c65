"""The tiny world's evaluator: a small CNN that reads shape, colour, style and
background off a 64x64 picture, to score what a model generates.

Files: ``<name>.safetensors`` (fp16 weights) next to ``<name>.json`` (format
tag, channel widths, the label vocabulary of each head, how it was trained and
its held-out accuracy). Training lives in :mod:`tsuika.world.fit`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from tsuika.errors import TsuikaError

from .render import SIZE, Scene, render

FORMAT = "tsuika-world-evaluator"
FORMAT_VERSION = 1
HEADS = ("shape", "colour", "style", "background")
DEFAULT_CHANNELS = (32, 64, 128, 128)
ASSETS = Path(__file__).parent / "assets"
DEFAULT_PATH = ASSETS / "evaluator.safetensors"


class EvaluatorError(TsuikaError, ValueError):
    """An evaluator file or input that cannot be used; the message names the file or argument."""


class EvaluatorNet(nn.Module):
    """Four conv stages (conv3x3, batch norm, ReLU; max-pool after the first three:
    64 -> 8 pixels), then average + max pooling and one linear layer per head."""

    def __init__(self, head_sizes: Mapping[str, int], channels: Sequence[int] = DEFAULT_CHANNELS):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c_out in enumerate(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]
            layers.append(nn.ReLU(inplace=True))
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({h: nn.Linear(2 * c_in, n) for h, n in head_sizes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: float [N, 3, 64, 64] in [-1, 1] -> logits per head."""
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return {h: head(pooled) for h, head in self.heads.items()}


def to_model_input(images: Any) -> torch.Tensor:
    """Pictures as float32 [N, 3, 64, 64] in [-1, 1].

    Accepts uint8 [N, 64, 64, 3] (or one [64, 64, 3]) as rendered or loaded,
    float [N, 3, H, W] (or one [3, H, W]) in [-1, 1] as a pipeline decodes
    them, numpy or torch, or a list of either; other sizes are resized.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise EvaluatorError("images: empty list")
        images = np.stack([np.asarray(i) for i in images])
    x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    x = x.detach().cpu()
    if x.dtype == torch.uint8:
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise EvaluatorError(
                f"images: uint8 pictures must be [N, H, W, 3], got {tuple(x.shape)}"
            )
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    elif x.is_floating_point():
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise EvaluatorError(
                f"images: float pictures must be [N, 3, H, W] in [-1, 1], got {tuple(x.shape)}"
            )
        x = x.float().clamp(-1.0, 1.0)
    else:
        raise EvaluatorError(f"images: expected uint8 or float pictures, got dtype {x.dtype}")
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    return x.contiguous()


@dataclass
class Evaluator:
    """A trained :class:`EvaluatorNet` with the label names of each head."""

    net: EvaluatorNet
    labels: dict[str, list[str]]
    info: dict[str, Any]

    @torch.no_grad()
    def probabilities(self, images: Any, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Softmax probabilities per head, float32 [N, n_labels]."""
        self.net.eval()
        x = to_model_input(images)
        chunks = [self.net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return {h: torch.cat([c[h] for c in chunks]).softmax(dim=1) for h in self.labels}

    def predict(self, images: Any) -> list[dict[str, Any]]:
        """One dict per picture: the most likely label of each head (``shape``,
        ``colour``, ``style``, ``background``) and ``probabilities``
        ({head: {label: p}})."""
        probs = self.probabilities(images)
        n = len(next(iter(probs.values())))
        out: list[dict[str, Any]] = []
        for i in range(n):
            row: dict[str, Any] = {}
            table: dict[str, dict[str, float]] = {}
            for head, names in self.labels.items():
                p = probs[head][i].tolist()
                row[head] = names[int(np.argmax(p))]
                table[head] = dict(zip(names, p, strict=True))
            row["probabilities"] = table
            out.append(row)
        return out

    def score(self, images: Any, expected: Mapping[str, str | Sequence[str]]) -> float:
        """Fraction of pictures whose predictions match every head named in ``expected``.

        A value is one label for all pictures (``{"shape": "circle"}``) or one
        label per picture.
        """
        predictions = self.predict(images)
        wanted = {h: self._expected_labels(h, v, len(predictions)) for h, v in expected.items()}
        if not wanted:
            raise EvaluatorError(f"expected: name at least one of {', '.join(self.labels)}")
        hits = [all(p[h] == wanted[h][i] for h in wanted) for i, p in enumerate(predictions)]
        return float(np.mean(hits))

    def _expected_labels(self, head: str, value: str | Sequence[str], n: int) -> list[str]:
        if head not in self.labels:
            raise EvaluatorError(
                f"expected: unknown head {head!r}; heads: {', '.join(self.labels)}"
            )
        values = [value] * n if isinstance(value, str) else list(value)
        if len(values) != n:
            raise EvaluatorError(f"expected[{head!r}]: {len(values)} labels for {n} pictures")
        for v in set(values):
            if v not in self.labels[head]:
                raise EvaluatorError(
                    f"expected[{head!r}]: unknown label {v!r}; labels: {', '.join(self.labels[head])}"
                )
        return values


def accuracy(evaluator: Evaluator, scenes: Sequence[Scene]) -> dict[str, float]:
    """Per-head accuracy of ``evaluator`` on freshly rendered ``scenes``."""
    images = np.stack([render(s) for s in scenes])
    predictions = evaluator.predict(images)
    pairs = list(zip(predictions, scenes, strict=True))
    return {
        head: float(np.mean([p[head] == getattr(s, head) for p, s in pairs]))
        for head in evaluator.labels
    }


def _paths(path: str | Path) -> tuple[Path, Path]:
    """``x.safetensors`` / ``x.json`` / ``x`` -> (weights, metadata)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_evaluator(evaluator: Evaluator, path: str | Path) -> Path:
    """Write fp16 weights and the JSON of labels; return the weights' path."""
    weights, meta = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in evaluator.net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    save_file(state, str(weights), metadata={"format": FORMAT})
    channels = [m.out_channels for m in evaluator.net.features if isinstance(m, nn.Conv2d)]
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "channels": channels,
        "labels": evaluator.labels,
        **evaluator.info,
    }
    meta.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return weights


def load_evaluator(path: str | Path | None = None) -> Evaluator:
    """Load an evaluator (default: the one shipped in ``tsuika/world/assets``), float32, CPU."""
    weights, meta = _paths(DEFAULT_PATH if path is None else path)
    for f in (weights, meta):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: evaluator file not found")
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvaluatorError(f"{meta}: not a JSON evaluator description ({e})") from e
    if doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
        raise EvaluatorError(
            f"{meta}: format {doc.get('format')!r} v{doc.get('version')!r}, "
            f"expected {FORMAT!r} v{FORMAT_VERSION}"
        )
    labels = {h: list(v) for h, v in doc["labels"].items()}
    net = EvaluatorNet({h: len(v) for h, v in labels.items()}, doc["channels"])
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise EvaluatorError(
            f"{weights}: weights do not match {meta.name} (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    net.eval()
    info = {k: v for k, v in doc.items() if k not in ("format", "version", "channels", "labels")}
    return Evaluator(net, labels, info)
