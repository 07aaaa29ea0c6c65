"""Shared helpers for the benchmarks in benches/: timing, tables, goals, machine facts.

Benchmarks report speed as a ratio against baselines run in the same process
(DESIGN.md, "Speed is measured in benches/"); these helpers keep that uniform.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass


def measure_round_robin(
    runs: Mapping[str, Callable[[], int]], repeats: int, log: Callable[[str], None]
) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, interleaved (a, b, c, a, b, c, ...).

    Interleaving spreads slow drifts of a shared machine over all paths alike.
    Each callable returns how many items it processed; the seconds are returned
    per name, one entry per repeat, in order.
    """
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            seconds[name].append(elapsed)
            log(f"  repeat {rep + 1}/{repeats} {name}: {elapsed:.3f} s")
    return seconds


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain fixed-width text table; the first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


@dataclass(frozen=True)
class Goal:
    """One target: ``value`` must be >= ``threshold`` (or <= with ``at_most``)."""

    name: str
    value: float | None
    threshold: float
    unit: str = "x"
    at_most: bool = False

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "N/A"
        ok = self.value <= self.threshold if self.at_most else self.value >= self.threshold
        return "PASS" if ok else "FAIL"

    def describe(self) -> str:
        op = "<=" if self.at_most else ">="
        got = "n/a" if self.value is None else f"{self.value:.2f}{self.unit}"
        return f"{self.verdict:4}  {self.name}: {got} (goal {op} {self.threshold:g}{self.unit})"

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "verdict": self.verdict}


def machine_info() -> dict[str, object]:
    """Facts that make a timing comparable: CPUs, Python, library versions, load, time."""
    info: dict[str, object] = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    for mod in ("numpy", "PIL", "cv2", "torch"):
        m = sys.modules.get(mod)
        if m is not None:
            info[f"{mod}_version"] = getattr(m, "__version__", "?")
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for row in f:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
