"""Optimizers and learning-rate schedules, looked up by name in registries.

Optimizers that live in optional pip packages are imported when built; a
missing package gives an error that names what to ``pip install``.

The schedules are the multiplier curves of ``transformers``/``diffusers``
``optimization.py`` (linear warmup, then the named decay), written as pure
functions of the step so that a restored ``LambdaLR`` continues exactly where
it stopped. Warmup step ``s`` uses ``(s+1)/(warmup+1)`` so no step has lr 0.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tsuika.errors import MissingPackageError


@dataclass(frozen=True)
class OptimizerSpec:
    """Where an optimizer class lives and which pip package provides it."""

    module: str
    attr: str
    package: str | None = None  # pip package; None = torch itself
    extra: tuple[tuple[str, Any], ...] = ()


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec("torch.optim", "AdamW"),
    "adamw8bit": OptimizerSpec("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    "lion": OptimizerSpec("lion_pytorch", "Lion", "lion-pytorch"),
    # Prodigy estimates the step size itself; learning_rate is a multiplier (1.0 usual).
    "prodigy": OptimizerSpec("prodigyopt", "Prodigy", "prodigyopt"),
}


def check_optimizer_name(name: str) -> None:
    """Raise ``ValueError`` if ``name`` is not a registered optimizer."""
    if name not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {name!r}; choose one of {', '.join(repr(n) for n in OPTIMIZERS)}"
        )


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class for ``name``; a missing package names what to install."""
    check_optimizer_name(name)
    spec = OPTIMIZERS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise MissingPackageError(
            f"optimizer {name!r} needs the pip package {spec.package!r} "
            f"(pip install {spec.package}): {exc}"
        ) from None
    return getattr(module, spec.attr)


def build_optimizer(
    name: str, param_groups: list[dict[str, Any]], learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over the method's parameter groups (L2 = weight decay)."""
    cls = optimizer_class(name)
    groups = [g for g in param_groups if any(p.requires_grad for p in g["params"])]
    if not groups:
        raise ValueError("the method has no trainable parameters")
    return cls(groups, lr=learning_rate, weight_decay=weight_decay, **dict(OPTIMIZERS[name].extra))


# --------------------------------------------------------------------------- schedules

Schedule = Callable[[float, float, float], float]  # (progress in [0, 1], cycles, power) -> mult


def _constant(progress: float, cycles: float, power: float) -> float:
    return 1.0


def _linear(progress: float, cycles: float, power: float) -> float:
    return max(0.0, 1.0 - progress)


def _cosine(progress: float, cycles: float, power: float) -> float:
    # transformers get_cosine_schedule_with_warmup(num_cycles = cycles / 2):
    # lr_cycles = 1 is one half-wave from 1 down to 0.
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * cycles * progress)))


def _cosine_with_restarts(progress: float, cycles: float, power: float) -> float:
    # transformers get_cosine_with_hard_restarts_schedule_with_warmup
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))


def _polynomial(progress: float, cycles: float, power: float) -> float:
    # transformers get_polynomial_decay_schedule_with_warmup with lr_end = 0
    return max(0.0, 1.0 - progress) ** power


SCHEDULES: dict[str, Schedule] = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "cosine_with_restarts": _cosine_with_restarts,
    "polynomial": _polynomial,
}


def lr_multiplier(
    name: str, step: int, total: int, warmup: int = 0, cycles: float = 1.0, power: float = 1.0
) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (0-based) of ``total``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr_scheduler {name!r}; choose one of {', '.join(SCHEDULES)}")
    if step < warmup:
        return float(step + 1) / float(warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return SCHEDULES[name](min(progress, 1.0), cycles, power)


def build_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    cycles: float = 1.0,
    power: float = 1.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_multiplier` (stepped once per optimizer step)."""
    lr_multiplier(name, 0, total_steps, warmup_steps, cycles, power)  # validate the name

    def fn(step: int) -> float:
        return lr_multiplier(name, step, total_steps, warmup_steps, cycles, power)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
