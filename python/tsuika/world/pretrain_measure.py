"""Measure a tiny-world model with the evaluator: generate pictures for a prompt
and count the share that shows what the prompt asks for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Prompts whose answer the evaluator can check; the first two are the issue's own.
CHECK_PROMPTS: dict[str, dict[str, str]] = {
    "a red circle on a white background": {"shape": "circle", "colour": "red"},
    "a blue square": {"shape": "square", "colour": "blue"},
    "a green triangle on a black background": {"shape": "triangle", "colour": "green"},
    "a yellow star": {"shape": "star", "colour": "yellow"},
    "a purple hexagon on a white background": {"shape": "hexagon", "colour": "purple"},
    "an orange cross": {"shape": "cross", "colour": "orange"},
}


def generate_arrays(
    model: Any, prompt: str, n: int, *, steps: int = 25, cfg: float = 6.0, seed: int = 0
) -> np.ndarray:
    """``n`` pictures for ``prompt`` as uint8 [n, 64, 64, 3] (DDIM, classifier-free guidance)."""
    from tsuika.training.sampling import sample_pictures

    images = sample_pictures(
        model, [prompt] * n, width=64, height=64, steps=steps, cfg=cfg, seed=seed
    )
    return np.stack([np.asarray(image.convert("RGB")) for image in images])


def score_prompt(
    evaluator: Any, images: np.ndarray, expected: Mapping[str, str]
) -> dict[str, float]:
    """Share of pictures right on each expected head, and on all of them (``"both"``)."""
    out = {head: evaluator.score(images, {head: label}) for head, label in expected.items()}
    out["both"] = evaluator.score(images, dict(expected))
    return out


def measure(
    model: Any,
    prompts: Mapping[str, Mapping[str, str]] | None = None,
    *,
    n: int = 32,
    steps: int = 25,
    cfg: float = 6.0,
    seed: int = 0,
    evaluator: Any = None,
) -> dict[str, dict[str, float]]:
    """``{prompt: {"shape": share, "colour": share, "both": share}}`` over ``n`` pictures each."""
    from .evaluator import load_evaluator

    evaluator = evaluator or load_evaluator()
    results = {}
    for prompt, expected in (prompts or CHECK_PROMPTS).items():
        images = generate_arrays(model, prompt, n, steps=steps, cfg=cfg, seed=seed)
        results[prompt] = score_prompt(evaluator, images, expected)
    return results


def format_table(results: Mapping[str, Mapping[str, float]], heads: Sequence[str] = ()) -> str:
    """A small Markdown table of :func:`measure`'s results."""
    heads = list(heads) or sorted({h for r in results.values() for h in r})
    lines = ["| prompt | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for prompt, row in results.items():
        cells = " | ".join(f"{row[h]:.2f}" if h in row else "-" for h in heads)
        lines.append(f"| {prompt} | {cells} |")
    return "\n".join(lines)
