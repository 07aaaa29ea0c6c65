"""The method registry: ``[method] name`` -> a factory that builds the method.

A factory takes the ``[method]`` table without ``name`` (a plain dict) and
returns an object implementing :class:`tsuika.methods.base.Method`. It must
be cheap (no model loading): the config parser calls it once to validate the
table, and raises what the method's own config class raises.

Methods register lazily, so importing the registry imports no method::

    METHODS["lora"] = _lora            # def _lora(table): from ... import ...
    DEFAULT_FORMATS["lora"] = "kohya"  # used when [output] format is absent
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tsuika.errors import ConfigError
from tsuika.methods.base import Method

MethodFactory = Callable[[dict[str, Any]], Method]


def _lora(table: dict[str, Any]) -> Method:
    from tsuika.methods.lora import LoraConfig, LoraMethod

    return LoraMethod(LoraConfig.from_dict(table))


def _textual_inversion(table: dict[str, Any]) -> Method:
    from tsuika.methods.textual_inversion import build

    return build(table)


def _dreambooth(table: dict[str, Any]) -> Method:
    from tsuika.methods.dreambooth import build

    return build(table)


def _hypernetwork(table: dict[str, Any]) -> Method:
    from tsuika.methods.hypernetwork import HypernetworkConfig, HypernetworkMethod

    return HypernetworkMethod(HypernetworkConfig.from_dict(table))


METHODS: dict[str, MethodFactory] = {
    "lora": _lora,
    "textual_inversion": _textual_inversion,
    "dreambooth": _dreambooth,
    "hypernetwork": _hypernetwork,
}
DEFAULT_FORMATS: dict[str, str] = {
    "lora": "kohya",
    "textual_inversion": "a1111",
    "dreambooth": "diffusers+single",
    "hypernetwork": "a1111",
}


def register_method(name: str, factory: MethodFactory, default_format: str | None = None) -> None:
    """Add (or replace) a method under ``name``."""
    METHODS[name] = factory
    if default_format is not None:
        DEFAULT_FORMATS[name] = default_format


def build_method(name: str, table: dict[str, Any] | None = None) -> Method:
    """Build the method ``name`` from its ``[method]`` table (without ``name``)."""
    try:
        factory = METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}"
        ) from None
    return factory(dict(table or {}))


def validate_method_table(name: str, table: dict[str, Any], where: str = "config") -> None:
    """Raise :class:`tsuika.errors.ConfigError` naming ``method.<key>`` if the table is bad."""
    if name not in METHODS:
        raise ConfigError(
            f"{where}: method.name = {name!r} is not a registered method; "
            f"choose one of {', '.join(repr(n) for n in sorted(METHODS))}"
        )
    try:
        build_method(name, table)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        msg = str(exc)
        if not msg.startswith("method"):
            msg = f"[method] ({name}): {msg}"
        raise ConfigError(f"{where}: {msg}") from exc


def default_format(name: str) -> str | None:
    """The file format a method writes when ``[output] format`` is absent."""
    return DEFAULT_FORMATS.get(name)
