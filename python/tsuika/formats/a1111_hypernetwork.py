"""The AUTOMATIC1111 hypernetwork file, and its safetensors twin.

Facts from A1111's loader (``modules/hypernetworks/hypernetwork.py``,
``Hypernetwork.save`` / ``Hypernetwork.load`` / ``HypernetworkModule``):

* The ``.pt`` is a pickled dict. Integer keys are context widths (768 / 1024
  for cross-attention, 320 / 640 / 1280 for self-attention), each mapping to a
  pair ``(k_module_state_dict, v_module_state_dict)``. The other keys:
  ``layer_structure`` (default ``[1, 2, 1]``), ``activation_func`` (default
  ``None`` = no activation), ``is_layer_norm`` (``False``),
  ``weight_initialization`` (``"Normal"``), ``activate_output`` (``True`` when
  absent!), ``use_dropout`` (``False``), ``dropout_structure`` (derived when
  absent, :func:`parse_dropout_structure`), ``last_layer_dropout``
  (``False``), ``step``, ``name``, ``sd_checkpoint``, ``sd_checkpoint_name``,
  ``optional_info``. Anything else is ignored by A1111.
* A module is ``linear``, a ``Sequential`` built by :func:`layer_plan`; its
  state dict keys are ``linear.{index}.weight`` / ``.bias`` at the Sequential
  indices of the Linear and LayerNorm entries. Files from before that layout
  have ``linear1`` / ``linear2`` (two Linear layers), renamed to ``linear.0``
  / ``linear.1`` on reading (A1111's ``fix_old_state_dict``).

The safetensors form (tsuika's; A1111 reads only ``.pt``) holds tensors
``{dim}.k.linear.{index}.weight`` ... and every field above as a JSON string
in the header; other header keys are free-form training metadata.

Pickles are read only through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tsuika.atomic import atomic_write
from tsuika.errors import TsuikaError

# Fields of the file besides the layers, with A1111's defaults for absent ones.
FIELD_DEFAULTS: dict[str, Any] = {
    "layer_structure": [1, 2, 1],
    "activation_func": None,
    "is_layer_norm": False,
    "weight_initialization": "Normal",
    "activate_output": True,
    "use_dropout": False,
    "dropout_structure": None,
    "last_layer_dropout": False,
    "step": 0,
    "name": None,
    "sd_checkpoint": None,
    "sd_checkpoint_name": None,
}
OLD_KEYS = {
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
}
NO_ACTIVATION = (None, "linear")
ModuleState = dict[str, torch.Tensor]


class HypernetworkFileError(TsuikaError, ValueError):
    """A hypernetwork file (or state) that cannot be read; the message names the file and key."""


def parse_dropout_structure(
    layer_structure: Sequence[float], use_dropout: bool, last_layer_dropout: bool, rate: float = 0.3
) -> list[float]:
    """Dropout after each layer, as A1111's ``parse_dropout_structure`` derives it.

    ``[0, rate, ..., rate, rate if last_layer_dropout else 0, 0]`` (one entry
    per ``layer_structure`` entry; entry ``i + 1`` follows Linear ``i``), all
    zeros without dropout. A1111's rate is 0.3.
    """
    n = len(layer_structure)
    if not use_dropout:
        return [0.0] * n
    return [0.0] + [rate] * (n - 3) + [rate if last_layer_dropout else 0.0, 0.0]


@dataclass(frozen=True)
class HypernetworkStructure:
    """The shape of every module of a hypernetwork: what A1111 builds a module from."""

    layer_structure: tuple[float, ...] = (1, 2, 1)
    activation: str | None = "linear"
    layer_norm: bool = False
    activate_output: bool = False
    dropout_structure: tuple[float, ...] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        ls, ds = self.layer_structure, self.dropout_structure
        if len(ls) < 2 or ls[0] != 1 or ls[-1] != 1:
            raise ValueError(f"layer_structure must start and end with 1, got {list(ls)}")
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0 for x in ls):
            raise ValueError(f"layer_structure must hold numbers > 0, got {list(ls)}")
        if len(ds) != len(ls):
            raise ValueError(
                f"dropout_structure {list(ds)} must have one entry per layer_structure entry ({len(ls)})"
            )
        if any(not 0 <= p < 1 for p in ds) or ds[0] != 0 or ds[-1] != 0:
            raise ValueError(
                f"dropout_structure {list(ds)} must hold rates in [0, 1) and start and end with 0"
            )


@dataclass(frozen=True)
class PlanEntry:
    """One entry of a module's ``linear`` Sequential: ``linear``, ``activation``,
    ``layer_norm`` or ``dropout``."""

    kind: str
    fan_in: int = 0
    fan_out: int = 0
    activation: str | None = None
    rate: float = 0.0


def layer_plan(dim: int, s: HypernetworkStructure) -> list[PlanEntry]:
    """The Sequential A1111's ``HypernetworkModule.__init__`` builds, entry by entry.

    For each pair of ``layer_structure`` entries: a Linear
    ``int(dim * ls[i]) -> int(dim * ls[i + 1])``; the activation unless it is
    ``linear``/``None`` or this is the last Linear and not ``activate_output``;
    a LayerNorm when ``layer_norm``; a Dropout when ``dropout_structure[i + 1] > 0``.
    """
    ls, plan = s.layer_structure, []
    for i in range(len(ls) - 1):
        fan_in, fan_out = int(dim * ls[i]), int(dim * ls[i + 1])
        if fan_in < 1 or fan_out < 1:
            raise ValueError(f"layer_structure {list(ls)} gives an empty layer for dim {dim}")
        plan.append(PlanEntry("linear", fan_in, fan_out))
        last = i == len(ls) - 2
        if s.activation not in NO_ACTIVATION and (not last or s.activate_output):
            plan.append(PlanEntry("activation", activation=s.activation))
        if s.layer_norm:
            plan.append(PlanEntry("layer_norm", fan_out, fan_out))
        if s.dropout_structure[i + 1] > 0:
            plan.append(PlanEntry("dropout", rate=s.dropout_structure[i + 1]))
    return plan


def expected_shapes(dim: int, s: HypernetworkStructure) -> dict[str, tuple[int, ...]]:
    """``{state dict key: shape}`` of one module (``linear.{index}.weight`` / ``.bias``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for index, entry in enumerate(layer_plan(dim, s)):
        if entry.kind == "linear":
            shapes[f"linear.{index}.weight"] = (entry.fan_out, entry.fan_in)
            shapes[f"linear.{index}.bias"] = (entry.fan_out,)
        elif entry.kind == "layer_norm":
            shapes[f"linear.{index}.weight"] = (entry.fan_out,)
            shapes[f"linear.{index}.bias"] = (entry.fan_out,)
    return shapes


@dataclass
class HypernetworkFile:
    """A hypernetwork as stored: structure, ``{dim: (k_state, v_state)}`` and the A1111 fields."""

    structure: HypernetworkStructure
    layers: dict[int, tuple[ModuleState, ModuleState]]
    weight_initialization: str = "Normal"
    use_dropout: bool = False
    last_layer_dropout: bool = False
    step: int = 0
    name: str | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """The non-layer keys, in A1111's names, as plain Python values."""
        s = self.structure
        return {
            "layer_structure": list(s.layer_structure),
            "activation_func": s.activation,
            "is_layer_norm": s.layer_norm,
            "weight_initialization": self.weight_initialization,
            "activate_output": s.activate_output,
            "use_dropout": self.use_dropout,
            "dropout_structure": list(s.dropout_structure),
            "last_layer_dropout": self.last_layer_dropout,
            "step": self.step,
            "name": self.name,
            "sd_checkpoint": self.sd_checkpoint,
            "sd_checkpoint_name": self.sd_checkpoint_name,
        }


# --- validation ---------------------------------------------------------------------------


def _structure_from_fields(values: Mapping[str, Any], source: str) -> HypernetworkStructure:
    def get(key: str) -> Any:
        value = values.get(key)
        return FIELD_DEFAULTS[key] if value is None else value

    ls = get("layer_structure")
    if not isinstance(ls, (list, tuple)):
        raise HypernetworkFileError(f"{source}: layer_structure must be a list, got {ls!r}")
    for key in ("is_layer_norm", "activate_output", "use_dropout", "last_layer_dropout"):
        if not isinstance(get(key), bool):
            raise HypernetworkFileError(f"{source}: {key} must be a bool, got {get(key)!r}")
    activation = values.get("activation_func")
    if activation is not None and not isinstance(activation, str):
        raise HypernetworkFileError(f"{source}: activation_func must be a string or None")
    dropout = values.get("dropout_structure")
    if dropout is None:
        dropout = parse_dropout_structure(ls, get("use_dropout"), get("last_layer_dropout"))
    if not isinstance(dropout, (list, tuple)):
        raise HypernetworkFileError(f"{source}: dropout_structure must be a list, got {dropout!r}")
    try:
        return HypernetworkStructure(
            layer_structure=tuple(ls),
            activation=activation,
            layer_norm=get("is_layer_norm"),
            activate_output=get("activate_output"),
            dropout_structure=tuple(float(p) for p in dropout),
        )
    except (TypeError, ValueError) as exc:
        raise HypernetworkFileError(f"{source}: {exc}") from None


def check_module_state(
    state: Any, dim: int, structure: HypernetworkStructure, where: str
) -> ModuleState:
    """One module's state dict, old ``linear1``/``linear2`` keys renamed, checked against the
    structure: exactly the expected keys, their shapes, floating point and finite values."""
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise HypernetworkFileError(f"{where}: expected a state dict, got {type(state).__name__}")
    state = {OLD_KEYS.get(k, k): v for k, v in state.items()}
    try:
        shapes = expected_shapes(dim, structure)
    except ValueError as exc:
        raise HypernetworkFileError(f"{where}: {exc}") from None
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise HypernetworkFileError(
            f"{where}: keys do not match layer_structure {list(structure.layer_structure)} "
            f"(layer_norm={structure.layer_norm}); missing {missing}, unexpected {unexpected}"
        )
    for key, shape in shapes.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise HypernetworkFileError(f"{where}: {key} must be a floating-point tensor")
        if tuple(value.shape) != shape:
            raise HypernetworkFileError(
                f"{where}: {key} has shape {tuple(value.shape)}, expected {shape}"
            )
        if not bool(torch.isfinite(value).all()):
            raise HypernetworkFileError(f"{where}: {key} holds NaN or infinite values")
    return state


def _check_dim(key: Any, source: str) -> int:
    if isinstance(key, bool) or not isinstance(key, int) or key < 1:
        raise HypernetworkFileError(f"{source}: layer key {key!r} must be a positive integer")
    return key


def parse_hypernetwork(
    layers: Mapping[int, Any], values: Mapping[str, Any], source: str
) -> HypernetworkFile:
    """Check ``{dim: (k_state, v_state)}`` plus the A1111 fields; build a :class:`HypernetworkFile`."""
    if values.get("skip_connection"):
        raise HypernetworkFileError(
            f"{source}: skip_connection hypernetworks (an extension's variant) are not supported"
        )
    structure = _structure_from_fields(values, source)
    if not layers:
        raise HypernetworkFileError(f"{source}: no layers (integer keys) in the file")
    checked: dict[int, tuple[ModuleState, ModuleState]] = {}
    for key, pair in layers.items():
        dim = _check_dim(key, source)
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise HypernetworkFileError(
                f"{source}: layer {dim} must be a (k, v) pair of state dicts"
            )
        checked[dim] = (
            check_module_state(pair[0], dim, structure, f"{source}: layer {dim} k"),
            check_module_state(pair[1], dim, structure, f"{source}: layer {dim} v"),
        )
    step = values.get("step") or 0
    if isinstance(step, bool) or not isinstance(step, int):
        raise HypernetworkFileError(f"{source}: step must be an integer, got {step!r}")
    for key in ("name", "sd_checkpoint", "sd_checkpoint_name", "weight_initialization"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise HypernetworkFileError(f"{source}: {key} must be a string or None")
    return HypernetworkFile(
        structure=structure,
        layers=dict(sorted(checked.items())),
        weight_initialization=values.get("weight_initialization") or "Normal",
        use_dropout=any(p > 0 for p in structure.dropout_structure)
        or bool(values.get("use_dropout", False)),
        last_layer_dropout=bool(values.get("last_layer_dropout", False)),
        step=step,
        name=values.get("name"),
        sd_checkpoint=values.get("sd_checkpoint"),
        sd_checkpoint_name=values.get("sd_checkpoint_name"),
        metadata=_metadata(values.get("metadata")),
    )


def _metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


# --- writing ------------------------------------------------------------------------------


def _plain(state: Mapping[str, torch.Tensor]) -> ModuleState:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_a1111_hypernetwork(path: str | os.PathLike, hf: HypernetworkFile) -> Path:
    """Write the A1111 ``.pt``: only dicts, lists, tuples, strings, numbers and tensors, so
    ``torch.load(weights_only=True)`` reads it. Training metadata goes under ``metadata``."""
    data: dict[Any, Any] = {dim: (_plain(k), _plain(v)) for dim, (k, v) in hf.layers.items()}
    data.update(hf.fields())
    data["optional_info"] = "trained with tsuika"
    data["metadata"] = {str(k): str(v) for k, v in hf.metadata.items()}
    return atomic_write(Path(path), lambda tmp: torch.save(data, tmp))


def save_safetensors_hypernetwork(path: str | os.PathLike, hf: HypernetworkFile) -> Path:
    """Write ``{dim}.k.linear.{i}.weight`` ... with the A1111 fields as JSON in the header."""
    from safetensors.torch import save_file

    tensors = flat_state(hf.layers)
    header = {str(k): str(v) for k, v in hf.metadata.items() if k not in FIELD_DEFAULTS}
    header.update({key: json.dumps(value) for key, value in hf.fields().items()})
    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))


