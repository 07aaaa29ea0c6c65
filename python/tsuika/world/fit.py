"""Train the tiny world's evaluator on rendered scenes.

Pictures are rendered once; each batch is then lightly spoilt (small affine
jitter, blur, colour gain, pixel noise) so that the classifier also reads the
slightly imperfect pictures a diffusion model generates. Everything is seeded
and runs on the CPU, so a run is reproducible on one machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .evaluator import (
    DEFAULT_CHANNELS,
    HEADS,
    Evaluator,
    EvaluatorNet,
    accuracy,
    save_evaluator,
    to_model_input,
)
from .render import BACKGROUNDS, COLOURS, SHAPES, STYLES, render, sample_scenes

HELDOUT_SEED = 1_000_003  # scenes the evaluator never trains on
LABELS = {
    "shape": list(SHAPES),
    "colour": list(COLOURS),
    "style": list(STYLES),
    "background": list(BACKGROUNDS),
}


def _gaussian_kernels(sigma: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """One normalised 1-D Gaussian per sigma: [N, 2 * radius + 1] (sigma 0 -> identity)."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = sigma.clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a different sigma per picture (grouped conv)."""
    n, c, h, w = x.shape
    k = _gaussian_kernels(sigma).repeat_interleave(c, dim=0)  # [N*C, K]
    r = k.shape[1] // 2
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Spoil a batch ([N, 3, 64, 64] in [-1, 1]) a little, differently per picture."""
    n = x.shape[0]

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

    angle = u(-0.08, 0.08)  # radians
    scale = u(0.94, 1.06)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift = u(-0.06, 0.06, 2)  # up to 2 pixels
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sigma = u(0.0, 1.1) * (torch.rand(n, generator=g) < 0.6)
    x = _blur(x, sigma)
    gain = u(0.9, 1.1, 1, 1, 1) * u(0.95, 1.05, 3, 1, 1)  # brightness, then per channel
    x = (x + 1) * gain - 1 + u(-0.06, 0.06, 1, 1, 1)
    noise = u(0.0, 0.08, 1, 1, 1) * torch.randn(x.shape, generator=g)
    return (x + noise).clamp(-1.0, 1.0)


def _render_set(n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    scenes = sample_scenes(n, seed)
    images = torch.from_numpy(np.stack([render(s) for s in scenes]))  # uint8 NHWC
    targets = {h: torch.tensor([LABELS[h].index(getattr(s, h)) for s in scenes]) for h in HEADS}
    return images, targets


def train_evaluator(
    out_path: str | Path,
    *,
    n_train: int = 6_000,
    steps: int = 600,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
    n_heldout: int = 2_000,
    log: Callable[[str], None] | None = print,
) -> Evaluator:
    """Train on ``n_train`` scenes drawn with ``seed``, save to ``out_path``, return it.

    AdamW with a one-cycle schedule (warm-up then cosine decay); the loss is the
    sum of the heads' cross-entropies. The JSON records the held-out accuracy
    per head on ``n_heldout`` scenes drawn with :data:`HELDOUT_SEED`.
    """
    say = log or (lambda _msg: None)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    images, targets = _render_set(n_train, seed)
    say(f"rendered {n_train} scenes in {time.perf_counter() - start:.1f}s")
    net = EvaluatorNet({h: len(LABELS[h]) for h in HEADS}, DEFAULT_CHANNELS)
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=learning_rate, total_steps=steps, pct_start=0.15
    )
    net.train()
    running = math.nan
    for step in range(steps):
        idx = torch.randint(0, n_train, (batch_size,), generator=g)
        x = augment(to_model_input(images[idx]), g)
        logits = net(x)
        loss = sum(F.cross_entropy(logits[h], targets[h][idx]) for h in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if math.isnan(running) else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            say(f"step {step + 1}/{steps} loss {running:.3f} ({time.perf_counter() - start:.0f}s)")
    seconds = time.perf_counter() - start
    info = {
        "training": {
            "n_train": n_train,
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "seed": seed,
            "seconds": round(seconds, 1),
        }
    }
    evaluator = Evaluator(net.eval(), LABELS, info)
    heldout = sample_scenes(n_heldout, HELDOUT_SEED)
    evaluator.info["heldout"] = {
        "seed": HELDOUT_SEED,
        "n": n_heldout,
        "accuracy": {h: round(a, 4) for h, a in accuracy(evaluator, heldout).items()},
    }
    say(f"held-out accuracy: {evaluator.info['heldout']['accuracy']}")
    save_evaluator(evaluator, out_path)
    return evaluator
