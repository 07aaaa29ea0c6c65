"""The one checker for user-written tables: run config, method options, dataset TOML.

A :class:`Rule` says what one key may hold (a type, choices, bounds); a
:class:`Wording` says how a broken rule reads in one place. The three places
keep their own wording (the messages users and tests know) and share the
check itself:

* ``[section]`` keys of the run config (``tsuika.config``):
  ``training.steps must be an integer, got str 'ten'``;
* ``[method]`` options (``tsuika.methods.options``):
  ``method.rank: must be >= 1, got 0``;
* dataset TOML keys (``tsuika.data.dataset_toml``):
  ``subsets[0].num_repeats has the wrong type (str: '3')``.

A failure raises :class:`CheckError` (a :class:`~tsuika.errors.TsuikaError`
and a ``ValueError``) whose ``key`` is the dotted name; callers that know the
file put its name in front. Only the standard library and ``tsuika.errors``
are imported, so every layer may use this module.
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsuika.errors import TsuikaError


class CheckError(TsuikaError, ValueError):
    """A value that breaks its rule; ``key`` is its dotted name, the message says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Rule:
    """What one key may hold.

    ``type`` is a type hint: ``bool``, ``int``, ``float`` (an int is accepted),
    ``str``, ``Path`` (a string), ``list[X]``, ``X | None``, or a tuple of
    types (any of them). ``low``/``high`` bound numbers (``open_low``: the bound
    itself is refused); ``finite`` refuses NaN and infinities; ``nonempty``
    refuses blank strings; ``choices`` lists the allowed values.
    """

    type: Any
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    finite: bool = False
    nonempty: bool = False


@dataclass(frozen=True)
class Wording:
    """How a broken rule reads. Templates are ``str.format`` strings over
    ``key``, ``value``, ``got`` (the value's Python type), ``expected`` (from
    ``type_names``), ``allowed``, ``bound``, ``keys``, ``dotted``,
    ``section`` and ``label``. ``interval``: a two-sided bound reads
    ``in [0, 1)`` instead of the side that failed."""

    wrong_type: str
    bad_choice: str
    out_of_bounds: str
    unknown_keys: str
    empty: str = "{key}: must be a non-empty string, got {value!r}"
    type_names: Mapping[Any, str] = field(default_factory=dict)
    interval: bool = False


TYPE_NAMES: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    Path: "a path (string)",
}

# [method] options (and anything without a wording of its own).
OPTION_WORDING = Wording(
    wrong_type="{key}: must be {expected}, got {value!r}",
    bad_choice="{key}: must be one of {allowed}, got {value!r}",
    out_of_bounds="{key}: must be {bound}, got {value}",
    unknown_keys="{section}: unknown {label} option(s) {keys}; allowed: {allowed}",
    type_names=TYPE_NAMES,
    interval=True,
)


# --------------------------------------------------------------------------- types


