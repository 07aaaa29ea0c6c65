"""Validate a dataset file by file (what ``tsuika prep`` reports) and export bucketed copies.

Every file is decoded in full by ``tsuika._native.scan``; a broken file is
reported with the engine's kind (``empty``, ``corrupt``, ``unsupported``,
``too_large`` = over the pixel limit / decompression bomb, ``unreadable``)
and the scan goes on. Warnings, which do not stop a file from training:

- ``too_small``: the shorter side is below ``min_bucket``, so the picture
  must be enlarged to fill even the smallest bucket side.
- ``no_caption``: no caption file and no class tokens (empty caption).
- ``near_duplicate``: with ``dedup``, a file whose dHash *and* pHash are each
  within ``DHASH_MAX_DISTANCE`` / ``PHASH_MAX_DISTANCE`` bits (of 64) of an
  earlier file (resized or re-encoded copies score 0-4; unrelated pictures
  about 32). The hashes see grey-level structure, not colour.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsuika import _native
from tsuika.atomic import write_bytes_atomic
from tsuika.data.buckets import BucketSpec, Size
from tsuika.data.scan import DatasetIndex, ImageItem

DHASH_MAX_DISTANCE = 10
PHASH_MAX_DISTANCE = 10
KEPT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # others are exported as .png
SCAN_CHUNK = 64


@dataclass
class Problem:
    """One finding about a file. ``severity`` is "error" (file unusable) or "warning"."""

    kind: str
    message: str
    severity: str = "error"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "message": self.message, **self.extra}


@dataclass
class FileReport:
    """What the scan found about one image of the index."""

    item: ImageItem
    rel: str
    format: str | None = None
    size: Size | None = None
    bucket: Size | None = None
    resized: Size | None = None
    problems: list[Problem] = field(default_factory=list)
    output: str | None = None

    @property
    def ok(self) -> bool:
        return all(p.severity != "error" for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.rel,
            "ok": self.ok,
            "format": self.format,
            "width": self.size[0] if self.size else None,
            "height": self.size[1] if self.size else None,
            "bucket": list(self.bucket) if self.bucket else None,
            "resized": list(self.resized) if self.resized else None,
            "subset": self.item.subset,
            "repeats": self.item.repeats,
            "caption": self.item.caption,
            "problems": [p.to_json() for p in self.problems],
            "output": self.output,
        }


@dataclass
class PrepReport:
    """All file reports of a dataset, its scan warnings and the bucket options used."""

    index: DatasetIndex
    spec: BucketSpec
    files: list[FileReport]

    def bucket_counts(self) -> tuple[dict[Size, int], dict[Size, int]]:
        """(images, samples per epoch) per bucket, over usable files."""
        images: Counter[Size] = Counter()
        samples: Counter[Size] = Counter()
        for f in self.files:
            if f.ok and f.bucket is not None:
                images[f.bucket] += 1
                samples[f.bucket] += f.item.repeats
        return dict(sorted(images.items())), dict(sorted(samples.items()))

    def summary(self) -> dict[str, Any]:
        kinds = Counter(p.kind for f in self.files for p in f.problems)
        images, samples = self.bucket_counts()
        return {
            "images": len(self.files),
            "ok": sum(f.ok for f in self.files),
            "with_errors": sum(not f.ok for f in self.files),
            "with_warnings": sum(
                f.ok and any(p.severity == "warning" for p in f.problems) for f in self.files
            ),
            "problems": dict(sorted(kinds.items())),
            "dataset_warnings": len(self.index.warnings),
            "buckets": len(images),
            "samples_per_epoch": sum(samples.values()),
        }

    def to_json(self) -> dict[str, Any]:
        images, samples = self.bucket_counts()
        spec = self.spec
        return {
            "dataset": str(self.index.root),
            "settings": {
                "resolution": spec.resolution,
                "min_bucket": spec.min_bucket,
                "max_bucket": spec.max_bucket,
                "bucket_step": spec.bucket_step,
                "no_upscale": spec.no_upscale,
            },
            "files": [f.to_json() for f in self.files],
            "buckets": [
                {"width": w, "height": h, "images": n, "samples": samples[(w, h)]}
                for (w, h), n in images.items()
            ],
            "warnings": [{"path": str(w.path), "problem": w.problem} for w in self.index.warnings],
            "summary": self.summary(),
        }


def relative_name(item: ImageItem, index: DatasetIndex) -> str:
    """The item's path relative to the dataset root (subset/filename when outside it)."""
    try:
        return item.path.relative_to(index.root).as_posix()
    except ValueError:
        return f"{item.subset}/{item.path.name}"


def scan_files(
    paths: Sequence[str],
    *,
    hashes: bool,
    threads: int | None,
    max_pixels: int | None,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """``_native.scan`` over ``paths`` in chunks of SCAN_CHUNK, reporting progress per chunk."""
    kwargs: dict[str, Any] = {"full_decode": True, "hashes": hashes, "threads": threads}
    if max_pixels is not None:
        kwargs["max_pixels"] = max_pixels
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), SCAN_CHUNK):
        chunk = list(paths[start : start + SCAN_CHUNK])
        results.extend(_native.scan(chunk, **kwargs))
        if progress is not None:
            progress(len(chunk))
    return results


