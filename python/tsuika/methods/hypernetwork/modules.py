"""Hypernetwork modules in AUTOMATIC1111's layout: ``x + linear(x) * multiplier``.

A :class:`HypernetworkModule` holds ``linear``, a ``Sequential`` built entry by
entry from :func:`tsuika.formats.a1111_hypernetwork.layer_plan`, so its state
dict keys are exactly A1111's (``linear.{index}.weight`` / ``.bias``). A
:class:`Hypernetwork` holds one (K, V) pair of modules per context width.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from tsuika.formats.a1111_hypernetwork import (
    NO_ACTIVATION,
    HypernetworkFile,
    HypernetworkFileError,
    HypernetworkStructure,
    ModuleState,
    PlanEntry,
    check_module_state,
    flat_state,
    layer_plan,
    unflatten_state,
)

# The activations tsuika trains with (A1111's names; "swish" is Hardswish there).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "silu": nn.SiLU,
}


def _kaiming_nonlinearity(activation: str | None) -> str:
    return "leaky_relu" if activation == "leakyrelu" else "relu"


# Linear weight initialisations (A1111's names); biases start at zero in every case.
INITIALIZATIONS: dict[str, Callable[[torch.Tensor, str | None], object]] = {
    "Normal": lambda w, act: nn.init.normal_(w, mean=0.0, std=0.01),
    "XavierUniform": lambda w, act: nn.init.xavier_uniform_(w),
    "XavierNormal": lambda w, act: nn.init.xavier_normal_(w),
    "KaimingUniform": lambda w, act: nn.init.kaiming_uniform_(
        w, nonlinearity=_kaiming_nonlinearity(act)
    ),
    "KaimingNormal": lambda w, act: nn.init.kaiming_normal_(
        w, nonlinearity=_kaiming_nonlinearity(act)
    ),
}


def activation_class(name: str) -> type[nn.Module]:
    """The module class for an activation name.

    Our registry first; then, as A1111 does for files, any parameter-free class
    of ``torch.nn.modules.activation`` by its lower-cased name.
    """
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]
    found = {
        cls_name.lower(): cls
        for cls_name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
        if cls.__module__ == "torch.nn.modules.activation"
    }.get(name)
    try:
        ok = found is not None and not list(found().parameters())
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"unsupported activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return found  # type: ignore[return-value]


def _build(entry: PlanEntry) -> nn.Module:
    if entry.kind == "linear":
        return nn.Linear(entry.fan_in, entry.fan_out)
    if entry.kind == "activation":
        return activation_class(str(entry.activation))()
    if entry.kind == "layer_norm":
        return nn.LayerNorm(entry.fan_out)
    return nn.Dropout(p=entry.rate)


class HypernetworkModule(nn.Module):
    """``x + linear(x) * multiplier``; in training mode the multiplier is 1 (as A1111)."""

    def __init__(self, dim: int, structure: HypernetworkStructure) -> None:
        super().__init__()
        self.dim = dim
        self.structure = structure
        self.linear = nn.Sequential(*(_build(e) for e in layer_plan(dim, structure)))
        self.multiplier = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta(x)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``linear(x) * multiplier`` (multiplier 1 in training mode)."""
        return self.linear(x) * (1.0 if self.training else self.multiplier)

    @torch.no_grad()
    def initialize(self, initialization: str) -> None:
        """A1111's initialisation, then the last Linear/LayerNorm zeroed (weight and bias).

        Linear weights: ``initialization``; LayerNorm weights: Normal(0, 0.01)
        (A1111's rule); all biases 0. Zeroing the last parametrised layer makes
        ``linear(x)`` exactly 0 (given ``activation(0) == 0`` after a last
        Linear; :class:`HypernetworkConfig` checks it), so an untrained
        hypernetwork is the identity.
        """
        try:
            init_weight = INITIALIZATIONS[initialization]
        except KeyError:
            raise ValueError(
                f"unknown initialization {initialization!r}; choose one of "
                f"{', '.join(INITIALIZATIONS)}"
            ) from None
        layers = [m for m in self.linear if isinstance(m, (nn.Linear, nn.LayerNorm))]
        for layer in layers:
            if isinstance(layer, nn.LayerNorm):
                nn.init.normal_(layer.weight, mean=0.0, std=0.01)
            else:
                init_weight(layer.weight, self.structure.activation)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(layers[-1].weight)


class Hypernetwork(nn.Module):
    """One (K, V) pair of :class:`HypernetworkModule` per context width."""

    def __init__(self, dims: Iterable[int], structure: HypernetworkStructure) -> None:
        super().__init__()
        self.structure = structure
        self.layers = nn.ModuleDict(
            {
                str(d): nn.ModuleList(
                    [HypernetworkModule(d, structure), HypernetworkModule(d, structure)]
                )
                for d in sorted(set(dims))
            }
        )

    @property
    def dims(self) -> list[int]:
        return [int(d) for d in self.layers]

    def pair(self, dim: int) -> tuple[HypernetworkModule, HypernetworkModule]:
        k, v = self.layers[str(dim)]
        return k, v  # type: ignore[return-value]

    def all_modules(self) -> list[HypernetworkModule]:
        return [m for pair in self.layers.values() for m in pair]  # type: ignore[misc]

    @property
    def strength(self) -> float:
        """The multiplier every module applies in eval mode (inference strength)."""
        return self.all_modules()[0].multiplier if self.layers else 1.0

    @strength.setter
    def strength(self, value: float) -> None:
        for module in self.all_modules():
            module.multiplier = float(value)

    def initialize(self, initialization: str) -> None:
        for module in self.all_modules():
            module.initialize(initialization)

    def module_states(self) -> dict[int, tuple[ModuleState, ModuleState]]:
        """``{dim: (k_state_dict, v_state_dict)}`` as A1111 stores them (live tensors)."""
        return {d: (k.state_dict(), v.state_dict()) for d, (k, v) in self._pairs()}

    def flat_state(self) -> dict[str, torch.Tensor]:
        """``{"{dim}.k.linear.0.weight": tensor, ...}``, cloned on the CPU."""
        return flat_state(self.module_states())

    def load_module_states(
        self, layers: Mapping[int, tuple[Mapping[str, torch.Tensor], ...]], source: str
    ) -> None:
        """Load ``{dim: (k, v)}`` strictly: the same widths, keys and shapes, finite values."""
        if sorted(layers) != self.dims:
            raise HypernetworkFileError(
                f"{source}: widths {sorted(layers)} do not match the hypernetwork's {self.dims}"
            )
        for dim, (k, v) in self._pairs():
            for side, module, state in (("k", k, layers[dim][0]), ("v", v, layers[dim][1])):
                checked = check_module_state(state, dim, self.structure, f"{source}: {dim}.{side}")
                module.load_state_dict(checked, strict=True)

    def load_flat_state(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        self.load_module_states(unflatten_state(state, source), source)

    @classmethod
    def from_file(cls, hf: HypernetworkFile, source: str = "hypernetwork file") -> Hypernetwork:
        """Build modules with the file's structure and load its layers strictly."""
        if hf.structure.activation not in NO_ACTIVATION:
            try:
                activation_class(hf.structure.activation)
            except ValueError as exc:
                raise HypernetworkFileError(f"{source}: activation_func: {exc}") from None
        net = cls(hf.layers, hf.structure)
        net.load_module_states(hf.layers, source)
        return net

    def _pairs(self) -> list[tuple[int, tuple[HypernetworkModule, HypernetworkModule]]]:
        return [(d, self.pair(d)) for d in self.dims]
