"""`tsuika prep DATASET`: validate every image, show the bucket table, optionally export.

Exit status 0 when the scan ran, whatever it found (each problem is reported,
none stops the scan); non-zero with a one-line message when it cannot run
(missing folder, no images, inconsistent options).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tsuika.cli.messages import TsuikaCommand
from tsuika.data.buckets import BucketSpec, format_bucket_table
from tsuika.data.scan import (
    DEFAULT_CAPTION_EXTENSION,
    DatasetIndex,
    require_images,
    scan_dataset,
)
from tsuika.data.validate import PrepReport, export_dataset, validate_dataset


def _parse_resolution(value: str) -> int | tuple[int, int]:
    """ "512" or "768,512" / "768x512" (width, height)."""
    parts = value.lower().replace("x", ",").split(",")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected N or W,H (integers)") from None
    if len(numbers) not in (1, 2) or min(numbers) < 1:
        raise click.BadParameter(f"{value!r}: expected N or W,H with positive integers")
    return numbers[0] if len(numbers) == 1 else (numbers[0], numbers[1])


def _bucket_spec(
    resolution: str, min_bucket: int, max_bucket: int, bucket_step: int, no_upscale: bool
) -> BucketSpec:
    """The bucket options, or a UsageError naming the inconsistent flags."""
    res = _parse_resolution(resolution)
    if min_bucket > max_bucket:
        raise click.UsageError(
            f"--min-bucket {min_bucket} is larger than --max-bucket {max_bucket}"
        )
    if min_bucket < bucket_step:
        raise click.UsageError(
            f"--min-bucket {min_bucket} is smaller than --bucket-step {bucket_step}"
        )
    if min(res if isinstance(res, tuple) else (res,)) < bucket_step:
        raise click.UsageError(
            f"--resolution {resolution} is smaller than --bucket-step {bucket_step}"
        )
    try:
        return BucketSpec(res, min_bucket, max_bucket, bucket_step, no_upscale)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _print_text(report: PrepReport, written: int | None, out: Path | None) -> None:
    index = report.index
    click.echo(
        f"dataset: {index.root} ({len(index)} images in {len(index.subsets)} subsets, "
        f"{index.num_samples} samples per epoch)"
    )
    lines = [f"  warning  {'dataset':<15} {w}" for w in index.warnings]
    for f in report.files:
        for p in f.problems:
            lines.append(
                f"  {p.severity:<8} {p.kind:<15} {f.rel}: {_strip_path(p.message, f.item.path)}"
            )
    if lines:
        click.echo("problems:")
        click.echo("\n".join(lines))
    spec = report.spec
    images, samples = report.bucket_counts()
    click.echo(
        f"buckets (resolution {spec.resolution}, sides {spec.min_bucket}..{spec.max_bucket} "
        f"step {spec.bucket_step}{', no upscale' if spec.no_upscale else ''}):"
    )
    click.echo(format_bucket_table(images, samples) if images else "  (no usable image)")
    s = report.summary()
    click.echo(
        f"summary: {s['images']} images, {s['ok']} usable, {s['with_errors']} with errors, "
        f"{s['with_warnings']} with warnings, {s['buckets']} buckets, "
        f"{s['samples_per_epoch']} samples per epoch"
    )
    if out is not None:
        click.echo(f"wrote {written} images to {out}")


@click.command(cls=TsuikaCommand)
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option(
    "--resolution", default="512", show_default=True, help="Training resolution: N or W,H."
)
@click.option("--min-bucket", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--max-bucket", default=1024, show_default=True, type=click.IntRange(min=1))
@click.option("--bucket-step", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--no-upscale", is_flag=True, help="kohya's bucket_no_upscale: never enlarge.")
@click.option("--dedup", is_flag=True, help="Report near-duplicates (dHash + pHash).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write bucketed, resized copies (and captions) here, same relative paths.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--caption-extension", default=DEFAULT_CAPTION_EXTENSION, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Decoder threads (default: all cores).")
@click.option(
    "--max-pixels", type=click.IntRange(min=1), help="Pixel limit per image (decompression bombs)."
)
def prep(
    dataset: Path,
    resolution: str,
    min_bucket: int,
    max_bucket: int,
    bucket_step: int,
    no_upscale: bool,
    dedup: bool,
    out: Path | None,
    as_json: bool,
    caption_extension: str,
    threads: int | None,
    max_pixels: int | None,
) -> None:
    """Check every image of DATASET (a kohya folder or a dataset .toml) and show its buckets."""
    if not caption_extension.startswith("."):
        raise click.UsageError(
            f"--caption-extension must start with '.', got {caption_extension!r}"
        )
    spec = _bucket_spec(resolution, min_bucket, max_bucket, bucket_step, no_upscale)
    index = require_images(scan_dataset(dataset, caption_extension=caption_extension))
    if out is not None and out.resolve() == index.root.resolve():
        raise click.UsageError(f"--out {out} is the dataset folder itself; choose another folder")
    report = _scan(index, spec, dedup, threads, max_pixels)
    written = None
    if out is not None:
        try:
            written = export_dataset(report, out, threads=threads, max_pixels=max_pixels)
        except OSError as exc:
            raise click.ClickException(
                f"{exc.filename or out}: cannot write output: {exc.strerror}"
            ) from None
    if as_json:
        document = report.to_json()
        if out is not None:
            document["out"] = {"dir": str(out), "written": written}
        click.echo(json.dumps(document, indent=2))
    else:
        _print_text(report, written, out)


def _scan(
    index: DatasetIndex, spec: BucketSpec, dedup: bool, threads: int | None, max_pixels: int | None
) -> PrepReport:
    """Validate with a progress bar on stderr when it is a terminal."""
    unique = len({item.path for item in index})
    if not sys.stderr.isatty():
        return validate_dataset(index, spec, dedup=dedup, threads=threads, max_pixels=max_pixels)
    with click.progressbar(length=unique, label="scanning", file=sys.stderr) as bar:
        return validate_dataset(
            index, spec, dedup=dedup, threads=threads, max_pixels=max_pixels, progress=bar.update
        )
