"""The run configuration: TOML (or a dict) in, typed dataclasses out, once.

Every section of the user-facing contract (``DESIGN.md`` "Run configuration")
is a dataclass here. Parsing checks every key against its field's type and
allowed values; errors are :class:`ConfigError` naming ``section.key``, the
file, and what is allowed. Library code takes a :class:`RunConfig`, never a
flag namespace.

``--set section.key=value`` overrides are parsed as TOML values
(``training.steps=10``, ``sample.prompts=["a", "b"]``); a value that is not
valid TOML is taken as a plain string (``output.name=my_lora``).
Relative paths are resolved against the config file's folder (overrides
against the current directory).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsuika.checks import TYPE_NAMES, CheckError, Rule, Wording, check_table, optional_inner
from tsuika.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SECTIONS = ("model", "data", "method", "training", "validation", "sample", "output")


def _choices(*values: str, default: str) -> Any:
    return field(default=default, metadata={"choices": values})


def _min(default: Any, low: float, *, strict: bool = False) -> Any:
    return field(default=default, metadata={"min": low, "strict": strict})


@dataclass
class ModelConfig:
    """``[model]``: the base model (single file or diffusers folder) and VAE override.

    ``vae_fp16_safe``: the VAE is safe in float16 (e.g. madebyollin's
    sdxl-vae-fp16-fix); otherwise an SDXL VAE encodes in float32 under fp16
    mixed precision, since SDXL's own VAE overflows (NaN latents).
    """

    path: Path | None = None
    vae: Path | None = None
    vae_fp16_safe: bool = False
    kind: str | None = field(default=None, metadata={"choices": ("sd1", "sd2", "sdxl")})
    prediction_type: str | None = field(
        default=None, metadata={"choices": ("epsilon", "v_prediction")}
    )


@dataclass
class DataConfig:
    """``[data]``: the dataset folder, buckets (kohya's meaning) and augmentations."""

    path: Path | None = None
    resolution: int = _min(512, 8)
    min_bucket: int = _min(256, 8)
    max_bucket: int = _min(1024, 8)
    bucket_step: int = _min(64, 8)
    caption_extension: str = ".txt"
    cache_latents: bool = True
    flip: bool = False
    rotation: float = field(default=0.0, metadata={"min": 0.0, "max": 180.0})
    color_jitter: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    random_crop: bool = False
    no_upscale: bool = False
    shuffle_caption: bool = False
    keep_tokens: int = _min(0, 0)
    caption_dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    caption_tag_dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    threads: int | None = None
    on_missing: str = _choices("stop", "skip", default="stop")  # see tsuika.data.watch


@dataclass
class MethodConfig:
    """``[method]``: ``name`` plus a free table that the method's own config validates."""

    name: str = "lora"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingConfig:
    """``[training]``: steps, batch, optimizer, schedule, loss options and checkpoints."""

    steps: int = _min(1500, 1)
    batch_size: int = _min(1, 1)
    gradient_accumulation: int = _min(1, 1)
    learning_rate: float = _min(1e-4, 0.0)
    seed: int = 0
    save_every: int = _min(250, 0)
    log_every: int = _min(10, 1)
    optimizer: str = "adamw"
    weight_decay: float = _min(0.01, 0.0)
    l1: float = _min(0.0, 0.0)
    max_norm: float = _min(0.0, 0.0)
    max_grad_norm: float = _min(1.0, 0.0)
    lr_scheduler: str = _choices(
        "constant", "cosine", "cosine_with_restarts", "linear", "polynomial", default="constant"
    )
    lr_warmup_steps: int = _min(0, 0)
    lr_cycles: float = _min(1.0, 0.0, strict=True)
    lr_power: float = _min(1.0, 0.0, strict=True)
    min_snr_gamma: float = _min(0.0, 0.0)
    noise_offset: float = _min(0.0, 0.0)
    mixed_precision: str = _choices("no", "fp16", "bf16", default="no")
    gradient_checkpointing: bool = False


@dataclass
class ValidationConfig:
    """``[validation]``: held-out loss and early stopping (``tsuika.training.validation``).

    ``split`` (a fraction of the dataset's images, chosen by a seeded hash of
    their relative paths) or ``folder`` (a dataset folder of its own) turns it
    on; ``every`` steps (and at the last step) the deterministic validation
    loss is computed over ``timesteps`` fixed timesteps per image, ``draws``
    noises each. ``patience`` (evaluations without an improvement larger than
    ``min_delta``) stops early; absent = off. Early stopping and the ``-best``
    file follow the curve smoothed by ``smoothing`` (the weight of the previous
    smoothed value in an exponential moving average; 0 = the raw loss) and
    start at step ``min_steps`` (evaluations before it neither count as best
    nor use up patience). ``metric`` is what they minimise: ``"loss"``, or
    ``"caption_gain"``, the loss with each picture's caption minus the loss with
    an empty caption (same noises; negative when the caption helps): it falls
    while the caption's words bind to what the pictures show, and does not
    follow the drift of the whole model's denoising that a full fine-tune
    (DreamBooth) shows in the plain loss. ``overfit_window`` is the K of the
    overfitting warning.
    """

    split: float = field(default=0.0, metadata={"min": 0.0, "max": 0.9})
    folder: Path | None = None
    every: int = _min(100, 1)
    patience: int | None = field(default=None, metadata={"min": 1})
    min_delta: float = _min(0.0, 0.0)
    timesteps: int = _min(4, 1)
    draws: int = _min(1, 1)
    smoothing: float = field(default=0.0, metadata={"min": 0.0, "max": 0.95})
    min_steps: int = _min(0, 0)
    metric: str = _choices("loss", "caption_gain", default="loss")
    overfit_window: int = _min(3, 1)

    @property
    def enabled(self) -> bool:
        return self.split > 0 or self.folder is not None


@dataclass
class SampleConfig:
    """``[sample]``: pictures from ``prompts`` every ``every`` steps (0 = off)."""

    prompts: list[str] = field(default_factory=list)
    every: int = _min(0, 0)
    steps: int = _min(8, 1)
    cfg: float = _min(7.0, 0.0)
    seed: int = 0
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None


@dataclass
class OutputConfig:
    """``[output]``: where the final file, checkpoints, logs and summary go."""

    dir: Path = Path("out")
    name: str = "tsuika"
    format: str | None = None  # None: the method's default (lora: kohya)


@dataclass
class RunConfig:
    """A whole run. ``source`` is the TOML file it came from (None for a dict)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain TOML/JSON values (paths as strings, ``None`` left out)."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            if name == "method":
                out[name] = {"name": section.name, **_plain(section.options)}
                continue
            out[name] = {
                f.name: _plain(getattr(section, f.name))
                for f in dataclasses.fields(section)
                if getattr(section, f.name) is not None
            }
        return out


SECTION_TYPES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "validation": ValidationConfig,
    "sample": SampleConfig,
    "output": OutputConfig,
}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML run configuration, apply ``--set`` overrides, validate, resolve paths."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(table, base_dir=path.resolve().parent, overrides=overrides, source=path)


def config_from_dict(
    table: dict[str, Any],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    source: Path | None = None,
    validate_method: bool = True,
) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts (as TOML would give)."""
    where = str(source) if source is not None else "config"
    table = {k: dict(v) if isinstance(v, dict) else v for k, v in table.items()}
    override_keys = apply_overrides(table, overrides or [], where)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    for key, value in table.items():
        if key not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{key}]; allowed: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{key}] must be a table, got {type(value).__name__}")
    sections: dict[str, Any] = {}
    for name, cls in SECTION_TYPES.items():
        sections[name] = _parse_section(name, cls, table.get(name, {}), where)
        _resolve_paths(name, sections[name], base, override_keys)
    sections["method"] = _parse_method(table.get("method", {}), where, validate_method)
    cfg = RunConfig(**sections, source=source)
    _check_consistency(cfg, where)
    return cfg


