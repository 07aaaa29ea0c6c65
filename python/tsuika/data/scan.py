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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_CAPTION_EXTENSION = ".txt"
FALLBACK_CAPTION_EXTENSION = ".caption"
ROOT_SUBSET = "."

_SUBSET_DIR = re.compile(r"^(\d+)_(.+)$")


class DatasetError(ValueError):
    """A dataset that cannot be used at all; the message names the path and the problem."""


@dataclass(frozen=True)
class ScanWarning:
    """Something the scan skipped or guessed; ``path`` names the file or folder."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class Subset:
    """One group of images sharing repeats, class tokens and caption options."""

    name: str
    image_dir: Path
    num_repeats: int = 1
    class_tokens: str = ""
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    keep_tokens: int = 0
    is_reg: bool = False
    shuffle_caption: bool = False
    caption_prefix: str = ""
    caption_suffix: str = ""
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.num_repeats < 1:
            raise DatasetError(
                f"{self.image_dir}: num_repeats must be >= 1, got {self.num_repeats}"
            )
        if self.keep_tokens < 0:
            raise DatasetError(
                f"{self.image_dir}: keep_tokens must be >= 0, got {self.keep_tokens}"
            )
        for key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise DatasetError(f"{self.image_dir}: {key} must be in [0, 1], got {value}")
        if not self.caption_extension.startswith("."):
            raise DatasetError(
                f"{self.image_dir}: caption_extension must start with '.', got {self.caption_extension!r}"
            )


@dataclass(frozen=True)
class ImageItem:
    """One training image. ``caption`` is the final text before caption processing."""

    path: Path
    caption: str
    repeats: int
    class_tokens: str
    subset: str
    is_reg: bool = False
    keep_tokens: int = 0
    caption_path: Path | None = None  # the caption file read, None when class tokens were used


@dataclass(frozen=True)
class DatasetIndex:
    """The images of a dataset, in a fixed order, with the subsets they come from."""

    root: Path
    items: tuple[ImageItem, ...]
    subsets: dict[str, Subset] = field(default_factory=dict)
    warnings: tuple[ScanWarning, ...] = ()
    options: dict[str, object] = field(default_factory=dict)  # dataset-level TOML keys

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ImageItem]:
        return iter(self.items)

    def __getitem__(self, i: int) -> ImageItem:
        return self.items[i]

    @property
    def paths(self) -> list[Path]:
        return [item.path for item in self.items]

    @property
    def repeats(self) -> list[int]:
        return [item.repeats for item in self.items]

    @property
    def num_samples(self) -> int:
        """Images seen per epoch: each image counted ``repeats`` times."""
        return sum(item.repeats for item in self.items)


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path, warnings: list[ScanWarning] | None = None) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (see module rules)."""
    found = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not is_image_name(entry.name):
            continue
        if entry.is_dir():
            if warnings is not None:
                warnings.append(ScanWarning(entry, "is a folder named like an image; skipped"))
            continue
        found.append(entry)
    return found


def read_caption(
    image: Path, caption_extension: str = DEFAULT_CAPTION_EXTENSION
) -> tuple[str | None, Path | None, str | None]:
    """(caption, caption file, problem) for ``image``; caption None when there is none."""
    for ext in dict.fromkeys((caption_extension, FALLBACK_CAPTION_EXTENSION)):
        candidate = image.with_name(image.stem + ext)
        if not candidate.is_file():
            continue
        try:
            text = candidate.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            return None, candidate, f"caption file is not UTF-8 ({exc.reason}); using class tokens"
        except OSError as exc:
            return None, candidate, f"cannot read caption file ({exc.strerror}); using class tokens"
        for line in text.splitlines():
            if line.strip():
                return line.strip(), candidate, None
        return None, candidate, "caption file is empty; using class tokens"
    return None, None, None


def scan_subset(subset: Subset, warnings: list[ScanWarning]) -> list[ImageItem]:
    """The items of one subset folder (non-recursive)."""
    if not subset.image_dir.is_dir():
        raise DatasetError(f"{subset.image_dir}: image folder of subset {subset.name!r} not found")
    items = []
    for path in list_images(subset.image_dir, warnings):
        caption, caption_path, problem = read_caption(path, subset.caption_extension)
        if problem is not None:
            warnings.append(ScanWarning(caption_path or path, problem))
        items.append(
            ImageItem(
                path=path,
                caption=caption if caption is not None else subset.class_tokens,
                repeats=subset.num_repeats,
                class_tokens=subset.class_tokens,
                subset=subset.name,
                is_reg=subset.is_reg,
                keep_tokens=subset.keep_tokens,
                caption_path=caption_path if caption is not None else None,
            )
        )
    return items


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
        from tsuika.data.dataset_toml import scan_dataset_toml

        return scan_dataset_toml(path, caption_extension=caption_extension)
    return scan_folder(path, caption_extension=caption_extension)


def require_images(index: DatasetIndex) -> DatasetIndex:
    """``index`` itself, or a DatasetError saying why it holds no image."""
    if len(index) == 0:
        hint = "; ".join(str(w) for w in index.warnings[:3])
        raise DatasetError(
            f"{index.root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)}; "
            f"sub-folders must be named 'N_name')" + (f" [{hint}]" if hint else "")
        )
    return index
