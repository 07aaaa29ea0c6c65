"""Dataset TOML: a subset of kohya-ss/sd-scripts' dataset config (``--dataset_config``).

    [general]                      # defaults for every subset
    caption_extension = ".txt"
    keep_tokens = 1

    [[datasets]]
    resolution = 512               # dataset keys: kept in DatasetIndex.options

      [[datasets.subsets]]
      image_dir = "img/sks_dog"    # relative to the TOML file's folder (*tsuika*)
      num_repeats = 10
      class_tokens = "sks dog"

      [[datasets.subsets]]
      image_dir = "img/dog"
      is_reg = true

Top-level ``[[subsets]]`` (one implicit dataset) is accepted as a shorthand.
Subset keys may also be set on ``[general]`` or a ``[[datasets]]`` entry and
are inherited, as in kohya. kohya keys tsuika does not use are ignored with
a warning; unknown keys are errors naming the key, so typos do not pass.
Relative ``image_dir`` is resolved against the TOML's folder (kohya uses the
working directory), so a dataset file can move with its images.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib  # type: ignore[no-redef]

from tsuika.data.scan import (
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
# Dataset-level keys, returned in DatasetIndex.options for the run config to use.
DATASET_KEYS: dict[str, type | tuple[type, ...]] = {
    "resolution": (int, list),
    "min_bucket_reso": int,
    "max_bucket_reso": int,
    "bucket_reso_steps": int,
    "bucket_no_upscale": bool,
    "enable_bucket": bool,
    "batch_size": int,
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
        if key not in allowed:
            raise DatasetError(
                f"{path}: unknown key {where}.{key} (allowed: {', '.join(sorted(allowed))})"
            )
        expected = allowed[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise DatasetError(
                f"{path}: {where}.{key} has the wrong type ({type(value).__name__}: {value!r})"
            )
        out[key] = value
    return out


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


def _resolve_dir(value: str, base: Path) -> Path:
    image_dir = Path(value).expanduser()
    return image_dir if image_dir.is_absolute() else base / image_dir


def _subset(values: dict[str, Any], base: Path, where: str, path: Path, default_ext: str) -> Subset:
    if "image_dir" not in values:
        raise DatasetError(f"{path}: {where}.image_dir is required")
    image_dir = _resolve_dir(values["image_dir"], base)
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


def _merge_options(options: dict[str, Any], new: dict[str, Any], where: str, path: Path) -> None:
    for key, value in new.items():
        if key in options and options[key] != value:
            raise DatasetError(
                f"{path}: {where}.{key} = {value!r} differs from another dataset's {options[key]!r}; "
                "tsuika trains one bucket setup per run"
            )
        options[key] = value


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
    inheritable = {**SUBSET_KEYS, **DATASET_KEYS}
    general = _check_table(doc.get("general", {}), inheritable, "general", path, warns)
    options = {k: v for k, v in general.items() if k in DATASET_KEYS}
    subsets: list[Subset] = []
    taken: set[str] = set()
    for where, dataset in _dataset_tables(doc, path):
        own = {k: v for k, v in dataset.items() if k != "subsets"}
        dvalues = _check_table(own, inheritable, where, path, warns)
        _merge_options(
            options, {k: v for k, v in dvalues.items() if k in DATASET_KEYS}, where, path
        )
        for s, table in enumerate(dataset.get("subsets", [])):
            swhere = f"{where}.subsets[{s}]" if where else f"subsets[{s}]"
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
    return DatasetIndex(
        path.parent, tuple(items), {s.name: s for s in subsets}, tuple(warns), options
    )
