"""The tiny world: 64x64 pictures of coloured shapes, their captions, and a classifier
that scores generated pictures (see DESIGN.md, "The tiny world").

``render`` here is the function; reach the module's other names with
``from tsuika.world.render import ...``. The evaluator names load torch on first use.
Training: ``tsuika.world.fit.train_evaluator`` or ``python -m tsuika.world.train_evaluator``.
"""

from typing import Any

from .base import base_model_path
from .render import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    STYLES,
    Scene,
    WorldError,
    caption,
    render,
    sample_scenes,
    write_dataset,
)

_LAZY = {"Evaluator", "EvaluatorError", "load_evaluator"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import evaluator

        return getattr(evaluator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "SHAPES",
    "STYLES",
    "Evaluator",
    "EvaluatorError",
    "Scene",
    "WorldError",
    "base_model_path",
    "caption",
    "load_evaluator",
    "render",
    "sample_scenes",
    "write_dataset",
]
