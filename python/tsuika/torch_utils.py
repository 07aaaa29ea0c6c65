"""Small torch helpers that several layers share (the foundation layer: torch only).

* :func:`replace_submodule` -- put a module at a dotted path (LoRA wrapping,
  unwrapping, stacking);
* :func:`isolated_eval` -- run with every module in eval mode and the global
  RNG untouched (validation, sample grids, class pictures);
* :func:`seed_generators` / :func:`seeded_noise` -- per-seed starting noise,
  picture ``k`` from its own CPU generator, so a picture does not depend on
  the batch it was made in (generation, class pictures, validation noise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn


def replace_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Set the submodule of ``root`` at the dotted ``path`` (e.g. ``"down.0.proj"``) to ``module``."""
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


def _rng_devices(device: torch.device | str | None) -> list[int]:
    """The CUDA device indices whose RNG :func:`isolated_eval` forks besides the CPU's."""
    if device is None:
        return []
    device = torch.device(device)
    return [device.index or 0] if device.type == "cuda" else []


@contextlib.contextmanager
def isolated_eval(*modules: nn.Module, device: torch.device | str | None = None) -> Iterator[None]:
    """Every (sub)module of ``modules`` in eval mode, under ``torch.no_grad()``, inside
    ``torch.random.fork_rng`` (the CPU and ``device``'s CUDA RNG); afterwards each
    submodule gets its own mode back and the global RNG states are as before.

    So a side computation (validation, a sample grid, class pictures) in the
    middle of a run never changes what the run draws or trains next.
    """
    modes = [(m, m.training) for root in modules for m in root.modules()]
    try:
        with torch.random.fork_rng(devices=_rng_devices(device)), torch.no_grad():
            for root in modules:
                root.eval()
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed."""
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def seeded_noise(
    shape: Sequence[int], seeds: Sequence[int] | Sequence[torch.Generator]
) -> torch.Tensor:
    """``[len(seeds), *shape]`` standard normal noise on the CPU, entry ``k`` drawn
    from a generator seeded ``seeds[k]`` (or from the generator ``seeds[k]`` itself)."""
    generators = [g if isinstance(g, torch.Generator) else seed_generators([g])[0] for g in seeds]
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])