def apply_overrides(table: dict[str, Any], overrides: list[str], where: str) -> set[str]:
    """Apply ``section.key=value`` strings to ``table`` in place; return the keys set."""
    keys: set[str] = set()
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        parts = [p.strip() for p in dotted.split(".")]
        if not sep or len(parts) < 2 or not all(parts):
            raise ConfigError(
                f"--set {item!r}: expected section.key=value (e.g. training.steps=10)"
            )
        if parts[0] not in SECTIONS:
            raise ConfigError(
                f"--set {item!r}: unknown section [{parts[0]}]; allowed: {', '.join(SECTIONS)}"
            )
        node = table.setdefault(parts[0], {})
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parse_override_value(raw)
        keys.add(".".join(parts))
    return keys


def parse_override_value(raw: str) -> Any:
    """A ``--set`` value as TOML (``10``, ``1e-4``, ``true``, ``["a"]``), else the string."""
    raw = raw.strip()
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


# --------------------------------------------------------------------------- fields


CONFIG_WORDING = Wording(
    wrong_type="{key} must be {expected}, got {got} {value!r}",
    bad_choice="{key} = {value!r} is not allowed; choose one of {allowed}",
    out_of_bounds="{key} = {value!r} must be {bound}",
    unknown_keys="unknown key {dotted}; allowed in [{section}]: {allowed}",
    type_names={**TYPE_NAMES, bool: "true/false"},
)


