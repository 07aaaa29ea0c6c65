"""From dataset facts, model facts and a purpose to a decision: method, settings, reasons.

Every value comes from a row of :mod:`tsuika.recommend.rules`; the functions
here only look rows up and do the arithmetic the rows describe. A
:class:`Decision` is what ``--json`` prints and what ``--write`` turns into a
commented TOML (:mod:`tsuika.recommend.write`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsuika.data.buckets import BucketSpec

from . import rules as R
from .advice import combinations, dataset_problems, size_problems
from .errors import RecommendError
from .inspect import DatasetFacts, inspect_dataset
from .model import ModelFacts, inspect_model


@dataclass(frozen=True)
class Setting:
    """One config value (``section.key``) and the reason it has that value."""

    key: str
    value: Any
    reason: str


@dataclass
class Decision:
    """The whole recommendation."""

    purpose: str
    method: str
    method_reason: str
    model: ModelFacts
    dataset: DatasetFacts
    settings: list[Setting] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    combinations: list[dict[str, Any]] = field(default_factory=list)

    def value(self, key: str) -> Any:
        return next(s.value for s in self.settings if s.key == key)

    def config(self) -> dict[str, Any]:
        """The settings as nested TOML tables (what ``tsuika.train`` takes)."""
        table: dict[str, Any] = {}
        for s in self.settings:
            section, key = s.key.split(".", 1)
            table.setdefault(section, {})[key] = s.value
        return table

    def to_json(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "method": self.method,
            "reason": self.method_reason,
            "model": self.model.to_json(),
            "dataset": self.dataset.to_json(),
            "problems": self.problems,
            "combinations": self.combinations,
            "notes": self.notes,
            "settings": {s.key: {"value": s.value, "reason": s.reason} for s in self.settings},
            "config": self.config(),
        }


@dataclass(frozen=True)
class Context:
    """What every settings function reads."""

    purpose: str
    method: str
    model: ModelFacts
    facts: DatasetFacts
    vram: float | None
    flip: bool | None

    @property
    def narrow(self) -> bool:
        return self.model.width < R.NARROW_WIDTH

    @property
    def rule(self) -> R.PurposeRule:
        return R.PURPOSE_RULES[self.purpose]

    @property
    def validated(self) -> bool:
        return self.facts.unique >= R.VALIDATION.min_images

    @property
    def train_images(self) -> int:
        held = max(1, round(R.VALIDATION.split * self.facts.unique)) if self.validated else 0
        return self.facts.unique - held


def bucket_spec(resolution: int) -> BucketSpec:
    """kohya's buckets for a native ``resolution``: sides from half to twice it, step 64
    (an eighth of the resolution for models under 512 px)."""
    step = 64 if resolution >= 512 else max(8, resolution // 8)
    return BucketSpec(resolution, max(step, resolution // 2), resolution * 2, step)


def pick_method(purpose: str, unique: int) -> R.MethodRule:
    for rule in R.METHOD_RULES:
        if (
            rule.purpose == purpose
            and rule.low <= unique
            and (rule.high is None or unique <= rule.high)
        ):
            return rule
    raise RecommendError(
        f"no method rule for purpose {purpose!r} with {unique} pictures"
    )  # pragma: no cover


# --------------------------------------------------------------------------- settings


def _data(c: Context, spec: BucketSpec) -> list[Setting]:
    flip = c.rule.flip if c.flip is None else c.flip
    flip_reason = c.rule.flip_reason if c.flip is None else "as asked (--flip/--no-flip)"
    jitter = c.rule.color_jitter
    res = spec.resolution
    return [
        Setting("data.path", str(c.facts.root), "the dataset inspected"),
        Setting("data.resolution", res, f"the model's native size ({c.model.family}, {res} px)"),
        Setting("data.min_bucket", spec.min_bucket, "buckets from half the resolution"),
        Setting("data.max_bucket", spec.max_bucket, "to twice the resolution"),
        Setting("data.bucket_step", spec.bucket_step, "kohya's step (an eighth under 512 px)"),
        Setting("data.flip", flip, flip_reason),
        Setting("data.color_jitter", jitter, c.rule.jitter_reason),
        Setting(
            "data.cache_latents",
            jitter == 0,
            "latents are encoded once and cached"
            if jitter == 0
            else "colour jitter changes every picture each epoch, so latents cannot be cached",
        ),
    ]


def _lora(c: Context) -> list[Setting]:
    rank, reason = c.rule.rank, c.rule.rank_reason
    cap = max(1, c.model.width // 4)
    if rank > cap:
        rank, reason = cap, f"{reason}; {R.NARROW_RANK_REASON.format(cap=cap, width=c.model.width)}"
    return [
        Setting("method.rank", rank, reason),
        Setting(
            "method.alpha",
            float(rank),
            "alpha = rank: scale 1, so the rate means the same at any rank",
        ),
        Setting("method.train_text_encoder", *_train_text_encoder(c)),
    ]


def _train_text_encoder(c: Context) -> tuple[bool, str]:
    """The purpose's choice, unless the family's memory rule freezes the text encoders."""
    family = R.FAMILIES[c.model.family]
    low = family.frozen_text_below
    if c.rule.train_text_encoder and low is not None and c.vram is not None and c.vram < low:
        return False, f"{family.frozen_text_reason} (--vram {c.vram:g} GiB)"
    return c.rule.train_text_encoder, c.rule.text_reason


def _placeholder(identifier: str | None, purpose: str) -> str:
    word = identifier or f"{purpose}-token"
    return word if word.startswith("<") and word.endswith(">") else f"<{word}>"


def _textual_inversion(c: Context) -> list[Setting]:
    f = c.facts
    own = f.identifier and f.with_identifier * 2 >= max(1, f.captioned)
    template = "captions" if own else c.rule.ti_template
    initializer = f.class_word if f.class_word and f.class_word != f.identifier else None
    return [
        Setting("method.placeholder_token", _placeholder(f.identifier, c.purpose),
                "the identifier as a new word" if f.identifier else "no identifier found: a new word"),
        Setting("method.initializer_token", initializer or R.DEFAULT_INITIALIZER[c.purpose],
                "the folder's class word" if initializer else f"a generic word for a {c.purpose}"),
        Setting("method.template", template,
                "the captions name the identifier, so they are kept" if own
                else f"the captions do not name the identifier: {template} prompt templates"),
    ]  # fmt: skip


def _hypernetwork(c: Context) -> list[Setting]:
    return []  # everything it needs is in rules.METHOD_CONSTANTS


METHOD_SETTINGS: dict[str, Callable[[Context], list[Setting]]] = {
    "lora": _lora,
    "textual_inversion": _textual_inversion,
    "hypernetwork": _hypernetwork,
}


def _memory(c: Context) -> tuple[R.MemoryRule, float]:
    if c.narrow:
        return R.NARROW_BATCH, 0.0
    if c.vram is None:
        return R.NO_GPU_BATCH, 0.0
    need = R.FAMILIES[c.model.family].memory_factor
    effective = c.vram / need
    return next(r for r in R.MEMORY_RULES if effective >= r.gb), effective


def _rate(c: Context) -> tuple[float, str]:
    """Narrow models: the tiny world's rate; full size: the family's own, else the method's."""
    rule = R.RATE_RULES[c.method]
    if c.narrow:
        return rule.narrow, R.NARROW_RATE_REASON.format(width=c.model.width)
    return R.FAMILY_RATES.get((c.model.family, c.method), (rule.full, rule.reason))


