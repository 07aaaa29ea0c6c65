"""Dataset TOML: a subset of kohya-ss/sd-scripts' dataset config (``--dataset_config``).

    [general]                      # defaults for every subset
    caption_extension = ".txt"
    keep_tokens = 1

    [[datasets]]

      [[datasets.subsets]]
      image_dir = "img/sks_dog"    # relative to the TOML file's folder (*tsuika*)
      num_repeats = 10
      class_tokens = "sks dog"

      [[datasets.subsets]]
      image_dir = "img/dog"        # class pictures for DreamBooth's prior preservation
      is_reg = true

Top-level ``[[subsets]]`` (one implicit dataset) is accepted as a shorthand.
Subset keys may also be set on ``[general]`` or a ``[[datasets]]`` entry and
are inherited, as in kohya. kohya keys tsuika does not use are ignored with
a warning; unknown keys are errors naming the key, so typos do not pass.
Relative ``image_dir`` is resolved against the TOML's folder (kohya uses the
working directory), so a dataset file can move with its images, and may not
leave that folder (``..``, or a symlink out of it, is an error): a TOML from
someone else reads only the folder it sits in, or absolute paths written out
in full. The TOML names no place to write (caches and outputs go to
``output.dir``).

kohya's dataset-level keys (``resolution``, ``batch_size``, bucket settings: see
:data:`RUN_CONFIG_KEYS`) are errors naming the run-config key that sets them.
``is_reg = true`` subsets are regularisation (class) pictures, as in kohya: the
items keep ``is_reg``; training hands them to DreamBooth as its class pictures
(prior preservation) and refuses them for methods that have no use for them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib  # type: ignore[no-redef]

from tsuika.checks import CheckError, Rule, Wording, check_table
from tsuika.data.index import (
    DEFAULT_CAPTION_EXTENSION,
    DatasetError,
    DatasetIndex,
    ScanWarning,
    Subset,
    scan_subset,
)

# Subset keys that may be inherited from [general] / [[datasets]], with their types.
SUBSET_KEYS: dict[str, type | tuple[type, ...]] = {
    "num_repeats": int,
    "class_tokens": str,
    "caption_extension": str,
    "keep_tokens": int,
    "shuffle_caption": bool,
    "caption_prefix": str,
    "caption_suffix": str,
    "caption_dropout_rate": (int, float),
    "caption_tag_dropout_rate": (int, float),
}
SUBSET_ONLY_KEYS: dict[str, type | tuple[type, ...]] = {
    "image_dir": str,
    "is_reg": bool,
    "name": str,
}
# kohya's dataset-level keys and where tsuika takes each from instead: one bucket setup
# and batch size per run, set in the run config (and `tsuika prep` flags). They are
# errors here, not ignored, so a value written in the dataset TOML never silently
# differs from what trains.
RUN_CONFIG_KEYS: dict[str, str] = {
    "resolution": "data.resolution (tsuika prep --resolution)",
    "min_bucket_reso": "data.min_bucket (tsuika prep --min-bucket)",
    "max_bucket_reso": "data.max_bucket (tsuika prep --max-bucket)",
    "bucket_reso_steps": "data.bucket_step (tsuika prep --bucket-step)",
    "bucket_no_upscale": "data.no_upscale (tsuika prep --no-upscale)",
    "batch_size": "training.batch_size",
    "enable_bucket": "nothing: tsuika always buckets",
}
# kohya keys accepted and ignored (tsuika sets these elsewhere or has no such feature).
IGNORED_KOHYA_KEYS = frozenset(
    {
        "color_aug",
        "flip_aug",
        "face_crop_aug_range",
        "random_crop",
        "keep_tokens_separator",
        "secondary_separator",
        "caption_separator",
        "enable_wildcard",
        "token_warmup_min",
        "token_warmup_step",
        "caption_dropout_every_n_epochs",
        "cache_info",
        "alpha_mask",
        "network_multiplier",
        "custom_attributes",
        "resize_interpolation",
        "validation_seed",
        "validation_split",
    }
)
UNSUPPORTED_KOHYA_KEYS = frozenset({"metadata_file", "conditioning_data_dir"})


# How a broken key reads in a dataset TOML (the file's path goes in front).
DATASET_WORDING = Wording(
    wrong_type="{key} has the wrong type ({got}: {value!r})",
    bad_choice="{key} = {value!r} is not allowed; choose one of {allowed}",
    out_of_bounds="{key} = {value!r} must be {bound}",
    unknown_keys="unknown key {dotted} (allowed: {allowed})",
)


def _check_table(table: dict[str, Any], allowed: dict, where: str, path: Path, warns: list) -> dict:
    """The recognised keys of ``table``, type-checked; warns on ignored kohya keys."""
    out = {}
    for key, value in table.items():
        if key in UNSUPPORTED_KOHYA_KEYS:
            raise DatasetError(
                f"{path}: {where}.{key}: kohya's fine-tuning/ControlNet datasets are not supported; "
                "use image_dir with caption files"
            )
        if key in IGNORED_KOHYA_KEYS:
            warns.append(ScanWarning(path, f"{where}.{key} is a kohya key tsuika ignores"))
            continue
        out[key] = value
    rules = {key: Rule(kind) for key, kind in sorted(allowed.items())}
    try:
        return check_table(out, rules, where, DATASET_WORDING)
    except CheckError as exc:
        raise DatasetError(f"{path}: {exc}") from None


def _dataset_tables(doc: dict[str, Any], path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, table) per dataset; top-level [[subsets]] form one more, unnamed dataset."""
    datasets = doc.get("datasets", [])
    if not isinstance(datasets, list):
        raise DatasetError(f"{path}: 'datasets' must be an array of tables ([[datasets]])")
    tables = [(f"datasets[{d}]", table) for d, table in enumerate(datasets)]
    if "subsets" in doc:
        tables.append(("", {"subsets": doc["subsets"]}))
    if not tables:
        raise DatasetError(f"{path}: no [[datasets]] / [[datasets.subsets]] or [[subsets]] tables")
    return tables


