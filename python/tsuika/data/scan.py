"""Scan a dataset folder in kohya-ss/sd-scripts' DreamBooth conventions.

Layout (kohya's ``train_data_dir``)::

    dataset/
      10_sks dog/          # 10 repeats per epoch, class tokens "sks dog"
        a.jpg  a.txt       # caption from <stem><caption_extension>
        b.png              # no caption file: the caption is the class tokens
      3_dog/ ...
      c.webp  c.txt        # images directly in the root: 1 repeat, no class tokens

Rules (each one kohya's, except where marked *tsuika*):

- A sub-folder named ``N_name`` (N a positive integer) is a subset with N
  repeats and class tokens ``name`` (``_`` after the first one is kept).
- *tsuika*: images directly in the dataset root form a subset named ``.``
  with 1 repeat and no class tokens (kohya ignores them).
- A sub-folder whose name does not start with ``N_`` (e.g. ``x_dog``,
  ``cats``) or has 0 repeats is skipped with a warning, as kohya does; the
  warning names the folder so the skip is never silent.
- Only the top level of a subset folder is read (kohya's default, not
  recursive); nested folders are skipped with a warning.
- Image extensions: .jpg .jpeg .png .webp .bmp, in any case. Names starting
  with ``.`` are ignored. Entries that are not directories are listed even if
  they cannot be read (dangling links), so that validation reports them.
- Captions: ``<stem><caption_extension>`` (default ``.txt``), then
  ``<stem>.caption`` as a fallback; the first non-empty line, stripped; UTF-8
  (a BOM is allowed). A missing, empty or undecodable caption file gives the
  class tokens, and the latter two a warning.
- Order: subsets sorted by folder name, images sorted by file name, so that
  the index (and every seeded draw over it) is deterministic.

A dataset TOML (see :mod:`tsuika.data.dataset_toml`) gives the same index.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from tsuika.data import dataset_toml
from tsuika.data.index import (  # re-exported: the types live in the leaf module
    DEFAULT_CAPTION_EXTENSION,
    FALLBACK_CAPTION_EXTENSION,
    IMAGE_EXTENSIONS,
    DatasetError,
    DatasetIndex,
    ImageItem,
    ScanWarning,
    Subset,
    is_image_name,
    list_images,
    read_caption,
    scan_subset,
)

__all__ = [
    "DEFAULT_CAPTION_EXTENSION",
    "FALLBACK_CAPTION_EXTENSION",
    "IMAGE_EXTENSIONS",
    "ROOT_SUBSET",
    "DatasetError",
    "DatasetIndex",
    "ImageItem",
    "ScanWarning",
    "Subset",
    "folder_subsets",
    "is_image_name",
    "list_images",
    "parse_subset_dir",
    "read_caption",
    "require_images",
    "require_no_class_pictures",
    "scan_dataset",
    "scan_folder",
    "scan_subset",
    "split_class_pictures",
]

ROOT_SUBSET = "."

_SUBSET_DIR = re.compile(r"^(\d+)_(.+)$")


def parse_subset_dir(name: str) -> tuple[int, str] | None:
    """(repeats, class tokens) of a kohya folder name ``N_name``, or None."""
    match = _SUBSET_DIR.match(name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2).strip()


def folder_subsets(
    root: Path, caption_extension: str, is_reg: bool, warnings: list[ScanWarning]
) -> list[Subset]:
    """The subsets of a kohya folder: the root itself (if it holds images) and each ``N_name``."""
    subsets = []
    if any(is_image_name(p.name) and not p.is_dir() for p in root.iterdir()):
        subsets.append(Subset(ROOT_SUBSET, root, 1, "", caption_extension, is_reg=is_reg))
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or not entry.is_dir() or is_image_name(entry.name):
            continue
        parsed = parse_subset_dir(entry.name)
        if parsed is None:
            warnings.append(
                ScanWarning(
                    entry, "folder name is not 'N_name' (N = repeats); skipped, as kohya does"
                )
            )
            continue
        repeats, tokens = parsed
        if repeats < 1:
            warnings.append(ScanWarning(entry, "0 repeats; skipped"))
            continue
        subsets.append(Subset(entry.name, entry, repeats, tokens, caption_extension, is_reg=is_reg))
    return subsets


def scan_folder(
    root: str | Path,
    *,
    caption_extension: str = DEFAULT_CAPTION_EXTENSION,
    is_reg: bool = False,
) -> DatasetIndex:
    """Index a dataset folder in kohya conventions (see the module docstring)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected a dataset folder or a dataset .toml)")
    warnings: list[ScanWarning] = []
    try:
        subsets = folder_subsets(root, caption_extension, is_reg, warnings)
        items = [item for subset in subsets for item in scan_subset(subset, warnings)]
    except PermissionError as exc:
        raise DatasetError(f"{exc.filename}: permission denied while listing the dataset") from exc
    for subset in subsets:
        if subset.name == ROOT_SUBSET:
            continue
        nested = [
            p for p in subset.image_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        ]
        warnings.extend(
            ScanWarning(p, "nested folder inside a subset; skipped")
            for p in sorted(nested)
            if not is_image_name(p.name)
        )
    return DatasetIndex(root, tuple(items), {s.name: s for s in subsets}, tuple(warnings))


def scan_dataset(
    path: str | Path, *, caption_extension: str = DEFAULT_CAPTION_EXTENSION
) -> DatasetIndex:
    """Index ``path``: a dataset folder, or a dataset ``.toml`` (``caption_extension`` is
    then the default for subsets that do not set one)."""
    path = Path(path)
    if path.suffix.lower() == ".toml":
        return dataset_toml.scan_dataset_toml(path, caption_extension=caption_extension)
    return scan_folder(path, caption_extension=caption_extension)


def split_class_pictures(index: DatasetIndex) -> tuple[DatasetIndex, tuple[ImageItem, ...]]:
    """``index`` without its ``is_reg`` items (kohya's regularisation pictures), and those
    items: the class pictures of DreamBooth's prior preservation, never trained on as
    pictures of the concept."""
    kept = tuple(item for item in index.items if not item.is_reg)
    return replace(index, items=kept), tuple(i for i in index.items if i.is_reg)


def require_no_class_pictures(index: DatasetIndex) -> DatasetIndex:
    """``index`` itself, or a DatasetError when it holds ``is_reg`` (class) pictures: only
    the training run hands those to a method that uses them (DreamBooth)."""
    reg = [item for item in index.items if item.is_reg]
    if reg:
        raise DatasetError(
            f"{index.root}: {len(reg)} is_reg (class) picture(s), e.g. {reg[0].path}, would "
            "train as pictures of the concept; only `tsuika train` with method dreambooth "
            "(prior preservation) uses them"
        )
    return index


def require_images(index: DatasetIndex) -> DatasetIndex:
    """``index`` itself, or a DatasetError saying why it holds no image."""
    if len(index) == 0:
        hint = "; ".join(str(w) for w in index.warnings[:3])
        raise DatasetError(
            f"{index.root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)}; "
            f"sub-folders must be named 'N_name')" + (f" [{hint}]" if hint else "")
        )
    return index
