"""Data-feeding benchmark: tsuika._native.load_batch against the Python paths trainers use.

Every path does the same work on the same files: decode a JPEG, resize it to
cover the kohya bucket for resolution 512, centre-crop to the bucket, flip
horizontally, normalise to float32 [-1, 1] CHW, in batches.

    ours         tsuika._native.load_batch(batch, bw, bh, flip=True, threads=T), one call
                 after another
    ours-prefetch  the same calls, PREFETCH batches in flight from Python threads as
                 tsuika.data.loader.BatchLoader keeps them
    kohya-style  PIL open (+convert when not RGB) -> np.array -> cv2 INTER_AREA ->
                 crop -> flip -> ToTensor/Normalize, torch DataLoader(num_workers=T)
    PIL-draft    PIL draft() (libjpeg DCT scaling) -> cv2 INTER_AREA -> crop/flip/
                 normalise in numpy, ThreadPoolExecutor(T)
    decode-only  PIL full decode alone, ThreadPoolExecutor(T): the floor a
                 full-size decode puts under any path that does not scale in the DCT

Images/s is the best of --repeats timed passes over the whole set (the passes
of all paths are interleaved, after one untimed warm-up pass of each path that
also warms the file cache). The images are drawn into a temp dir first; drawing
is not timed. Run: /work/main/.venv/bin/python benches/data_feed.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import Goal, format_table, machine_info, measure_round_robin
from PIL import Image

RESOLUTION = 512
RECIPE = "v1"  # bump when draw_photo changes, so --data-dir caches are not reused
KOHYA, DRAFT, DECODE, OURS = "kohya-style", "PIL-draft", "decode-only", "ours"
OURS_PREFETCH = "ours-prefetch"
# Batches the ours-prefetch path keeps in flight: BatchLoader's default ``prefetch`` (the
# trainer's way), as the kohya-style DataLoader keeps prefetch_factor x workers in flight.
PREFETCH = 2
SETS = {"12mpx": (4032, 3024), "web": (1024, 768)}  # name -> source (width, height)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- kohya's bucket rule -------------------------------------------------------------


def kohya_bucket_table(
    resolution: int, min_size: int = 256, max_size: int = 1024, step: int = 64
) -> list[tuple[int, int]]:
    """Bucket (width, height) pairs as kohya-ss/sd-scripts ``make_bucket_resolutions`` builds them."""
    area = resolution * resolution
    side = int(area**0.5 // step) * step
    table = {(side, side)}
    for w in range(min_size, max_size + 1, step):
        h = min(max_size, int(area // w // step) * step)
        if h >= min_size:
            table.add((w, h))
            table.add((h, w))
    return sorted(table)


def kohya_select_bucket(
    width: int, height: int, table: Sequence[tuple[int, int]]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(bucket, cover size) as kohya's ``BucketManager.select_bucket`` picks them (upscale allowed):
    nearest aspect ratio, scaled so the image covers the bucket, sides rounded with int(x + 0.5)."""
    ar = width / height
    if (width, height) in table:
        bucket = (width, height)
    else:
        bucket = min(table, key=lambda b: abs(b[0] / b[1] - ar))
    scale = bucket[1] / height if ar > bucket[0] / bucket[1] else bucket[0] / width
    return bucket, (int(width * scale + 0.5), int(height * scale + 0.5))


# --- drawing the sets ----------------------------------------------------------------