def field_rule(hint: Any, meta: Any) -> Rule:
    """The :class:`~tsuika.checks.Rule` of a section field: its type hint plus the
    ``choices`` / ``min`` (``strict``) / ``max`` of its metadata."""
    return Rule(
        hint,
        choices=meta.get("choices"),
        low=meta.get("min"),
        open_low=meta.get("strict", False),
        high=meta.get("max"),
    )


def _parse_section(name: str, cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    rules = {f.name: field_rule(hints[f.name], f.metadata) for f in dataclasses.fields(cls)}
    values = {k: _one_as_list(v, rules[k].type) if k in rules else v for k, v in values.items()}
    try:
        check_table(values, rules, name, CONFIG_WORDING)
    except CheckError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cls(**{key: _convert(value, rules[key].type) for key, value in values.items()})


def _one_as_list(value: Any, hint: Any) -> Any:
    """A single string where a list of strings goes: ``prompts = "a dog"``."""
    is_list = typing.get_origin(hint) is list or typing.get_origin(_inner(hint)) is list
    return [value] if is_list and isinstance(value, str) else value


def _inner(hint: Any) -> Any:
    """``X`` for ``X | None``, else ``hint``."""
    inner = optional_inner(hint)
    return hint if inner is None else inner


def _convert(value: Any, hint: Any) -> Any:
    """A checked value as its field holds it: ints in float fields as floats, paths as Path."""
    hint = _inner(hint)
    if value is None:
        return None
    if hint is float:
        return float(value)
    if hint is Path:
        return Path(value).expanduser()
    return value


def _resolve_paths(name: str, section: Any, base: Path, override_keys: set[str]) -> None:
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, Path) and not value.is_absolute():
            root = Path.cwd() if f"{name}.{f.name}" in override_keys else base
            setattr(section, f.name, (root / value).resolve())


def _parse_method(values: dict[str, Any], where: str, validate: bool) -> MethodConfig:
    values = dict(values)
    name = values.pop("name", "lora")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: method.name must be a string, got {name!r}")
    if validate:
        from tsuika.methods.registry import validate_method_table

        validate_method_table(name, values, where)
    return MethodConfig(name=name, options=values)


def _check_consistency(cfg: RunConfig, where: str) -> None:
    d = cfg.data
    if d.min_bucket > d.max_bucket:
        raise ConfigError(
            f"{where}: data.min_bucket ({d.min_bucket}) must be <= data.max_bucket ({d.max_bucket})"
        )
    if cfg.validation.split and cfg.validation.folder is not None:
        raise ConfigError(f"{where}: set validation.split or validation.folder, not both")
    if cfg.validation.patience is not None and not cfg.validation.enabled:
        raise ConfigError(
            f"{where}: validation.patience needs a validation set; "
            "set validation.split (e.g. 0.1) or validation.folder"
        )
    v, steps = cfg.validation, cfg.training.steps
    if v.enabled and v.min_steps >= steps:
        raise ConfigError(
            f"{where}: validation.min_steps ({v.min_steps}) must be below training.steps "
            f"({steps}): no step could be kept as the best; lower it with the steps"
        )
    from tsuika.training.optim import check_optimizer_name

    try:
        check_optimizer_name(cfg.training.optimizer)
    except ValueError as exc:
        raise ConfigError(f"{where}: training.optimizer: {exc}") from None


def uncacheable_augmentations(data: DataConfig) -> list[str]:
    """The [data] augmentations that a latent cache cannot hold (drawn anew every epoch).

    A flip can be cached (a second latent per image); a rotation, a colour
    jitter or a random crop cannot, so with any of them a run encodes on the fly.
    """
    found = {
        "data.random_crop": data.random_crop,
        "data.rotation": data.rotation > 0,
        "data.color_jitter": data.color_jitter > 0,
    }
    return [name for name, on in found.items() if on]


def as_run_config(config: Any, overrides: list[str] | None = None) -> RunConfig:
    """A path, a dict or a :class:`RunConfig` -> :class:`RunConfig` (the API's edge)."""
    if isinstance(config, RunConfig):
        if overrides:
            return config_from_dict(config.to_dict(), overrides=overrides, source=config.source)
        return config
    if isinstance(config, dict):
        return config_from_dict(config, overrides=overrides)
    if isinstance(config, str | os.PathLike):
        return load_config(config, overrides)
    raise TypeError(f"config must be a path, a dict or a RunConfig, got {type(config).__name__}")
