"""What recommend knows about a dataset, read through the Rust engine without full decodes.

``tsuika._native.scan(full_decode=False, hashes=True)`` probes each header for
the size and decodes only a thumbnail-sized picture for the dHash and pHash
(JPEGs decode at reduced scale). Near-duplicates are the pairs
:func:`tsuika.data.validate.near_duplicates` finds (what ``tsuika prep
--dedup`` reports); the first of each group counts, the others do not.
Buckets are assigned as training will (:class:`tsuika.data.buckets.BucketSpec`).

The identifier is ``--identifier`` when given, else inferred: the first word of
the kohya folder's class tokens (``10_sks dog`` -> ``sks``) when the captions
use it, else the word found in the most captions (at least half) that is not a
common caption word (:data:`COMMON_WORDS`); among words in as many captions,
the one that comes first.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tsuika.data.buckets import BucketSpec
from tsuika.data.scan import DatasetError, DatasetIndex, require_images, scan_dataset
from tsuika.data.validate import near_duplicates

from .errors import RecommendError

SCAN_CHUNK = 256
COMMON_WORDS = frozenset(
    "a an the of on in at with and or to by for from against over under near its his her "
    "their this that is are photo picture image drawing painting illustration art artwork "
    "style background foreground close up closeup portrait view shot white black red green "
    "blue yellow orange purple pink brown grey gray person man woman girl boy".split()
)
_WORD = re.compile(r"[^\s,.;:!?()\[\]{}\"']+")


@dataclass
class DatasetFacts:
    """The numbers the rules read. ``unique`` counts pictures after near-duplicate removal."""

    root: Path
    images: int
    unique: int
    unreadable: list[str]
    duplicates: list[tuple[str, str]]  # (picture, the earlier one it repeats)
    samples_per_epoch: int  # unique pictures x their repeats
    sizes: dict[str, int]  # smallest / median / largest short side
    small: int  # pictures whose shorter side is below the resolution
    buckets: dict[str, int]  # "WxH" -> unique pictures
    captioned: int
    caption_words: float  # mean words per caption file
    identifier: str | None
    identifier_source: str
    with_identifier: int
    class_word: str | None
    repeats: dict[str, int] = field(default_factory=dict)  # subset -> repeats

    @property
    def duplicate_share(self) -> float:
        return (self.images - self.unique) / self.images if self.images else 0.0

    @property
    def single_buckets(self) -> int:
        """Buckets that hold one picture: every batch from them is a batch of one."""
        return sum(1 for n in self.buckets.values() if n == 1)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["root"] = str(self.root)
        out["duplicates"] = [{"path": a, "duplicate_of": b} for a, b in self.duplicates]
        out["duplicate_share"] = round(self.duplicate_share, 3)
        out["single_buckets"] = self.single_buckets
        return out


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _scan(paths: list[str]) -> list[dict[str, Any]]:
    from tsuika import _native

    out: list[dict[str, Any]] = []
    for start in range(0, len(paths), SCAN_CHUNK):
        out.extend(_native.scan(paths[start : start + SCAN_CHUNK], full_decode=False, hashes=True))
    return out


def _index(dataset: str | Path) -> DatasetIndex:
    try:
        return require_images(scan_dataset(dataset))
    except DatasetError as exc:
        raise RecommendError(str(exc)) from None


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def infer_identifier(index: DatasetIndex, captions: list[str]) -> tuple[str | None, str]:
    """(identifier, how it was found) from class tokens and captions (module docstring)."""
    if not captions:
        return None, "no captions to find it in"
    per_caption = [set(_words(c)) for c in captions]
    for item in index:
        first = item.class_tokens.split()[0].lower() if item.class_tokens.split() else None
        if first and sum(first in words for words in per_caption) >= len(captions) / 2:
            return first, f"class tokens of folder {item.subset!r}"
    counts = Counter(w for words in per_caption for w in words if w not in COMMON_WORDS)
    first_seen: dict[str, int] = {}  # ties go to the word that comes first (identifiers lead)
    for w in (w for c in captions for w in _words(c)):
        first_seen.setdefault(w, len(first_seen))
    ranked = [
        w
        for w in sorted(counts, key=lambda w: (-counts[w], first_seen[w]))
        if counts[w] >= len(captions) / 2 and not w.isdigit()
    ]
    if ranked:
        return ranked[0], "the uncommon word most captions share"
    return None, "no uncommon word in most captions"


def _sizes(shorts: list[int]) -> dict[str, int]:
    ordered = sorted(shorts)
    return {"min": ordered[0], "median": ordered[len(ordered) // 2], "max": ordered[-1]}


def inspect_dataset(
    dataset: str | Path, spec: BucketSpec, identifier: str | None = None
) -> DatasetFacts:
    """Scan ``dataset`` (a kohya folder or a dataset .toml) as the module docstring says."""
    index = _index(dataset)
    items = list(index)
    results = _scan([str(item.path) for item in items])
    ok = [k for k, r in enumerate(results) if r["ok"]]
    if not ok:
        first = results[0]
        raise RecommendError(
            f"{index.root}: none of the {len(items)} pictures can be read "
            f"(first: {_rel(items[0].path, index.root)}: {first['error']})"
        )
    hashes = [(int(results[k]["dhash"]), int(results[k]["phash"])) for k in ok]
    dups = near_duplicates(hashes)
    keep = [k for j, k in enumerate(ok) if j not in dups]
    rel = [_rel(item.path, index.root) for item in items]
    sizes = [(int(results[k]["width"]), int(results[k]["height"])) for k in keep]
    res = spec.resolution if isinstance(spec.resolution, int) else min(spec.resolution)
    buckets = Counter(f"{b[0]}x{b[1]}" for b, _ in spec.assign(sizes))
    captioned = [items[k].caption for k in keep if items[k].caption_path is not None]
    found, source = (
        (identifier, "--identifier") if identifier else infer_identifier(index, captioned)
    )
    token = found.lower() if found else None
    return DatasetFacts(
        root=index.root,
        images=len(items),
        unique=len(keep),
        unreadable=[f"{rel[k]}: {r['error']}" for k, r in enumerate(results) if not r["ok"]],
        duplicates=[(rel[ok[j]], rel[ok[i]]) for j, (i, _, _) in sorted(dups.items())],
        samples_per_epoch=sum(items[k].repeats for k in keep),
        sizes=_sizes([min(s) for s in sizes]),
        small=sum(min(s) < res for s in sizes),
        buckets=dict(sorted(buckets.items())),
        captioned=len(captioned),
        caption_words=sum(len(_words(c)) for c in captioned) / len(captioned) if captioned else 0.0,
        identifier=found,
        identifier_source=source,
        with_identifier=sum(token in _words(c) for c in captioned) if token else 0,
        class_word=_class_word(index),
        repeats={name: s.num_repeats for name, s in index.subsets.items()},
    )


def _class_word(index: DatasetIndex) -> str | None:
    """The class noun of a kohya folder (``10_sks dog`` -> ``dog``), None without one."""
    for item in index:
        words = item.class_tokens.split()
        if words:
            return words[-1]
    return None
