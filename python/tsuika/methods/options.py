"""Checks shared by the methods' ``[method]`` option tables: errors that name
``method.<field>``, and the refusal of keys a method does not know."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def option_error(field: str, problem: str) -> ValueError:
    """The error for a bad ``[method]`` option, naming it as ``method.<field>``."""
    return ValueError(f"method.{field}: {problem}")


def reject_unknown(method: str, table: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise when ``table`` holds keys outside ``allowed``, listing both."""
    allowed = list(allowed)
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ValueError(
            f"method: unknown {method} option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed)}"
        )