def flat_state(layers: Mapping[int, tuple[ModuleState, ModuleState]]) -> dict[str, torch.Tensor]:
    """``{dim: (k, v)}`` -> ``{"{dim}.k.linear.0.weight": tensor, ...}`` (cloned, CPU)."""
    out: dict[str, torch.Tensor] = {}
    for dim, pair in layers.items():
        for side, state in zip("kv", pair, strict=True):
            out.update({f"{dim}.{side}.{key}": t for key, t in _plain(state).items()})
    return out


def unflatten_state(
    tensors: Mapping[str, torch.Tensor], source: str
) -> dict[int, tuple[ModuleState, ModuleState]]:
    """Invert :func:`flat_state`; keys that are not ``{dim}.{k|v}.{key}`` are an error."""
    parts: dict[int, tuple[ModuleState, ModuleState]] = {}
    for name, tensor in tensors.items():
        dim_text, _, rest = name.partition(".")
        side, _, key = rest.partition(".")
        if not dim_text.isdigit() or side not in ("k", "v") or not key:
            raise HypernetworkFileError(
                f"{source}: tensor key {name!r} is not '{{dim}}.k.<key>' or '{{dim}}.v.<key>'"
            )
        pair = parts.setdefault(int(dim_text), ({}, {}))
        pair[0 if side == "k" else 1][key] = tensor
    return parts