def optional_inner(hint: Any) -> Any | None:
    """``X`` for ``X | None`` (or ``Optional[X]``), else None."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        if type(None) in args:
            rest = [a for a in args if a is not type(None)]
            return rest[0] if len(rest) == 1 else tuple(rest)
    return None


def _is_instance(value: Any, hint: Any) -> bool:
    """``value`` fits ``hint`` (top level only; list items are checked one by one)."""
    if isinstance(hint, tuple):
        return any(_is_instance(value, h) for h in hint)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return isinstance(value, origin)
    if hint is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):  # True is an int to Python, not to a TOML reader
        return False
    if hint is float:
        return isinstance(value, int | float)
    if hint is Path:
        return isinstance(value, str | os.PathLike)
    return isinstance(value, hint)


def type_name(hint: Any, names: Mapping[Any, str] = TYPE_NAMES) -> str:
    """How ``hint`` reads in a message: ``an integer``, ``a list of a string``..."""
    inner = optional_inner(hint)
    if inner is not None:
        return type_name(inner, names)
    if isinstance(hint, tuple):
        return " or ".join(type_name(h, names) for h in hint)
    if typing.get_origin(hint) is list:
        return f"a list of {type_name(typing.get_args(hint)[0], names)}"
    return names.get(hint) or TYPE_NAMES.get(hint) or getattr(hint, "__name__", str(hint))


# --------------------------------------------------------------------------- check


def _fail(template: str, key: str, **fields: Any) -> CheckError:
    return CheckError(key, template.format(key=key, **fields))


def _num(x: float) -> str:
    """A bound as users write it: ``1`` for 1.0, ``0.9``, ``1e-08``."""
    return str(int(x)) if float(x).is_integer() else repr(x)


def _bound_text(rule: Rule, value: float, interval: bool) -> str | None:
    """What ``value`` should be (``>= 1``, ``in [0, 1)``, ``a finite number > 0``),
    or None when it keeps the bounds."""
    low, high = rule.low, rule.high
    too_low = low is not None and not (value > low if rule.open_low else value >= low)
    too_high = high is not None and not (value < high if rule.open_high else value <= high)
    if not (too_low or too_high or (rule.finite and not math.isfinite(value))):
        return None
    low_text = f"{'>' if rule.open_low else '>='} {_num(low)}" if low is not None else ""
    high_text = f"{'<' if rule.open_high else '<='} {_num(high)}" if high is not None else ""
    if low is not None and high is not None and interval:
        text = (
            f"in {'(' if rule.open_low else '['}{_num(low)}, "
            f"{_num(high)}{')' if rule.open_high else ']'}"
        )
    else:
        text = high_text if too_high or low is None else low_text
    return " ".join(filter(None, ["a finite number" if rule.finite else "", text]))


def check(key: str, value: Any, rule: Rule, wording: Wording = OPTION_WORDING) -> None:
    """Raise :class:`CheckError` naming ``key`` if ``value`` breaks ``rule``."""
    hint = rule.type
    inner = optional_inner(hint)
    if inner is not None:
        if value is None:
            return
        hint = inner
    if not _is_instance(value, hint):
        expected = type_name(hint, wording.type_names)
        raise _fail(
            wording.wrong_type, key, value=value, got=type(value).__name__, expected=expected
        )
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        for i, v in enumerate(value):
            check(f"{key}[{i}]", v, Rule(item), wording)
        return
    if rule.choices is not None and value not in rule.choices:
        allowed = ", ".join(repr(c) for c in rule.choices)
        raise _fail(wording.bad_choice, key, value=value, allowed=allowed)
    if rule.nonempty and isinstance(value, str) and not value.strip():
        raise _fail(wording.empty, key, value=value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        bound = _bound_text(rule, value, wording.interval)
        if bound is not None:
            raise _fail(wording.out_of_bounds, key, value=value, bound=bound)


def check_fields(obj: Any, rules: Mapping[str, Rule], section: str = "method") -> None:
    """Check the attributes of a config object, each named ``section.<name>``."""
    for name, rule in rules.items():
        check(f"{section}.{name}", getattr(obj, name), rule)


def reject_unknown(
    table: Mapping[str, Any],
    allowed: Iterable[str],
    section: str,
    wording: Wording = OPTION_WORDING,
    label: str = "",
) -> None:
    """Raise :class:`CheckError` when ``table`` holds keys outside ``allowed``, listing both."""
    allowed = list(allowed)
    unknown = [k for k in table if k not in allowed]
    if not unknown:
        return
    unknown = sorted(unknown)
    dotted = ", ".join(f"{section}.{k}" if section else k for k in unknown)
    raise CheckError(
        f"{section}.{unknown[0]}" if section else unknown[0],
        wording.unknown_keys.format(
            section=section,
            label=label or section,
            keys=", ".join(unknown),
            dotted=dotted,
            allowed=", ".join(allowed),
        ),
    )


def check_table(
    table: Mapping[str, Any],
    rules: Mapping[str, Rule],
    section: str,
    wording: Wording = OPTION_WORDING,
) -> dict[str, Any]:
    """``table`` checked key by key against ``rules`` (unknown keys refused); a copy back."""
    reject_unknown(table, rules, section, wording)
    for key, value in table.items():
        check(f"{section}.{key}" if section else key, value, rules[key], wording)
    return dict(table)
