"""A/B two builds of ``tsuika._native`` in one process on the data_feed web set.

Loads both extension files (e.g. main's and a branch's ``lib_native.so``) side by side,
checks they give the same batch bit for bit, then times ``load_batch`` passes over the
drawn 1024x768 JPEGs, the builds interleaved, and prints wall and CPU ms per picture.
CPU time (``time.process_time``) moves far less than wall time on a shared machine, so
an engine change of a few percent shows here when ``data_feed.py``'s ratios cannot.

    .venv/bin/python benches/native_ab.py BASE.so NEW.so --data-dir DIR [--threads 1] [--repeats 7]

``DIR`` is a ``data_feed.py --data-dir`` folder that holds the web set.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

BUCKET = (576, 448)  # the web set's kohya bucket at resolution 512 (see data_feed.py)


def load_build(path: Path):
    """The extension at ``path`` as its own module object (each file keeps its own state)."""
    spec = importlib.util.spec_from_file_location("_native", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: {path} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_pass(native, paths: list[str], batch: int, threads: int) -> tuple[float, float]:
    """(wall, cpu) seconds for one pass over ``paths`` in batches."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(paths), batch):
        native.load_batch(paths[i : i + batch], *BUCKET, flip=True, threads=threads)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    paths = sorted(str(x) for x in a.data_dir.glob("web_1024x768_*.jpg"))[: a.images]
    if not paths:
        p.error(f"no web_1024x768_*.jpg in {a.data_dir}: run data_feed.py --data-dir there first")
    builds = {"base": load_build(a.base), "new": load_build(a.new)}
    first = [b.load_batch(paths[: a.batch], *BUCKET, flip=True) for b in builds.values()]
    if not (first[0] == first[1]).all():
        print("error: the two builds give different pixels", file=sys.stderr)
        return 1
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
    for _ in range(a.repeats):
        for name, native in builds.items():
            times[name].append(one_pass(native, paths, a.batch, a.threads))
    n = len(paths)
    print(f"{n} pictures, batch {a.batch}, threads {a.threads}, {a.repeats} interleaved passes")
    cpu_median = {k: statistics.median(c for _, c in v) * 1000 / n for k, v in times.items()}
    for name, v in times.items():
        print(
            f"{name:>4}: best wall {min(w for w, _ in v) * 1000 / n:.2f}  "
            f"best cpu {min(c for _, c in v) * 1000 / n:.2f}  "
            f"median cpu {cpu_median[name]:.2f} ms/img"
        )
    print(f"new / base median cpu: {cpu_median['new'] / cpu_median['base']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