def _octave(rng: np.random.Generator, w: int, h: int, cell: int, amp: float) -> np.ndarray:
    field = rng.standard_normal((h // cell + 2, w // cell + 2, 3), dtype=np.float32) * amp
    return cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)


def draw_photo(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A photo-like RGB8 picture: smooth colour gradients, anti-aliased shapes, texture at two
    scales and sensor noise, so JPEG sizes are realistic (q90: ~2.8 MB at 12 Mpx, ~250 KB at
    1024x768) and libjpeg has real entropy to decode, unlike flat colour."""
    s = max(w, h)
    base = rng.uniform(30, 225, size=(6, 8, 3)).astype(np.float32)
    img = np.clip(cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    for _ in range(40):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(s // 40, s // 6))
        kind = int(rng.integers(3))
        if kind == 0:
            cv2.circle(img, (cx, cy), r, color, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (cx - r, cy - r // 2), (cx + r, cy + r // 2), color, -1, cv2.LINE_AA)
        else:
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(img, (cx, cy), (r, r // 3), angle, 0, 360, color, -1, cv2.LINE_AA)
    f = img.astype(np.float32)
    f += _octave(rng, w, h, max(2, s // 64), 12.0)
    f += _octave(rng, w, h, max(2, s // 512), 10.0)
    f += rng.standard_normal((h, w, 3), dtype=np.float32) * 5.0
    return np.clip(f, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ImageSet:
    name: str
    width: int
    height: int
    paths: list[Path]

    @property
    def mean_file_kb(self) -> float:
        return sum(p.stat().st_size for p in self.paths) / len(self.paths) / 1024


def write_set(folder: Path, name: str, n: int, size: tuple[int, int], seed: int) -> ImageSet:
    """Draw ``n`` JPEGs (quality 90, 4:2:0) of ``size`` into ``folder``; existing files of the
    same recipe, seed and index are reused (so --data-dir caches across runs)."""
    w, h = size
    paths = []
    for i in range(n):
        path = folder / f"{name}_{w}x{h}_{RECIPE}_s{seed}_{i:04d}.jpg"
        if not path.exists():
            rng = np.random.default_rng([seed, w, h, i])
            tmp = path.with_suffix(".tmp")
            Image.fromarray(draw_photo(rng, w, h)).save(tmp, "JPEG", quality=90, subsampling=2)
            os.replace(tmp, path)
        paths.append(path)
    return ImageSet(name, w, h, paths)


# --- the paths ------------------------------------------------------------------------


def _crop_flip(arr: np.ndarray, bucket: tuple[int, int]) -> np.ndarray:
    """Centre crop (kohya: offset (excess) // 2) then horizontal flip; a view, no copy."""
    bw, bh = bucket
    top, left = (arr.shape[0] - bh) // 2, (arr.shape[1] - bw) // 2
    return arr[top : top + bh, left : left + bw][:, ::-1]


def kohya_style_image(path: Path, bucket: tuple[int, int], cover: tuple[int, int]) -> torch.Tensor:
    """kohya-ss/sd-scripts: load_image, trim_and_resize_if_required (cv2 INTER_AREA), flip_aug
    (``img[:, ::-1].copy()``), then ToTensor + Normalize([0.5], [0.5])."""
    image = Image.open(path)
    if image.mode != "RGB":
        image = image.convert("RGB")
    img = np.array(image, np.uint8)
    if img.shape[1] != cover[0] or img.shape[0] != cover[1]:
        img = cv2.resize(img, cover, interpolation=cv2.INTER_AREA)
    img = _crop_flip(img, bucket).copy()
    t = torch.from_numpy(img).permute(2, 0, 1).contiguous().float().div_(255)
    return t.sub_(0.5).div_(0.5)


class KohyaStyleDataset(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], bucket: tuple[int, int], cover: tuple[int, int]):
        self.paths, self.bucket, self.cover = list(paths), bucket, cover

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return kohya_style_image(self.paths[i], self.bucket, self.cover)


def pil_draft_image(path: Path, bucket: tuple[int, int], cover: tuple[int, int]) -> np.ndarray:
    """PIL draft(): libjpeg decodes at the smallest 1/1..1/8 scale still >= cover, then
    cv2 INTER_AREA to cover, crop, flip, normalise to float32 CHW in numpy."""
    with Image.open(path) as im:
        im.draft("RGB", cover)
        img = np.asarray(im.convert("RGB") if im.mode != "RGB" else im)
    img = cv2.resize(img, cover, interpolation=cv2.INTER_AREA)
    out = _crop_flip(img, bucket).transpose(2, 0, 1).astype(np.float32)
    out *= 1 / 127.5
    out -= 1.0
    return out


def decode_only(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        if im.mode != "RGB":
            im = im.convert("RGB")
        return im.size


def _batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class Paths:
    """The callables for one set; each runs one pass over the set and returns the image count."""

    runs: dict[str, Callable[[], int]]
    close: Callable[[], None]


def build_paths(
    s: ImageSet, bucket, cover, batch: int, threads: int, pool: ThreadPoolExecutor, native
) -> Paths:
    paths = [str(p) for p in s.paths]
    bw, bh = bucket
    expected = (3, bh, bw)
    # persistent_workers: the workers start once (in the warm-up pass), not in each timed pass.
    loader = torch.utils.data.DataLoader(
        KohyaStyleDataset(s.paths, bucket, cover),
        batch_size=batch,
        shuffle=False,
        num_workers=threads,
        persistent_workers=True,
    )

    def check(out, n: int) -> None:
        if (
            tuple(out.shape[1:]) != expected
            or out.shape[0] > n
            or out.dtype not in (np.float32, torch.float32)
        ):
            raise RuntimeError(
                f"{s.name}: batch of shape {tuple(out.shape)} {out.dtype}, want [<= {n}, {expected}] float32"
            )

    held = {"loader": loader}
    del loader

    def kohya() -> int:
        n = 0
        for b in held["loader"]:
            check(b, batch)
            n += b.shape[0]
        return n

    def draft() -> int:
        n = 0
        for chunk in _batches(paths, batch * 4):
            for b in _batches(
                list(pool.map(lambda p: pil_draft_image(p, bucket, cover), chunk)), batch
            ):
                arr = np.stack(b)
                check(arr, batch)
                n += arr.shape[0]
        return n

    def floor() -> int:
        return sum(1 for _ in pool.map(decode_only, paths))

    def load(b: Sequence[str]):
        return native.load_batch(b, bw, bh, flip=True, crop="center", threads=threads)

    def taken(arr) -> int:
        check(arr, batch)
        return arr.shape[0]

    def ours() -> int:
        return sum(taken(load(b)) for b in _batches(paths, batch))

    # As tsuika.data.loader.BatchLoader.iterate runs it: PREFETCH Python threads each fill
    # one batch with the GIL released, so one batch's last picture overlaps the next one's first.
    loader_threads = ThreadPoolExecutor(PREFETCH, thread_name_prefix="ours-prefetch")

    def ours_prefetch() -> int:
        n, pending = 0, deque()
        for b in _batches(paths, batch):
            pending.append(loader_threads.submit(load, b))
            if len(pending) > PREFETCH:
                n += taken(pending.popleft().result())
        while pending:
            n += taken(pending.popleft().result())
        return n

    runs: dict[str, Callable[[], int]] = {}
    if native is not None:
        runs.update({OURS: ours, OURS_PREFETCH: ours_prefetch})
    runs.update({KOHYA: kohya, DRAFT: draft, DECODE: floor})

    def close() -> None:
        # Dropping the last reference to the loader shuts its persistent workers down.
        held.clear()
        loader_threads.shutdown(wait=True)

    return Paths(runs, close=close)


# --- quality -------------------------------------------------------------------------


def lanczos_reference(path: Path, bucket: tuple[int, int], cover: tuple[int, int]) -> np.ndarray:
    """PIL full decode, resize to cover with Lanczos, same crop and flip: HWC float in [0, 255]."""
    with Image.open(path) as im:
        img = np.asarray(im.convert("RGB").resize(cover, Image.Resampling.LANCZOS))
    return _crop_flip(img, bucket).astype(np.float32)


def _to_255(chw: np.ndarray) -> np.ndarray:
    return (np.asarray(chw, np.float32).transpose(1, 2, 0) + 1.0) * 127.5


def quality(s: ImageSet, bucket, cover, k: int, threads: int, native) -> dict[str, dict]:
    """Mean absolute difference to the Lanczos reference, as % of 255: mean and worst image."""
    paths = s.paths[:k]
    refs = [lanczos_reference(p, bucket, cover) for p in paths]
    outputs: dict[str, list[np.ndarray]] = {}
    if native is not None:
        batch = native.load_batch([str(p) for p in paths], *bucket, flip=True, threads=threads)
        outputs[OURS] = [_to_255(x) for x in batch]
    outputs[KOHYA] = [_to_255(kohya_style_image(p, bucket, cover).numpy()) for p in paths]
    outputs[DRAFT] = [_to_255(pil_draft_image(p, bucket, cover)) for p in paths]
    result = {}
    for name, outs in outputs.items():
        mads = [float(np.abs(o - r).mean()) / 255 * 100 for o, r in zip(outs, refs, strict=True)]
        result[name] = {"mad_pct": float(np.mean(mads)), "worst_mad_pct": max(mads), "images": k}
    return result


# --- running and reporting -----------------------------------------------------------


def run_set(s: ImageSet, args: argparse.Namespace, pool: ThreadPoolExecutor, native) -> dict:
    bucket, cover = kohya_select_bucket(s.width, s.height, kohya_bucket_table(RESOLUTION))
    native_agrees = None
    if native is not None:
        got = native.assign_buckets([(s.width, s.height)], RESOLUTION)
        native_agrees = [tuple(map(tuple, g)) for g in got] == [(bucket, cover)]
    log(
        f"{s.name}: {len(s.paths)} x {s.width}x{s.height} ({s.mean_file_kb:.0f} KB mean), "
        f"bucket {bucket[0]}x{bucket[1]}, cover {cover[0]}x{cover[1]}"
    )
    paths = build_paths(s, bucket, cover, args.batch, args.threads, pool, native)
    try:
        for name, run in paths.runs.items():
            start = time.perf_counter()
            n = run()
            if n != len(s.paths):
                raise RuntimeError(
                    f"{s.name}/{name}: warm-up pass produced {n} images, want {len(s.paths)}"
                )
            log(f"  warm-up {name}: {time.perf_counter() - start:.3f} s")
        seconds = measure_round_robin(paths.runs, args.repeats, log)
    finally:
        paths.close()
    return {
        "set": s.name,
        "images": len(s.paths),
        "source_size": [s.width, s.height],
        "mean_file_kb": round(s.mean_file_kb, 1),
        "bucket": list(bucket),
        "cover": list(cover),
        "native_bucket_agrees": native_agrees,
        "seconds": seconds,
        "images_per_s": {k: len(s.paths) / min(v) for k, v in seconds.items()},
        "quality": quality(s, bucket, cover, args.quality_images, args.threads, native),
    }


def _ratio(ips: dict[str, float], a: str, b: str) -> float | None:
    return ips[a] / ips[b] if a in ips and b in ips else None


def goals(results: dict[str, dict]) -> list[Goal]:
    out = []
    if "12mpx" in results:
        photo = results["12mpx"]["images_per_s"]
        out.append(Goal("12 Mpx: ours / kohya-style", _ratio(photo, OURS, KOHYA), 5.0))
        out.append(Goal("12 Mpx: ours / PIL-draft", _ratio(photo, OURS, DRAFT), 1.0))
    if "web" in results:
        web = results["web"]["images_per_s"]
        out.append(Goal("web: ours / kohya-style", _ratio(web, OURS, KOHYA), 3.0))
    for name, r in results.items():
        q = r["quality"].get(OURS)
        out.append(
            Goal(
                f"{name}: ours vs PIL Lanczos, worst-image mean |diff|",
                q and q["worst_mad_pct"],
                1.0,
                unit="%",
                at_most=True,
            )
        )
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_report(doc: dict) -> None:
    m = doc["machine"]
    print(
        f"data_feed  {m['time_utc']}  {m['cpus']} CPUs ({m['cpu_model']})  "
        f"load {m.get('loadavg_1_5_15')}  threads={doc['config']['threads']} "
        f"batch={doc['config']['batch']}  images/s = best of {doc['config']['repeats']}"
    )
    if m["native"]:
        print(f"tsuika._native: {m['native']['path']} ({m['native']['size_mb']} MB)")
    rows, qrows = [], []
    for r in doc["sets"]:
        ips = r["images_per_s"]
        label = f"{r['set']} {r['source_size'][0]}x{r['source_size'][1]} x{r['images']}"
        for name, v in ips.items():
            rows.append(
                [
                    label,
                    name,
                    f"{v:.1f}",
                    f"{1000 / v:.1f}",
                    *(_fmt(_ratio(ips, name, b), ".2f") for b in (KOHYA, DRAFT, DECODE)),
                ]
            )
        for name, q in r["quality"].items():
            qrows.append(
                [
                    r["set"],
                    name,
                    f"{q['mad_pct']:.3f}",
                    f"{q['worst_mad_pct']:.3f}",
                    str(q["images"]),
                ]
            )
        agrees = r["native_bucket_agrees"]
        print(
            f"{r['set']}: bucket {r['bucket']} cover {r['cover']}, {r['mean_file_kb']:.0f} KB/file"
            + ("" if agrees is None else f", tsuika._native.assign_buckets agrees: {agrees}")
        )
    print()
    print(
        format_table(
            ["set", "path", "images/s", "ms/img", "x kohya", "x PIL-draft", "x decode"], rows
        )
    )
    print()
    print("quality: mean |diff| vs PIL full decode + Lanczos + same crop/flip, % of 255")
    print(format_table(["set", "path", "mean %", "worst %", "images"], qrows))
    print()
    for g in doc["goals"]:
        print(g["line"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sets, 2 repeats: a smoke run")
    p.add_argument("--n-photo", type=int, help="12 Mpx images (default 24, quick 8)")
    p.add_argument("--n-web", type=int, help="1024x768 images (default 200, quick 48)")
    p.add_argument("--repeats", type=int, help="timed passes per path (default 3, quick 2)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="threads / DataLoader workers per path")
    p.add_argument(
        "--quality-images", type=int, default=4, help="images per set in the quality check"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sets",
        default=",".join(SETS),
        help=f"comma-separated sets to run, of {', '.join(SETS)} (default: all)",
    )
    p.add_argument(
        "--data-dir", type=Path, help="keep drawn images here and reuse them (default: a temp dir)"
    )
    p.add_argument(
        "--refs-only", action="store_true", help="run without tsuika._native (reference paths only)"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the tables"
    )
    a = p.parse_args(argv)
    defaults = {"n_photo": (24, 8), "n_web": (200, 48), "repeats": (3, 2)}
    for key, (full, quick) in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, quick if a.quick else full)
    for key in ("n_photo", "n_web", "repeats", "batch", "threads", "quality_images"):
        if getattr(a, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(a, key)}")
    a.sets = [name.strip() for name in a.sets.split(",") if name.strip()]
    unknown = [name for name in a.sets if name not in SETS]
    if unknown or not a.sets:
        p.error(f"--sets takes names of {', '.join(SETS)}, got {unknown or 'none'}")
    return a


def load_native(refs_only: bool):
    if refs_only:
        return None
    try:
        from tsuika import _native
    except ImportError as e:
        log(
            f"error: cannot import tsuika._native ({e}); build it (maturin develop) or pass --refs-only"
        )
        return False
    return _native


def native_build(native) -> dict[str, object] | None:
    """Where the engine was loaded from and how big it is: a debug build (``maturin develop``
    without ``--release``) is many times slower and carries ~100 MB of debug info."""
    if native is None:
        return None
    path = Path(native.__file__)
    size_mb = path.stat().st_size / 2**20
    if size_mb > 40:
        log(
            f"warning: {path} is {size_mb:.0f} MB, likely a debug build; "
            "timings need `maturin develop --release`"
        )
    return {"path": str(path), "size_mb": round(size_mb, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    native = load_native(args.refs_only)
    if native is False:
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tsuika-data-feed-") as tmp:
        folder = args.data_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        log(f"drawing images into {folder} (not timed)")
        counts = {"12mpx": args.n_photo, "web": args.n_web}
        sets = [
            write_set(folder, name, counts[name], SETS[name], args.seed)
            for name in SETS
            if name in args.sets
        ]
        with ThreadPoolExecutor(args.threads) as pool:
            results = {s.name: run_set(s, args, pool, native) for s in sets}
    doc = {
        "benchmark": "data_feed",
        "machine": {**machine_info(), "native": native_build(native)},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "statistic": f"images/s = images / best of {args.repeats} timed passes",
        "sets": list(results.values()),
        "goals": [{**g.to_json(), "line": g.describe()} for g in goals(results)],
        "total_s": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_report(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
