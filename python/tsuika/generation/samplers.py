"""Samplers by name: diffusers schedulers built from the model's own scheduler config.

The registry maps a tsuika name to a diffusers scheduler class, the settings
that make it the sampler A1111 users know, and the label A1111 writes in its
infotext (``Sampler: Euler a``; ``Schedule type: Karras`` since A1111 1.9).
Names are matched loosely: ``"Euler a"``, ``"euler-a"`` and ``"euler_a"`` are
one sampler; ``"DPM++ 2M"`` is ``dpmpp_2m``. Nothing is downloaded: the
schedule (betas, prediction type, offsets) comes from the model's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tsuika.errors import TsuikaError


class SamplerError(TsuikaError, ValueError):
    """An unknown sampler name; the message lists the known ones."""


@dataclass(frozen=True)
class Sampler:
    label: str  # A1111's "Sampler:" value
    scheduler: str  # diffusers class name
    settings: dict[str, Any] = field(default_factory=dict)
    schedule_type: str | None = None  # A1111's "Schedule type:" value, when not automatic


SAMPLERS: dict[str, Sampler] = {
    "ddim": Sampler("DDIM", "DDIMScheduler"),
    "euler": Sampler("Euler", "EulerDiscreteScheduler"),
    "euler_a": Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
    "dpmpp_2m": Sampler(
        "DPM++ 2M",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_2m_karras": Sampler(
        "DPM++ 2M",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        schedule_type="Karras",
    ),
}
DEFAULT_SAMPLER = "euler_a"


def sampler_key(name: str) -> str:
    """The registry key for ``name`` (``"DPM++ 2M Karras"`` -> ``"dpmpp_2m_karras"``)."""
    key = name.strip().lower().replace("++", "pp").replace("+", "p")
    key = "_".join(key.replace("-", " ").replace("_", " ").split())
    if key not in SAMPLERS:
        raise SamplerError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    return key


def build_scheduler(name: str, config: Mapping[str, Any]):
    """A fresh diffusers scheduler for sampler ``name`` from a scheduler ``config``."""
    import diffusers

    sampler = SAMPLERS[sampler_key(name)]
    cls = getattr(diffusers, sampler.scheduler)
    base = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return cls.from_config({**base, **sampler.settings})


def infotext_fields(name: str) -> dict[str, str]:
    """``{"Sampler": ..., ["Schedule type": ...]}`` as A1111 writes them."""
    sampler = SAMPLERS[sampler_key(name)]
    fields = {"Sampler": sampler.label}
    if sampler.schedule_type:
        fields["Schedule type"] = sampler.schedule_type
    return fields