def _resolve_dir(value: str, base: Path, where: str, path: Path) -> Path:
    """An absolute ``image_dir`` as written; a relative one under ``base``, which it
    may not leave (``..`` or a symlink pointing out), so that a dataset TOML from
    elsewhere cannot make tsuika read folders its user never named."""
    image_dir = Path(value).expanduser()
    if image_dir.is_absolute():
        return image_dir
    inside = (base / image_dir).resolve()
    if not inside.is_relative_to(base.resolve()):
        raise DatasetError(
            f"{path}: {where}.image_dir = {value!r} leads outside the TOML's folder "
            f"{base} (to {inside}); relative folders must stay inside it, write an "
            "absolute path to name a folder elsewhere"
        )
    return base / image_dir


def _subset(values: dict[str, Any], base: Path, where: str, path: Path, default_ext: str) -> Subset:
    if "image_dir" not in values:
        raise DatasetError(f"{path}: {where}.image_dir is required")
    image_dir = _resolve_dir(values["image_dir"], base, where, path)
    try:
        return Subset(
            name=values.get("name", image_dir.name),
            image_dir=image_dir,
            num_repeats=values.get("num_repeats", 1),
            class_tokens=values.get("class_tokens", ""),
            caption_extension=values.get("caption_extension", default_ext),
            keep_tokens=values.get("keep_tokens", 0),
            is_reg=values.get("is_reg", False),
            shuffle_caption=values.get("shuffle_caption", False),
            caption_prefix=values.get("caption_prefix", ""),
            caption_suffix=values.get("caption_suffix", ""),
            caption_dropout_rate=float(values.get("caption_dropout_rate", 0.0)),
            caption_tag_dropout_rate=float(values.get("caption_tag_dropout_rate", 0.0)),
        )
    except DatasetError as exc:
        raise DatasetError(f"{path}: {where}: {exc}") from exc


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}#{n}", n + 1
    taken.add(candidate)
    return candidate


def _refuse_run_keys(table: dict[str, Any], where: str, path: Path) -> None:
    """kohya's dataset-level keys are set in the run config in tsuika: name where."""
    for key in table:
        if key in RUN_CONFIG_KEYS:
            prefix = f"{where}." if where else ""
            raise DatasetError(
                f"{path}: {prefix}{key} is not read from a dataset TOML; tsuika sets it in "
                f"{RUN_CONFIG_KEYS[key]}"
            )


def scan_dataset_toml(
    path: str | Path, *, caption_extension: str = DEFAULT_CAPTION_EXTENSION
) -> DatasetIndex:
    """Index the subsets of a dataset TOML (see the module docstring)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: dataset TOML not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DatasetError(f"{path}: invalid TOML: {exc}") from exc
    for key in doc:
        if key not in ("general", "datasets", "subsets"):
            raise DatasetError(
                f"{path}: unknown table [{key}] (allowed: general, datasets, subsets)"
            )
    warns: list[ScanWarning] = []
    general_table = doc.get("general", {})
    _refuse_run_keys(general_table, "general", path)
    general = _check_table(general_table, SUBSET_KEYS, "general", path, warns)
    subsets: list[Subset] = []
    taken: set[str] = set()
    for where, dataset in _dataset_tables(doc, path):
        own = {k: v for k, v in dataset.items() if k != "subsets"}
        _refuse_run_keys(own, where, path)
        dvalues = _check_table(own, SUBSET_KEYS, where, path, warns)
        for s, table in enumerate(dataset.get("subsets", [])):
            swhere = f"{where}.subsets[{s}]" if where else f"subsets[{s}]"
            _refuse_run_keys(table, swhere, path)
            svalues = _check_table(table, {**SUBSET_KEYS, **SUBSET_ONLY_KEYS}, swhere, path, warns)
            merged = {
                **{k: v for k, v in general.items() if k in SUBSET_KEYS},
                **{k: v for k, v in dvalues.items() if k in SUBSET_KEYS},
                **svalues,
            }
            subset = _subset(merged, path.parent, swhere, path, caption_extension)
            name = _unique_name(subset.name, taken)
            subsets.append(subset if name == subset.name else replace(subset, name=name))
    try:
        items = [item for subset in subsets for item in scan_subset(subset, warns)]
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from exc
    return DatasetIndex(path.parent, tuple(items), {s.name: s for s in subsets}, tuple(warns))
