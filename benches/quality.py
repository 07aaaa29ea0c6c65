"""Quality bench: does each method teach the tiny world's model something new
without breaking what it knew?

    /work/main/.venv/bin/python benches/quality.py [--out DIR] [--methods lora,...]
        [--steps-scale 1.0] [--eval 16] [--seed 0] [--json] [--recommended]

For every method, with the image counts the mission names (Textual Inversion
4, LoRA 30, DreamBooth 15 + class images, Hypernetwork 200 pictures), the
shipped base (:func:`tsuika.world.base_model_path`, pretrained without hearts)
learns the heart under the identifier ``zkz`` (``<zkz>`` for Textual
Inversion, whose placeholder must be a new word). Pictures of the concept are
never blue. The evaluator then measures, over ``--eval`` pictures per prompt:

- fidelity: share of pictures for "a zkz" that show a heart;
- composition: share for "a blue zkz on a white background" that show a blue heart;
- prior preservation: share right (shape and colour) over three known prompts,
  with the adapted model against the base model;
- early stopping (validation folder of 8 other concept pictures): every run
  trains its whole budget with validation at each of ``--evaluations``
  checkpoints and no patience, and :func:`tsuika.training.early_stop.replay`
  gives the step a run with the rule (``--patience``, ``--smoothing``,
  ``--min-steps``, ``--metric``) would keep -- validation never touches the
  training RNG, so the weights up to any step are the same -- against the
  checkpoint whose pictures score the best fidelity; the same for every rule
  in :data:`CRITERIA` (a second table: the fidelity each loses).

``--recommended``: instead of the fixed recipes, each method's data is given
to ``tsuika recommend`` with the purpose it stands for (Textual Inversion's 4
pictures: concept; LoRA's 30: object; DreamBooth's 15: character;
Hypernetwork's 200: style), the config it writes is trained as written (only
the output folder, the checkpoint interval and ``--steps-scale`` are set) and
scored the same way. Its validation is the split it chose (none under 50
pictures), not the folder.

A method not registered in :data:`tsuika.methods.registry.METHODS` is
reported as "not available"; one that fails reports its error. Nothing is faked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRIOR_PROMPTS = {
    "a red circle on a white background": {"shape": "circle", "colour": "red"},
    "a blue square": {"shape": "square", "colour": "blue"},
    "a green triangle on a black background": {"shape": "triangle", "colour": "green"},
}


@dataclass
class Spec:
    """One method's run: pictures, steps, learning rate and ``[method]`` table."""

    images: int
    steps: int
    learning_rate: float
    table: dict[str, Any]
    identifier: str = "zkz"
    batch_size: int = 8
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def specs(root: Path) -> dict[str, Spec]:
    return {
        "textual_inversion": Spec(
            4, 400, 5e-3,
            {"placeholder_token": "<zkz>", "initializer_token": "shape", "template": "captions"},
            identifier="<zkz>", batch_size=4, note="4 pictures",
        ),
        "lora": Spec(
            30, 400, 2e-3, {"rank": 8, "alpha": 8, "train_text_encoder": True}, note="30 pictures"
        ),
        "dreambooth": Spec(
            15, 300, 2e-4,
            {"instance_prompt": "a zkz", "class_prompt": "a shape", "use_captions": True,
             "class_data": str(root / "dreambooth" / "class"), "num_class_images": 30,
             "class_generation_steps": 20, "train_text_encoder": True},
            note="15 pictures + 30 class pictures",
        ),
        "hypernetwork": Spec(
            200, 400, 1e-3, {"dims": [48, 32, 64]}, note="200 pictures (hearts as a 'style')"
        ),
    }  # fmt: skip


@dataclass
class Validation:
    """How the bench's validation runs and how early stopping reads its curve."""

    timesteps: int = 4
    draws: int = 1
    patience: int | None = 3
    smoothing: float = 0.0
    min_steps: int = 0
    metric: str = "loss"  # or "caption_gain"
    evaluations: int = 8  # per run; a checkpoint at each