def near_duplicates(hashes: Sequence[tuple[int, int] | None]) -> dict[int, tuple[int, int, int]]:
    """{j: (i, dhash distance, phash distance)}: file j is a near-duplicate of earlier file i."""
    valid = [k for k, h in enumerate(hashes) if h is not None]
    d = np.array([hashes[k][0] for k in valid], dtype=np.uint64)
    p = np.array([hashes[k][1] for k in valid], dtype=np.uint64)
    found = {}
    for j in range(1, len(valid)):
        dd = np.bitwise_count(d[:j] ^ d[j])
        pd = np.bitwise_count(p[:j] ^ p[j])
        match = np.flatnonzero((dd <= DHASH_MAX_DISTANCE) & (pd <= PHASH_MAX_DISTANCE))
        if match.size:
            i = int(match[0])
            found[valid[j]] = (valid[i], int(dd[i]), int(pd[i]))
    return found


def _file_report(item: ImageItem, rel: str, result: dict[str, Any], spec: BucketSpec) -> FileReport:
    report = FileReport(item, rel)
    if not result["ok"]:
        report.problems.append(Problem(str(result["kind"]), str(result["error"])))
        return report
    report.format = str(result["format"])
    report.size = (int(result["width"]), int(result["height"]))
    if min(report.size) < spec.min_bucket:
        w, h = report.size
        report.problems.append(
            Problem(
                "too_small",
                f"{w}x{h}: shorter side below min_bucket {spec.min_bucket}; it will be upscaled",
                "warning",
            )
        )
    if not item.caption:
        report.problems.append(
            Problem("no_caption", "no caption file and no class tokens", "warning")
        )
    return report


def validate_dataset(
    index: DatasetIndex,
    spec: BucketSpec,
    *,
    dedup: bool = False,
    threads: int | None = None,
    max_pixels: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> PrepReport:
    """Scan every file of ``index``; never stops at a bad file (see the module docstring)."""
    unique = list(dict.fromkeys(str(item.path) for item in index))
    results = scan_files(
        unique, hashes=dedup, threads=threads, max_pixels=max_pixels, progress=progress
    )
    by_path = dict(zip(unique, results, strict=True))
    files = [
        _file_report(item, relative_name(item, index), by_path[str(item.path)], spec)
        for item in index
    ]
    usable = [f for f in files if f.ok]
    for f, (bucket, resized) in zip(usable, spec.assign([f.size for f in usable]), strict=True):
        f.bucket, f.resized = bucket, resized
    if dedup:
        _mark_duplicates(files, [by_path[str(f.item.path)] for f in files])
    return PrepReport(index, spec, files)


def _mark_duplicates(files: list[FileReport], results: list[dict[str, Any]]) -> None:
    hashes = [(int(r["dhash"]), int(r["phash"])) if r["ok"] else None for r in results]
    seen: dict[Path, int] = {}
    for k, f in enumerate(files):  # the same file listed by two subsets is not a duplicate
        if seen.setdefault(f.item.path, k) != k:
            hashes[k] = None
    for j, (i, dd, pd) in near_duplicates(hashes).items():
        files[j].problems.append(
            Problem(
                "near_duplicate",
                f"near-duplicate of {files[i].rel} (dHash distance {dd}, pHash distance {pd})",
                "warning",
                {"duplicate_of": files[i].rel, "dhash_distance": dd, "phash_distance": pd},
            )
        )


def output_name(rel: str) -> str:
    """Exported name: same relative path and base name; .jpg/.jpeg/.png/.webp kept, others .png."""
    path = Path(rel)
    return rel if path.suffix.lower() in KEPT_EXTENSIONS else path.with_suffix(".png").as_posix()


def export_dataset(
    report: PrepReport,
    out: str | Path,
    *,
    threads: int | None = None,
    max_pixels: int | None = None,
) -> int:
    """Write bucketed, resized copies of usable files (and their captions) under ``out``.

    Returns the number of images written; failures become ``export_failed`` problems.
    """
    out = Path(out)
    jobs: list[tuple[FileReport, Path]] = []
    claimed: dict[Path, str] = {}
    for f in report.files:
        if not f.ok or f.bucket is None:
            continue
        dst = out / output_name(f.rel)
        if dst in claimed:
            if claimed[dst] != str(f.item.path):
                f.problems.append(
                    Problem(
                        "export_skipped",
                        f"output {dst} already written for {claimed[dst]}",
                        "warning",
                    )
                )
            continue
        claimed[dst] = str(f.item.path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((f, dst))
    kwargs: dict[str, Any] = {"threads": threads}
    if max_pixels is not None:
        kwargs["max_pixels"] = max_pixels
    items = [(str(f.item.path), str(dst), f.bucket[0], f.bucket[1]) for f, dst in jobs]
    errors = _native.export_images(items, **kwargs) if items else []
    written = 0
    for (f, dst), error in zip(jobs, errors, strict=True):
        if error is not None:
            f.problems.append(Problem("export_failed", str(error)))
            continue
        written += 1
        f.output = dst.relative_to(out).as_posix()
        caption = f.item.caption_path
        if caption is not None:
            try:
                write_bytes_atomic(dst.with_name(dst.stem + caption.suffix), caption.read_bytes())
            except OSError as exc:
                f.problems.append(
                    Problem(
                        "export_failed",
                        f"{caption}: cannot copy caption: {exc.strerror}",
                        "warning",
                    )
                )
    return written
