"""tsuika: additional training for Stable Diffusion (LoRA, Textual Inversion,
DreamBooth, Hypernetworks) with a Rust data engine.

The entry points load lazily, so ``import tsuika`` stays cheap:

- ``tsuika.train(config)``: run a training from a TOML path, a dict or a config.
- ``tsuika.generate(...)``: pictures from a base model with any adapters.
"""

from __future__ import annotations

import os
from typing import Any

# Same seed, same bytes, at any thread count: with more than one thread, MKL's
# matrix products (torch's CPU BLAS, also under oneDNN's convolutions) may add
# partial sums in an order that depends on memory alignment, so two runs of one
# seed, or a run and its resume, differed in the last bits. STRICT conditional
# numerical reproducibility fixes the order. MKL reads this when it first
# computes, so it is set here, before any training; a value the user set wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

_LAZY = {
    "train": ("tsuika.api", "train"),
    "cv": ("tsuika.api", "cv"),
    "lr_find": ("tsuika.api", "lr_find"),
    "generate": ("tsuika.generation", "generate"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'tsuika' has no attribute {name!r}") from None
    import importlib

    return getattr(importlib.import_module(module), attr)