# --- reading ------------------------------------------------------------------------------


def _read_pt(path: Path) -> tuple[dict[int, Any], dict[str, Any]]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise HypernetworkFileError(
            f"{path}: refused: the pickle holds Python objects other than tensors and plain "
            f"values, and tsuika only reads pickles with torch.load(weights_only=True) "
            f"({str(exc).splitlines()[0] if str(exc) else 'unpickling failed'})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise HypernetworkFileError(f"{path}: not a readable torch file ({exc})") from None
    if not isinstance(data, dict):
        raise HypernetworkFileError(f"{path}: expected a dict, got {type(data).__name__}")
    layers = {k: v for k, v in data.items() if not isinstance(k, str)}
    values = {k: v for k, v in data.items() if isinstance(k, str)}
    return layers, values


def _read_safetensors(path: Path) -> tuple[dict[int, Any], dict[str, Any]]:
    from safetensors import SafetensorError

    from tsuika.formats.safetensors_check import SafetensorsHeaderError, safe_open_checked

    try:
        with safe_open_checked(path) as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorsHeaderError as exc:
        raise HypernetworkFileError(str(exc)) from None
    except (SafetensorError, OSError) as exc:
        raise HypernetworkFileError(f"{path}: not a readable safetensors file ({exc})") from None
    values: dict[str, Any] = {}
    for key in FIELD_DEFAULTS:
        if key in header:
            try:
                values[key] = json.loads(header[key])
            except json.JSONDecodeError:
                raise HypernetworkFileError(
                    f"{path}: header field {key!r} is not JSON: {header[key]!r}"
                ) from None
    values["metadata"] = {k: v for k, v in header.items() if k not in FIELD_DEFAULTS}
    return unflatten_state(tensors, str(path)), values


READERS: dict[str, Callable[[Path], tuple[dict[int, Any], dict[str, Any]]]] = {
    ".pt": _read_pt,
    ".safetensors": _read_safetensors,
}
WRITERS: dict[str, Callable[[str | os.PathLike, HypernetworkFile], Path]] = {
    "a1111": save_a1111_hypernetwork,
    "safetensors": save_safetensors_hypernetwork,
}
EXTENSIONS = {"a1111": ".pt", "safetensors": ".safetensors"}


def load_hypernetwork_file(path: str | os.PathLike) -> HypernetworkFile:
    """Read and check a ``.pt`` (A1111) or ``.safetensors`` hypernetwork.

    Raises :class:`HypernetworkFileError` naming the file and key for unknown
    suffixes, refused pickles, keys or shapes that do not match the layer
    structure, and non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hypernetwork file not found: {path}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise HypernetworkFileError(
            f"{path}: unknown hypernetwork file type {path.suffix!r}; expected {', '.join(READERS)}"
        )
    layers, values = reader(path)
    return parse_hypernetwork(layers, values, str(path))
