"""Hypernetwork settings: one dataclass, validated when built, errors naming the field."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import torch

from tsuika.checks import Rule, check
from tsuika.formats.a1111_hypernetwork import HypernetworkStructure, parse_dropout_structure
from tsuika.methods.options import check_options, reject_unknown
from tsuika.methods.options import option_error as _fail

from .modules import ACTIVATIONS, INITIALIZATIONS

A1111_DROPOUT_RATE = 0.3  # what A1111 uses when dropout is on
SD1_DIMS = (768, 320, 640, 1280)
# The plain fields' rules; dims, layer_structure and dropout have checks of their own.
RULES = {name: Rule(bool) for name in ("layer_norm", "activate_output", "last_layer_dropout")}


def _choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """``value`` matched case-insensitively against ``allowed``; the allowed spelling back."""
    by_lower = {a.lower(): a for a in allowed}
    if isinstance(value, str):
        value = by_lower.get(value.lower(), value)
    check(f"method.{name}", value, Rule(str, choices=tuple(by_lower.values())))
    return value


@dataclass
class HypernetworkConfig:
    """What a hypernetwork trains (A1111's names in brackets).

    * ``dims``: the context widths that get a (K, V) module pair [enable_sizes]:
      768 (SD 1.x text states; 1024 for SD 2.x) and 320 / 640 / 1280 (the UNet's
      self-attention widths). ``"auto"``: every context width the UNet has.
      A width that no attention of the model has is an error in ``prepare``.
    * ``layer_structure`` [layer_structure]: widths of each module's layers as
      multiples of ``dim``; starts and ends with 1.
    * ``activation`` [activation_func]: one of :data:`ACTIVATIONS` (A1111's
      ``swish`` is Hardswish; ``silu`` is SiLU).
    * ``layer_norm`` [is_layer_norm]: a LayerNorm after every Linear.
    * ``dropout``: ``false``/``0`` = off; ``true`` = on at A1111's rate 0.3; a
      number in (0, 1) = on at that rate [use_dropout + dropout_structure]. As in
      A1111, dropout follows hidden layers only; the one after the last hidden
      layer only with ``last_layer_dropout`` (default true, A1111's default).
    * ``initialization`` [weight_initialization]: one of :data:`INITIALIZATIONS`.
      The last layer of every module always starts at zero, so an untrained
      hypernetwork leaves the model unchanged.
    * ``activate_output`` [activate_output]: the activation after the last
      Linear too (it must map 0 to 0 unless ``layer_norm`` is on).
    """

    dims: tuple[int, ...] | str = SD1_DIMS
    layer_structure: tuple[float, ...] = (1, 2, 1)
    activation: str = "linear"
    layer_norm: bool = False
    dropout: bool | float = False
    initialization: str = "Normal"
    activate_output: bool = False
    last_layer_dropout: bool = True

    def __post_init__(self) -> None:
        self._check_dims()
        self.activation = _choice("activation", self.activation, ACTIVATIONS)
        self.initialization = _choice("initialization", self.initialization, INITIALIZATIONS)
        check_options(self, RULES)
        self._check_layer_structure()
        self._check_dropout()
        self._check_identity_at_start()

    def _check_dims(self) -> None:
        dims = self.dims
        if dims == "auto":
            return
        if isinstance(dims, str) or not isinstance(dims, (list, tuple)) or not dims:
            raise _fail("dims", f'must be a list of context widths or "auto", got {dims!r}')
        bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, int) or d < 1]
        if bad:
            raise _fail("dims", f"must hold positive integers, got {bad}")
        if len(set(dims)) != len(dims):
            raise _fail("dims", f"holds a width twice: {list(dims)}")
        self.dims = tuple(dims)

    def _check_layer_structure(self) -> None:
        ls = self.layer_structure
        if isinstance(ls, str) or not isinstance(ls, (list, tuple)) or len(ls) < 2:
            raise _fail("layer_structure", f"must be a list of at least 2 numbers, got {ls!r}")
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0 for x in ls):
            raise _fail("layer_structure", f"must hold numbers > 0, got {list(ls)}")
        if ls[0] != 1 or ls[-1] != 1:
            raise _fail("layer_structure", f"must start and end with 1, got {list(ls)}")
        self.layer_structure = tuple(ls)

    def _check_dropout(self) -> None:
        p = self.dropout
        if not isinstance(p, bool) and (not isinstance(p, (int, float)) or not 0 <= p < 1):
            raise _fail("dropout", f"must be true, false or a rate in [0, 1), got {p!r}")
        if self.dropout_rate > 0 and not any(self.dropout_structure()):
            raise _fail(
                "dropout",
                f"is on, but layer_structure {list(self.layer_structure)} with "
                "last_layer_dropout = false has no hidden layer to drop out after",
            )

    def _check_identity_at_start(self) -> None:
        if self.activate_output and not self.layer_norm:
            at_zero = ACTIVATIONS[self.activation]()(torch.zeros(1)).item()
            if at_zero != 0:
                raise _fail(
                    "activate_output",
                    f"{self.activation}(0) = {at_zero:g}, so an untrained hypernetwork would "
                    "change the model; turn activate_output off or layer_norm on",
                )

    @property
    def dropout_rate(self) -> float:
        if isinstance(self.dropout, bool):
            return A1111_DROPOUT_RATE if self.dropout else 0.0
        return float(self.dropout)

    def dropout_structure(self) -> list[float]:
        rate = self.dropout_rate
        return parse_dropout_structure(
            self.layer_structure, rate > 0, self.last_layer_dropout, rate or A1111_DROPOUT_RATE
        )

    def structure(self) -> HypernetworkStructure:
        return HypernetworkStructure(
            layer_structure=self.layer_structure,
            activation=self.activation,
            layer_norm=self.layer_norm,
            activate_output=self.activate_output,
            dropout_structure=tuple(self.dropout_structure()),
        )

    def resolve_dims(self, widths: Iterable[int]) -> list[int]:
        """The dims to build for a UNet whose attentions read contexts of ``widths``."""
        have = sorted(set(widths))
        if self.dims == "auto":
            return have
        unknown = [d for d in self.dims if d not in have]
        if unknown:
            raise _fail(
                "dims",
                f"{unknown} match no attention of this model; its context widths are {have} "
                '(set dims to a subset of them, or "auto")',
            )
        return sorted(self.dims)

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> HypernetworkConfig:
        """Build from a ``[method]`` table without ``name``; unknown keys are an error."""
        reject_unknown("hypernetwork", table, [f.name for f in fields(cls)])
        return cls(**table)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["dims"] = self.dims if isinstance(self.dims, str) else list(self.dims)
        out["layer_structure"] = list(self.layer_structure)
        return out