def run_config(base: Path, data: Path, val: Path, out: Path, name: str, spec: Spec, seed: int,
               v: Validation):  # fmt: skip
    """The run's config: the full step budget with validation recorded, no stopping
    (``replay`` gives the step each criterion keeps from the same curve)."""
    every = max(1, spec.steps // v.evaluations)
    return {
        "model": {"path": str(base)},
        "data": {"path": str(data), "resolution": 64, "min_bucket": 64, "max_bucket": 64,
                 "bucket_step": 64},
        "method": {"name": name, **spec.table},
        "training": {"steps": spec.steps, "batch_size": spec.batch_size,
                     "learning_rate": spec.learning_rate, "seed": seed, "save_every": every,
                     "log_every": every},
        # caption_gain records both curves: the loss and the gain
        "validation": {"folder": str(val), "every": every, "timesteps": v.timesteps,
                       "draws": v.draws, "metric": "caption_gain"},
        "output": {"dir": str(out), "name": name},
    }  # fmt: skip


# Early-stopping criteria replayed over every run's validation curve: patience,
# smoothing, min_steps as a share of the run's steps, and which of the fixed
# timesteps the loss averages ("all"; "high": the noisier half, where the layout
# and the shape are decided; "low": the other half; "gain": not the loss but the
# caption gain, validation.metric = "caption_gain"). "last step": no early stopping.
CRITERIA: dict[str, tuple[int | None, float, float, str] | None] = {
    "raw, patience 3": (3, 0.0, 0.0, "all"),
    "raw, patience 5": (5, 0.0, 0.0, "all"),
    "ema 0.5, patience 3": (3, 0.5, 0.0, "all"),
    "ema 0.7, patience 3": (3, 0.7, 0.0, "all"),
    "raw, patience 3, from 1/4": (3, 0.0, 0.25, "all"),
    "ema 0.7, patience 3, from 1/4": (3, 0.7, 0.25, "all"),
    "high timesteps, patience 3": (3, 0.0, 0.0, "high"),
    "low timesteps, patience 3": (3, 0.0, 0.0, "low"),
    "caption gain, patience 3": (3, 0.0, 0.0, "gain"),
    "caption gain, patience 3, from 1/4": (3, 0.0, 0.25, "gain"),
    "lowest loss, no stopping": (None, 0.0, 0.0, "all"),
    "last step": None,
}


def timestep_curve(summary: dict[str, Any], which: str) -> list[list[float]]:
    """The validation curve averaged over ``which`` of the run's fixed timesteps."""
    if which == "all":
        return [[s, x] for s, x in summary.get("val_loss") or []]
    if which == "gain":
        return (
            [[s, x] for s, x in summary.get("val_score") or []]
            if summary.get("val_metric") == "caption_gain"
            else []
        )
    if "val_loss_timesteps" not in summary:  # no validation in this run
        return []
    timesteps = summary["val_loss_timesteps"]
    half = len(timesteps) // 2
    slots = range(half, len(timesteps)) if which == "high" else range(half)
    return [[s, sum(x[i] for i in slots) / len(slots)]
            for s, x in summary.get("val_loss_by_timestep") or []]  # fmt: skip


def adapted_model(base: Path, name: str, table: dict[str, Any], checkpoint: Path):
    """The base with the method's adapter from a training checkpoint, ready to sample."""
    from safetensors.torch import load_file
    from tsuika.methods.registry import build_method
    from tsuika.models import load_base_model

    model = load_base_model(base)
    method = build_method(name, table)
    method.prepare(model)
    method.load_adapter_state(load_file(str(checkpoint / "adapter.safetensors")))
    for module in (model.unet, model.text_encoder, model.vae):
        module.eval()
    return model


def scores(model, evaluator, concept, n: int) -> dict[str, float]:
    from tsuika.demo import sample, share

    fidelity = share(evaluator, sample(model, concept.prompt, n), shape=concept.shape)
    composition = share(
        evaluator, sample(model, concept.composition_prompt, n),
        shape=concept.shape, colour=concept.withheld_colour,
    )  # fmt: skip
    prior = [
        share(evaluator, sample(model, p, max(4, n // 2)), **expected)
        for p, expected in PRIOR_PROMPTS.items()
    ]
    return {"fidelity": fidelity, "composition": composition, "prior": sum(prior) / len(prior)}


# Which purpose each method's data stands for in --recommended mode.
PURPOSES = {
    "textual_inversion": "concept",  # 4 pictures of a new shape
    "lora": "object",  # 30 pictures of it
    "dreambooth": "character",  # 15 pictures of it
    "hypernetwork": "style",  # 200 pictures: hearts as a 'style'
}


def concept_data(name: str, spec: Spec, root: Path, seed: int):
    """The concept and its training and validation folders for ``name``'s run."""
    from tsuika.demo import Concept, prepare_dataset

    concept = Concept(identifier=spec.identifier)
    folder = root / name
    data, _ = prepare_dataset(folder / "data", concept.scenes(spec.images, seed), concept.caption)
    val, _ = prepare_dataset(folder / "val", concept.scenes(8, seed + 1), concept.caption)
    return concept, folder, data, val


def train_and_score(method: str, table: dict[str, Any], config, folder: Path, concept,
                    base: Path, evaluator, n: int, v: Validation, log) -> dict[str, Any]:  # fmt: skip
    """Train ``config``, score every checkpoint's fidelity, the last one fully, and
    which checkpoint each early-stopping criterion keeps."""
    import tsuika
    from tsuika.demo import sample, share
    from tsuika.training.early_stop import replay

    start = time.time()
    summary = tsuika.train(config)
    seconds = time.time() - start
    log(f"{folder.name}: trained {summary['steps_done']} steps in {seconds:.0f}s")
    out = folder / "out" / "checkpoints"
    curve = {}
    for ckpt in sorted(out.glob("step-*"), key=lambda p: int(p.name[5:])):
        model = adapted_model(base, method, table, ckpt)
        curve[int(ckpt.name[5:])] = share(
            evaluator, sample(model, concept.prompt, n), shape=concept.shape
        )
    if not curve:
        raise RuntimeError(f"{out}: no checkpoints to evaluate")
    last = max(curve)
    final = scores(adapted_model(base, method, table, out / f"step-{last}"), evaluator, concept, n)
    best_scoring = max(curve, key=lambda s: (curve[s], -s))

    def at_checkpoints(which: str) -> list[list[float]]:
        return [[s, x] for s, x in timestep_curve(summary, which) if int(s) in curve]

    steps = summary["steps_done"]
    criteria = {}
    for name, rule in CRITERIA.items():
        if rule is None:
            kept, stop = last, None
        else:
            patience, smoothing, share_of_run, which = rule
            kept, stop = replay(
                at_checkpoints(which), patience, 0.0, smoothing, round(share_of_run * steps)
            )
        criteria[name] = {"kept": kept, "stop": stop,
                          "gap": None if kept is None else round(curve[best_scoring] - curve[kept], 4)}  # fmt: skip
    which = "gain" if v.metric == "caption_gain" else "all"
    kept, stop = replay(at_checkpoints(which), v.patience, 0.0, v.smoothing, v.min_steps)
    log(
        f"{folder.name}: early stopping keeps step {kept} (stops at {stop}); best-scoring {best_scoring}"
    )
    return {
        "status": "ok", "steps_done": steps, "train_seconds": round(seconds, 1),
        **final, "early_stop_step": kept, "stopped_early": stop is not None, "stop_step": stop,
        "best_scoring_step": best_scoring, "fidelity_by_step": curve,
        "kept_fidelity": None if kept is None else curve[kept], "val_loss": at_checkpoints("all"),
        "val_caption_gain": timestep_curve(summary, "gain"),
        "criteria": criteria,
    }  # fmt: skip


def run_method(name: str, spec: Spec, base: Path, root: Path, evaluator, n: int, seed: int,
               v: Validation, log):  # fmt: skip
    """The fixed recipe of ``specs`` for ``name``."""
    from tsuika.methods.registry import METHODS

    if name not in METHODS:
        return {"status": "not available"}
    concept, folder, data, val = concept_data(name, spec, root, seed)
    config = run_config(base, data, val, folder / "out", name, spec, seed, v)
    result = train_and_score(name, spec.table, config, folder, concept, base, evaluator, n, v, log)
    return {**result, "note": spec.note}


def run_recommended(name: str, spec: Spec, base: Path, root: Path, evaluator, n: int,
                    seed: int, steps_scale: float, log):  # fmt: skip
    """``tsuika recommend --write`` on ``name``'s data for its purpose, trained as written.

    Only what does not change training is overridden: the output folder, the
    checkpoint and validation interval (eight checkpoints for the fidelity
    curve) and, with ``--steps-scale``, the step count. Its early stopping is
    replayed over the whole run's validation curve, as in the fixed recipes.
    """
    from tsuika.config import load_config
    from tsuika.recommend import recommend, write_config

    purpose = PURPOSES[name]
    concept, folder, data, _ = concept_data(name, spec, root, seed)
    decision = recommend(data, purpose, model=base)
    path = write_config(decision, folder / "recommended.toml")
    log(f"{name}: recommend --purpose {purpose} chose {decision.method}: {decision.method_reason}")
    steps = decision.value("training.steps")
    if steps_scale != 1.0:
        steps = max(8, round(steps * steps_scale))
    every = max(1, steps // 8)
    overrides = [f"output.dir={folder / 'out'}", f"training.steps={steps}",
                 f"training.save_every={every}", f"training.seed={seed}"]  # fmt: skip
    if decision.config().get("validation", {}).get("split"):
        overrides.append(f"validation.every={every}")
        start = decision.value("validation.min_steps") * steps / decision.value("training.steps")
        overrides.append(f"validation.min_steps={round(start)}")  # scaled with the steps
    config = load_config(path, overrides)
    cv = config.validation
    v = Validation(cv.timesteps, cv.draws, cv.patience, cv.smoothing, cv.min_steps, cv.metric)
    cv.patience = None  # the whole curve; ``v`` replays the recommended rule over it
    cv.metric = "caption_gain"  # records the gain beside the loss for the criteria table
    table = config.method.options
    result = train_and_score(config.method.name, table, config, folder, concept, base,
                             evaluator, n, v, log)  # fmt: skip
    images = decision.dataset.unique
    return {**result, "note": f"{purpose}: {decision.method}, {images} pictures",
            "config": str(path), "recommended": decision.to_json()["settings"]}  # fmt: skip


def table(results: dict[str, dict[str, Any]], base_scores: dict[str, float]) -> str:
    head = ("| method | data | steps | fidelity | composition | prior (base {:.2f}) "
            "| early-stop step (fidelity) | best-scoring step (fidelity) |"
            ).format(base_scores["prior"])  # fmt: skip
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    lines.append(f"| base model | - | - | {base_scores['fidelity']:.2f} | "
                 f"{base_scores['composition']:.2f} | {base_scores['prior']:.2f} | - | - |")  # fmt: skip
    for name, r in results.items():
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['status']} | | | | | | |")
            continue
        step, curve = r["early_stop_step"], r["fidelity_by_step"]
        kept = "off" if step is None else f"{step} ({curve[step]:.2f})"
        if r["stop_step"] is not None:
            kept += f", stops at {r['stop_step']}"
        best = r["best_scoring_step"]
        lines.append(
            f"| {name} | {r['note']} | {r['steps_done']} | {r['fidelity']:.2f} | "
            f"{r['composition']:.2f} | {r['prior']:.2f} | {kept} | {best} ({curve[best]:.2f}) |"
        )
    return "\n".join(lines)


def criteria_table(results: dict[str, dict[str, Any]]) -> str:
    """Per early-stopping criterion: the fidelity it loses against the best checkpoint."""
    ok = {name: r for name, r in results.items() if r["status"] == "ok"}
    head = "| criterion | " + " | ".join(ok) + " | worst gap |"
    lines = [head, "|---" * (len(ok) + 2) + "|"]
    for criterion in CRITERIA:
        cells, gaps = [], []
        for r in ok.values():
            c = r["criteria"][criterion]
            if c["kept"] is None:
                cells.append("-")
                continue
            gaps.append(c["gap"])
            stop = f", stops {c['stop']}" if c["stop"] is not None else ""
            cells.append(f"{c['kept']}{stop}: -{c['gap']:.2f}")
        worst = f"{max(gaps):.2f}" if gaps else "-"
        lines.append(f"| {criterion} | " + " | ".join(cells) + f" | {worst} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-quality"))
    parser.add_argument("--methods", default="textual_inversion,lora,dreambooth,hypernetwork")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every run's steps")
    parser.add_argument("--eval", type=int, default=16, help="pictures per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--recommended",
        action="store_true",
        help="train what `tsuika recommend --write` chooses for each method's data instead",
    )
    d = Validation()
    parser.add_argument("--val-timesteps", type=int, default=d.timesteps)
    parser.add_argument("--val-draws", type=int, default=d.draws)
    parser.add_argument("--patience", type=int, default=d.patience)
    parser.add_argument("--smoothing", type=float, default=d.smoothing)
    parser.add_argument("--min-steps", type=int, default=d.min_steps)
    parser.add_argument("--metric", choices=("loss", "caption_gain"), default=d.metric)
    parser.add_argument("--evaluations", type=int, default=d.evaluations,
                        help="validations (and checkpoints) per run")  # fmt: skip
    args = parser.parse_args(argv)
    v = Validation(args.val_timesteps, args.val_draws, args.patience, args.smoothing,
                   args.min_steps, args.metric, args.evaluations)  # fmt: skip
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    all_specs = specs(args.out)
    for name in names:
        if name not in all_specs:
            parser.error(f"--methods: unknown {name!r}; known: {', '.join(all_specs)}")

    import torch
    from tsuika.demo import Concept
    from tsuika.models import load_base_model
    from tsuika.world import base_model_path, load_evaluator

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    base, evaluator = base_model_path(), load_evaluator()
    base_scores = scores(load_base_model(base), evaluator, Concept(), args.eval)
    results: dict[str, dict[str, Any]] = {}
    mode = "recommended" if args.recommended else "fixed"
    doc = {"base": base_scores, "methods": results, "eval_pictures": args.eval, "mode": mode}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        spec = all_specs[name]
        spec.steps = max(8, round(spec.steps * args.steps_scale))
        try:
            if args.recommended:
                results[name] = run_recommended(name, spec, base, args.out, evaluator,
                                                args.eval, args.seed, args.steps_scale, log)  # fmt: skip
            else:
                results[name] = run_method(
                    name, spec, base, args.out, evaluator, args.eval, args.seed, v, log
                )
        except Exception as exc:  # a method that crashes is reported, not hidden
            log(traceback.format_exc())
            results[name] = {"status": f"failed: {type(exc).__name__}: {str(exc)[:80]}"}
        # after every method, so that a long run that is stopped keeps what it measured
        (args.out / "quality.json").write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(table(results, base_scores) + "\n\n" + criteria_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
