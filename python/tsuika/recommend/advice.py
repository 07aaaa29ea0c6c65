"""What recommend says besides settings: dataset problems, size warnings, combinations.

Messages are the templates of :data:`tsuika.recommend.rules.PROBLEMS`,
:data:`~tsuika.recommend.rules.SIZE_RULES` and
:data:`~tsuika.recommend.rules.COMBINATIONS`; each check here is one small
function in :data:`CHECKS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import rules as R
from .inspect import DatasetFacts

Check = Callable[[DatasetFacts, int], "dict[str, Any] | None"]


def _problem(kind: str, **values: Any) -> dict[str, str]:
    return {"kind": kind, "message": R.PROBLEMS[kind].format(**values)}


def _duplicates(f: DatasetFacts, res: int) -> dict[str, str] | None:
    if f.unique == 1 and f.images > 1:
        return _problem("only_duplicates")
    if f.duplicate_share > R.DUPLICATE_SHARE:
        dups = f.images - f.unique
        return _problem(
            "duplicates", dups=dups, images=f.images, share=f.duplicate_share, unique=f.unique
        )
    return None


def _small(f: DatasetFacts, res: int) -> dict[str, str] | None:
    return _problem("small", small=f.small, unique=f.unique, res=res) if f.small else None


def _single_buckets(f: DatasetFacts, res: int) -> dict[str, str] | None:
    n = f.single_buckets
    return _problem("single_buckets", n=n) if n and len(f.buckets) > 1 else None


def _captions(f: DatasetFacts, res: int) -> dict[str, str] | None:
    if f.captioned == 0:
        return _problem("no_captions")
    if f.identifier is None:
        return _problem("no_identifier")
    if f.with_identifier < f.captioned:
        return _problem(
            "identifier_missing",
            identifier=f.identifier,
            n=f.with_identifier,
            captioned=f.captioned,
        )
    return None


def _unreadable(f: DatasetFacts, res: int) -> dict[str, str] | None:
    if not f.unreadable:
        return None
    return _problem("unreadable", n=len(f.unreadable), first=f.unreadable[0])


CHECKS: tuple[Check, ...] = (_unreadable, _duplicates, _small, _single_buckets, _captions)


def dataset_problems(facts: DatasetFacts, resolution: int) -> list[dict[str, str]]:
    """Every problem the checks find, in a fixed order."""
    return [p for check in CHECKS if (p := check(facts, resolution)) is not None]


def size_problems(method: str, unique: int) -> list[dict[str, str]]:
    """A warning when ``unique`` pictures are too few or too many for ``method``."""
    rule = R.SIZE_RULES[method]
    if unique < rule.low:
        return [{"kind": "too_few", "message": f"{unique} picture(s): {rule.too_few}"}]
    if rule.high is not None and unique > rule.high:
        return [{"kind": "too_many", "message": f"{unique} pictures: {rule.too_many}"}]
    return []


def combinations(purpose: str, unique: int) -> list[dict[str, Any]]:
    """The combinations that help for ``purpose`` with ``unique`` pictures."""
    return [
        {"methods": list(c.methods), "weights": list(c.weights), "reason": c.reason}
        for c in R.COMBINATIONS
        if purpose in c.purposes and unique >= c.min_images
    ]
