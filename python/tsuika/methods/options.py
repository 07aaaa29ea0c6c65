"""The wording of ``[method]`` option errors, on the one checker (:mod:`tsuika.checks`).

Every method's config validates its fields with :func:`check_options` against
a table of :class:`~tsuika.checks.Rule` s; errors name the field as
``method.<field>`` and are :class:`~tsuika.checks.CheckError` s (a
``ValueError``), which the config parser turns into a ``ConfigError``
naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tsuika import checks
from tsuika.checks import CheckError, Rule

SECTION = "method"


def option_error(field: str, problem: str) -> CheckError:
    """The error for a bad ``[method]`` option, naming it as ``method.<field>``."""
    return CheckError(f"{SECTION}.{field}", f"{SECTION}.{field}: {problem}")


def check_options(obj: Any, rules: Mapping[str, Rule]) -> None:
    """Check each field of a method config against its rule (``method.<field>`` in errors)."""
    checks.check_fields(obj, rules, SECTION)


def reject_unknown(method: str, table: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise when ``table`` holds keys outside ``allowed``, listing both."""
    checks.reject_unknown(table, allowed, SECTION, label=method)
