"""The dataset index and the reading of one subset folder: the types every dataset
reader shares (:mod:`tsuika.data.scan` for kohya folders, :mod:`tsuika.data.dataset_toml`
for dataset TOML files).

A leaf of ``tsuika.data``: it imports no other dataset module, so both readers
can import it without importing each other. The rules for image names and
captions are listed in :mod:`tsuika.data.scan`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tsuika.errors import TsuikaError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_CAPTION_EXTENSION = ".txt"
FALLBACK_CAPTION_EXTENSION = ".caption"


class DatasetError(TsuikaError, ValueError):
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
