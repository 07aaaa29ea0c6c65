"""Group a dataset's images into aspect-ratio buckets.

The rules (table, nearest aspect ratio, cover-resize, no-upscale mode) are
kohya-ss/sd-scripts' ``BucketManager`` and live in Rust
(``tsuika._native.bucket_table`` / ``assign_buckets``); this module only
carries the [data] options to it and counts the result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tsuika import _native
from tsuika.data.scan import DatasetError, DatasetIndex

Size = tuple[int, int]


@dataclass(frozen=True)
class BucketSpec:
    """The [data] bucket options: kohya's resolution, min/max bucket side, step, no-upscale."""

    resolution: int | tuple[int, int] = 512
    min_bucket: int = 256
    max_bucket: int = 1024
    bucket_step: int = 64
    no_upscale: bool = False

    def __post_init__(self) -> None:
        res = self.resolution if isinstance(self.resolution, tuple) else (self.resolution,) * 2
        checks = [
            ("bucket_step", self.bucket_step > 0, "must be > 0"),
            ("min_bucket", self.min_bucket >= self.bucket_step, "must be >= bucket_step"),
            ("max_bucket", self.max_bucket >= self.min_bucket, "must be >= min_bucket"),
            ("resolution", min(res) >= self.bucket_step, "must be >= bucket_step"),
        ]
        for key, ok, problem in checks:
            if not ok:
                raise ValueError(f"{key} {problem} (got {key} = {getattr(self, key)!r})")

    @classmethod
    def from_config(cls, data: object) -> BucketSpec:
        """From any object with the [data] attribute names (missing ones keep defaults)."""
        names = ("resolution", "min_bucket", "max_bucket", "bucket_step", "no_upscale")
        given = {name: getattr(data, name) for name in names if hasattr(data, name)}
        if isinstance(given.get("resolution"), list):
            given["resolution"] = tuple(given["resolution"])
        return cls(**given)

    def table(self) -> list[Size]:
        """kohya's bucket table, (width, height) pairs."""
        return [
            tuple(b)
            for b in _native.bucket_table(
                self.resolution, self.min_bucket, self.max_bucket, self.bucket_step
            )
        ]

    def assign(self, sizes: Sequence[Size]) -> list[tuple[Size, Size]]:
        """((bucket_w, bucket_h), (resized_w, resized_h)) for each (width, height)."""
        if not sizes:
            return []
        choices = _native.assign_buckets(
            list(sizes),
            self.resolution,
            self.min_bucket,
            self.max_bucket,
            self.bucket_step,
            no_upscale=self.no_upscale,
        )
        return [(tuple(bucket), tuple(resized)) for bucket, resized in choices]


@dataclass(frozen=True)
class BucketGroups:
    """Per item of an index: its bucket and its cover size; plus counts."""

    buckets: tuple[Size, ...]
    resized: tuple[Size, ...]
    repeats: tuple[int, ...]

    def image_counts(self) -> dict[Size, int]:
        return dict(sorted(Counter(self.buckets).items()))

    def sample_counts(self) -> dict[Size, int]:
        """Images per bucket per epoch, each image counted ``repeats`` times."""
        counts: Counter[Size] = Counter()
        for bucket, repeats in zip(self.buckets, self.repeats, strict=True):
            counts[bucket] += repeats
        return dict(sorted(counts.items()))


def image_sizes(
    paths: Sequence[str | Path], *, threads: int | None = None, max_pixels: int | None = None
) -> list[Size]:
    """Upright (width, height) of each file from its header; DatasetError lists unusable files."""
    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    results = _native.scan([str(p) for p in paths], full_decode=False, threads=threads, **kwargs)
    bad = [r for r in results if not r["ok"]]
    if bad:
        shown = "; ".join(str(r["error"]) for r in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DatasetError(
            f"{len(bad)} image(s) cannot be read: {shown}{more}. Run `tsuika prep` on the dataset."
        )
    return [(int(r["width"]), int(r["height"])) for r in results]


def group_by_bucket(
    index: DatasetIndex, spec: BucketSpec, sizes: Sequence[Size] | None = None
) -> BucketGroups:
    """Assign every item of ``index`` to a bucket (sizes read from the headers when not given)."""
    if sizes is None:
        sizes = image_sizes(index.paths)
    if len(sizes) != len(index):
        raise ValueError(f"{len(sizes)} sizes for {len(index)} images")
    choices = spec.assign(sizes)
    return BucketGroups(
        buckets=tuple(b for b, _ in choices),
        resized=tuple(r for _, r in choices),
        repeats=tuple(index.repeats),
    )


def format_bucket_table(
    image_counts: dict[Size, int], sample_counts: dict[Size, int] | None = None
) -> str:
    """A plain-text table: bucket, aspect ratio, images (and samples per epoch)."""
    header = f"{'bucket':>11}  {'aspect':>6}  {'images':>6}"
    if sample_counts is not None:
        header += f"  {'samples/epoch':>13}"
    lines = [header]
    for (w, h), n in sorted(image_counts.items()):
        line = f"{f'{w}x{h}':>11}  {w / h:>6.3f}  {n:>6}"
        if sample_counts is not None:
            line += f"  {sample_counts.get((w, h), 0):>13}"
        lines.append(line)
    return "\n".join(lines)
