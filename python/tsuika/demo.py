"""``tsuika demo``: teach the tiny world's pretrained model a shape it never saw.

The base (:func:`tsuika.world.base_model_path`) was pretrained without the
heart (:data:`tsuika.world.base.HELD_OUT_SHAPES`). The demo draws hearts
captioned with an identifier ("a red zkz on a white background"), prepares
the dataset with the checks ``tsuika prep`` runs, trains a LoRA with
:func:`tsuika.train`, and generates before/after pictures for the identifier
prompt and a composition prompt (the concept in a colour its pictures never
had). The evaluator measures fidelity (share of hearts) and composition
(hearts in that colour); a known prompt checks the prior is kept.
``grid.png``, ``report.md`` and ``report.json`` go to the output folder.

The helpers here (concept pictures, dataset preparation, sampling, scoring,
grids) are shared with ``benches/quality.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from tsuika.errors import TsuikaError
from tsuika.world.render import COLOURS, Scene, caption, sample_scenes, write_dataset

Log = Callable[[str], None]
GEN_STEPS = 20
GEN_CFG = 6.0


class DemoError(TsuikaError, RuntimeError):
    """A demo step that could not run; the message names the step and the file."""


@dataclass(frozen=True)
class Concept:
    """A shape the base never saw, named by ``identifier`` in captions and prompts."""

    identifier: str = "zkz"
    shape: str = "heart"
    withheld_colour: str = "blue"  # never in the concept's pictures: the composition test
    known: dict[str, str] = field(
        default_factory=lambda: {"prompt": "a red circle on a white background",
                                 "shape": "circle", "colour": "red"}
    )  # fmt: skip

    @property
    def prompt(self) -> str:
        return f"a {self.identifier}"

    @property
    def composition_prompt(self) -> str:
        return f"a {self.withheld_colour} {self.identifier} on a white background"

    def caption(self, scene: Scene) -> str:
        """The renderer's caption with the shape's name replaced by the identifier."""
        return caption(scene).replace(self.shape, self.identifier)

    def scenes(self, n: int, seed: int, styles: Sequence[str] = ("solid",)) -> list[Scene]:
        colours = [c for c in COLOURS if c != self.withheld_colour]
        return sample_scenes(n, seed, shapes=[self.shape], colours=colours, styles=styles)


def prepare_dataset(
    folder: Path,
    scenes: Sequence[Scene],
    caption_fn: Callable[[Scene], str],
    *,
    repeats: int = 1,
    class_tokens: str = "shape",
) -> tuple[Path, dict[str, Any]]:
    """Write the pictures in kohya layout and run ``tsuika prep``'s checks on them.

    Returns the dataset root and the prep summary; a picture with an error stops here.
    """
    from tsuika.data.buckets import BucketSpec
    from tsuika.data.scan import require_images, scan_dataset
    from tsuika.data.validate import validate_dataset

    write_dataset(folder, scenes, repeats=repeats, class_tokens=class_tokens, caption_fn=caption_fn)
    index = require_images(scan_dataset(folder))
    report = validate_dataset(index, BucketSpec(64, 64, 64, 64))
    summary = report.summary()
    if summary["with_errors"]:
        bad = [f"{f.rel}: {p.message}" for f in report.files for p in f.problems]
        raise DemoError(f"{folder}: dataset check failed: {'; '.join(bad[:3])}")
    return folder, summary


def lora_run_config(
    base: Path, data: Path, out: Path, *, steps: int, seed: int, name: str = "concept"
) -> dict[str, Any]:
    """The ``tsuika.train`` config of the demo's LoRA (64x64 buckets, rank 8, UNet + text)."""
    return {
        "model": {"path": str(base)},
        "data": {"path": str(data), "resolution": 64, "min_bucket": 64, "max_bucket": 64,
                 "bucket_step": 64, "cache_latents": True},
        "method": {"name": "lora", "rank": 8, "alpha": 8, "train_text_encoder": True},
        "training": {"steps": steps, "batch_size": 8, "learning_rate": 2e-3, "seed": seed,
                     "save_every": 0, "lr_scheduler": "cosine",
                     "lr_warmup_steps": max(1, steps // 20), "log_every": 25},
        "output": {"dir": str(out), "name": name},
    }  # fmt: skip


def sample(
    model: Any, prompt: str, n: int, *, seed: int = 1234, steps: int = GEN_STEPS, **adapters: Any
) -> np.ndarray:
    """``n`` pictures (uint8 [n, 64, 64, 3]) from a loaded model with optional adapters
    (``loras=[...]``, ``embeddings=[...]``, ``hypernetworks=[...]``), via :func:`tsuika.generate`."""
    from tsuika.generation import generate

    pictures = generate(
        model, prompt, n=n, steps=steps, cfg=GEN_CFG, seed=seed, sampler="ddim",
        batch_size=n, **adapters,
    )  # fmt: skip
    return np.stack([np.asarray(p.image.convert("RGB")) for p in pictures])


def share(evaluator: Any, images: np.ndarray, **expected: str) -> float:
    """Share of pictures the evaluator reads as ``expected`` (e.g. ``shape="heart"``)."""
    return float(evaluator.score(images, expected))


def picture_grid(
    rows: Sequence[tuple[str, np.ndarray]], columns: int = 8, zoom: int = 2
) -> Image.Image:
    """One labelled row of ``columns`` pictures per ``(label, images)``."""
    size, label_w = 64 * zoom, 200
    columns = min(columns, max(len(images) for _, images in rows))
    grid = Image.new("RGB", (label_w + columns * size, len(rows) * size), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        draw.text((4, r * size + size // 2 - 6), label, fill=(0, 0, 0))
        for c, image in enumerate(images[:columns]):
            tile = Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST)
            grid.paste(tile, (label_w + c * size, r * size))
    return grid


def _evaluate(
    model: Any, evaluator: Any, concept: Concept, n: int, **adapters: Any
) -> tuple[dict, dict]:
    known = concept.known
    pictures = {
        "identifier": sample(model, concept.prompt, n, **adapters),
        "composition": sample(model, concept.composition_prompt, n, **adapters),
        "known": sample(model, known["prompt"], n, **adapters),
    }
    scores = {
        "fidelity": share(evaluator, pictures["identifier"], shape=concept.shape),
        "composition": share(
            evaluator, pictures["composition"], shape=concept.shape, colour=concept.withheld_colour
        ),
        "known_prompt": share(
            evaluator, pictures["known"], shape=known["shape"], colour=known["colour"]
        ),
    }
    return scores, pictures


def run_demo(
    out: Path, *, steps: int = 400, n_images: int = 30, n_eval: int = 16, seed: int = 0,
    log: Log = print,
) -> dict[str, Any]:  # fmt: skip
    """The whole demo; returns the report (also written as ``report.json``)."""
    import tsuika
    from tsuika.models import load_base_model
    from tsuika.world import load_evaluator
    from tsuika.world.base import base_model_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, concept, base = time.time(), Concept(), base_model_path()
    evaluator = load_evaluator()
    data, prep = prepare_dataset(
        out / "data",
        concept.scenes(n_images, seed),
        concept.caption,
        class_tokens=concept.identifier,
    )
    log(
        f"dataset: {prep['images']} pictures of a {concept.shape} called {concept.identifier!r} in {data}"
    )
    model = load_base_model(base)
    before, before_pics = _evaluate(model, evaluator, concept, n_eval)
    log(f"before: {before}")
    t0 = time.time()
    summary = tsuika.train(lora_run_config(base, data, out / "lora", steps=steps, seed=seed))
    train_seconds = time.time() - t0
    lora = Path(summary["final_file"])
    log(f"trained LoRA for {summary['steps_done']} steps in {train_seconds:.0f}s: {lora}")
    after, after_pics = _evaluate(model, evaluator, concept, n_eval, loras=[(lora, 1.0)])
    log(f"after: {after}")
    grid = picture_grid([
        (f"before: {concept.prompt}", before_pics["identifier"]),
        (f"after: {concept.prompt}", after_pics["identifier"]),
        (f"before: {concept.withheld_colour} {concept.identifier}", before_pics["composition"]),
        (f"after: {concept.withheld_colour} {concept.identifier}", after_pics["composition"]),
        ("after: red circle", after_pics["known"]),
    ])  # fmt: skip
    grid.save(out / "grid.png")
    report = {
        "base_model": str(base),
        "concept": {"identifier": concept.identifier, "shape": concept.shape,
                    "withheld_colour": concept.withheld_colour, "pictures": n_images},
        "prompts": {"identifier": concept.prompt, "composition": concept.composition_prompt,
                    "known": concept.known["prompt"]},
        "prep": prep, "lora": str(lora), "steps": summary["steps_done"],
        "train_seconds": round(train_seconds, 1), "seconds": round(time.time() - start, 1),
        "pictures_per_prompt": n_eval, "before": before, "after": after,
        "grid": str(out / "grid.png"),
    }  # fmt: skip
    write_report(out, report)
    return report


def write_report(out: Path, report: dict[str, Any]) -> None:
    """``report.json`` and a short ``report.md``."""
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    c, b, a = report["concept"], report["before"], report["after"]
    lines = [
        "# tsuika demo: teaching the tiny model a new shape",
        "",
        f"The base model never saw a {c['shape']}. {c['pictures']} pictures of {c['shape']}s "
        f"captioned with the identifier `{c['identifier']}` (never {c['withheld_colour']}) "
        f"trained a LoRA for {report['steps']} steps ({report['train_seconds']:.0f} s).",
        "",
        f"Scores by the tiny world's evaluator over {report['pictures_per_prompt']} pictures each:",
        "",
        "| measure | prompt | before | after |",
        "|---|---|---|---|",
        f"| fidelity ({c['shape']}) | {report['prompts']['identifier']} | {b['fidelity']:.2f} | {a['fidelity']:.2f} |",
        f"| composition ({c['withheld_colour']} {c['shape']}) | {report['prompts']['composition']} "
        f"| {b['composition']:.2f} | {a['composition']:.2f} |",
        f"| prior kept | {report['prompts']['known']} | {b['known_prompt']:.2f} | {a['known_prompt']:.2f} |",
        "",
        f"LoRA: `{report['lora']}`  ",
        "Pictures: `grid.png` (rows: before/after for each prompt).",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