def _training(c: Context) -> list[Setting]:
    mem, effective = _memory(c)
    batch = max(1, min(mem.batch_size, c.train_images))
    batch_reason = mem.reason + (
        f" (--vram {c.vram:g} GiB = {effective:.1f} SD 1.x GiB)" if effective else ""
    )
    if batch < mem.batch_size:
        batch_reason += f"; no larger than the {c.train_images} training pictures"
    steps_rule = R.STEP_RULES[c.method]
    repeats = c.facts.samples_per_epoch / max(1, c.facts.unique)
    epochs = math.ceil(steps_rule.views / repeats)
    per_epoch = max(1, round(c.train_images * repeats))
    raw = math.ceil(epochs * per_epoch / batch)
    rounded = math.ceil(raw / R.STEP_ROUND) * R.STEP_ROUND
    steps = min(steps_rule.high, max(steps_rule.low, rounded))
    rate, rate_reason = _rate(c)
    precision, precision_reason = R.MIXED_PRECISION[c.vram is not None]
    return [
        Setting("training.steps", steps,
                f"{c.train_images} pictures x {repeats:g} repeats x {epochs} epochs / batch "
                f"{batch} = {raw}, {R.STEP_ROUND_REASON}, kept in {steps_rule.low}.."
                f"{steps_rule.high}: {steps_rule.reason}"),
        Setting("training.batch_size", batch, batch_reason),
        Setting("training.learning_rate", rate, rate_reason),
        Setting("training.gradient_checkpointing", mem.gradient_checkpointing,
                "trades compute for memory" if mem.gradient_checkpointing else "not needed"),
        Setting("training.mixed_precision", precision, precision_reason),
        Setting("training.save_every", max(1, steps // 4), "four checkpoints to compare"),
        Setting("training.log_every", max(1, steps // 20), "twenty loss lines"),
    ]  # fmt: skip


def _validation(c: Context, steps: int) -> list[Setting]:
    v = R.VALIDATION
    if not c.validated:
        return [Setting("validation.split", 0.0, v.off_reason)]
    return [
        Setting("validation.split", v.split, v.on_reason),
        Setting("validation.every", max(1, steps // v.evaluations), f"{v.evaluations} validations per run"),
        Setting("validation.patience", v.patience, v.patience_reason),
        Setting("validation.timesteps", v.timesteps, v.timesteps_reason),
        Setting("validation.smoothing", v.smoothing, v.smoothing_reason),
        Setting("validation.min_steps", round(v.min_share * steps), v.min_steps_reason),
    ]  # fmt: skip


def _output(c: Context, out_dir: Path | None) -> list[Setting]:
    name = f"{c.purpose}-{c.method}"
    where = str(out_dir) if out_dir is not None else f"out-{name}"
    return [
        Setting("output.dir", where, "relative paths are read from the config file's folder"),
        Setting("output.name", name, "purpose and method"),
    ]


def _model(c: Context) -> list[Setting]:
    if c.model.path is None:
        return []
    return [Setting("model.path", str(c.model.path), f"{R.FAMILIES[c.model.family].reason} ({c.model.source})")]  # fmt: skip


def _notes(c: Context, decision_config: dict[str, Any]) -> list[str]:
    trains_text = c.method == "textual_inversion" or decision_config.get("method", {}).get(
        "train_text_encoder", False
    )
    return [
        "text states are not cached: the text encoder (or the embedding) trains"
        if trains_text
        else "text states are cached in memory: the text encoder is frozen"
    ]


def recommend(
    dataset: str | Path,
    purpose: str,
    *,
    model: str | Path | None = None,
    vram: float | None = None,
    identifier: str | None = None,
    flip: bool | None = None,
    out_dir: Path | None = None,
) -> Decision:
    """Inspect ``dataset`` and ``model`` and decide everything for ``purpose``."""
    if purpose not in R.PURPOSES:
        raise RecommendError(f"unknown purpose {purpose!r}; choose one of {', '.join(R.PURPOSES)}")
    if vram is not None and not vram > 0:
        raise RecommendError(f"--vram must be a number of GiB > 0, got {vram!r}")
    facts_model = inspect_model(model)
    family = R.FAMILIES[facts_model.family]
    if not family.trainable:
        raise RecommendError(f"{facts_model.path}: {family.reason}")
    spec = bucket_spec(facts_model.resolution)
    facts = inspect_dataset(dataset, spec, identifier)
    rule = pick_method(purpose, facts.unique)
    c = Context(purpose, rule.method, facts_model, facts, vram, flip)
    training = _training(c)
    steps = next(s.value for s in training if s.key == "training.steps")
    constants = [
        Setting(f"method.{key}", value, reason)
        for key, (value, reason) in R.METHOD_CONSTANTS[rule.method].items()
    ]
    method = [
        Setting("method.name", rule.method, rule.reason),
        *METHOD_SETTINGS[rule.method](c),
        *constants,
    ]
    settings = [
        *_model(c),
        *_data(c, spec),
        *method,
        *training,
        *_validation(c, steps),
        *_output(c, out_dir),
    ]
    decision = Decision(purpose, rule.method, rule.reason, facts_model, facts, settings)
    decision.notes = _notes(c, decision.config())
    if facts_model.path is None:
        decision.notes.append("no --model: SD 1.x assumed; set model.path before training")
    decision.problems = size_problems(rule.method, facts.unique) + dataset_problems(
        facts, spec.resolution
    )
    decision.combinations = combinations(purpose, facts.unique)
    return decision
