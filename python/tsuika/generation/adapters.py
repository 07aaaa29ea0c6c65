"""Adapters for one generation: LoRAs (stacked), embeddings and hypernetworks, and the
``FILE[:WEIGHT]`` / ``FILE[:TOKEN]`` specs users type for them.

:func:`attach` hooks everything into a model and returns :class:`Adapters`;
:meth:`Adapters.remove` leaves the model as it was. Hypernetworks go in first
(they wrap attention processors, whose projections the LoRA stack then wraps).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsuika.errors import TsuikaError
from tsuika.models.base import BaseModel

from .embeddings import EmbeddingSet, load_embeddings


class AdapterSpecError(TsuikaError, ValueError):
    """A ``FILE[:WEIGHT]`` / ``FILE[:TOKEN]`` spec that does not parse; names the spec."""


WeightedSpec = str | os.PathLike | tuple[str | os.PathLike, float]
TokenSpec = str | os.PathLike | tuple[str | os.PathLike, str | None]


def _split(spec: str) -> tuple[str, str | None]:
    """``"a/b.pt:x"`` -> ``("a/b.pt", "x")``; a spec that is an existing path is never split."""
    if Path(spec).exists() or ":" not in spec:
        return spec, None
    head, _, tail = spec.rpartition(":")
    return head, tail


def parse_weighted(spec: WeightedSpec, what: str = "LoRA") -> tuple[Path, float]:
    """``FILE``, ``FILE:WEIGHT`` or ``(FILE, WEIGHT)`` -> ``(path, weight)`` (weight 1 by default)."""
    if isinstance(spec, tuple):
        path, weight = spec
        return Path(path), float(weight)
    path, tail = _split(os.fspath(spec))
    if tail is None:
        return Path(path), 1.0
    try:
        return Path(path), float(tail)
    except ValueError:
        raise AdapterSpecError(
            f"{what} {spec!r}: the part after ':' must be a number (FILE:WEIGHT), got {tail!r}"
        ) from None


def parse_embedding(spec: TokenSpec) -> tuple[Path, str | None]:
    """``FILE``, ``FILE:TOKEN`` or ``(FILE, TOKEN)`` -> ``(path, token or None)``."""
    if isinstance(spec, tuple):
        path, token = spec
        return Path(path), token
    path, tail = _split(os.fspath(spec))
    return Path(path), tail or None


def _existing(paths: Iterable[Path], what: str) -> None:
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")


@dataclass
class Adapters:
    """What :func:`attach` put into a model."""

    loras: list[tuple[Path, float]] = field(default_factory=list)
    embeddings: EmbeddingSet | None = None
    hypernetworks: list[tuple[Path, float]] = field(default_factory=list)
    _lora_stack: Any = None
    _hooks: list[Any] = field(default_factory=list)

    def expand(self, prompt: str) -> str:
        return self.embeddings.expand(prompt) if self.embeddings else prompt

    def remove(self) -> None:
        if self._lora_stack is not None:
            self._lora_stack.remove()
            self._lora_stack = None
        for hook in reversed(self._hooks):
            hook.remove()
        self._hooks = []
        if self.embeddings is not None:
            self.embeddings.remove()


def attach(
    model: BaseModel,
    *,
    loras: Iterable[WeightedSpec] = (),
    embeddings: Iterable[TokenSpec] = (),
    hypernetworks: Iterable[WeightedSpec] = (),
) -> Adapters:
    """Load and hook every adapter into ``model``; on an error nothing stays attached."""
    lora_files = [parse_weighted(s, "LoRA") for s in loras]
    hyper_files = [parse_weighted(s, "hypernetwork") for s in hypernetworks]
    embedding_files = [parse_embedding(s) for s in embeddings]
    _existing((p for p, _ in lora_files), "LoRA")
    _existing((p for p, _ in hyper_files), "hypernetwork")
    _existing((p for p, _ in embedding_files), "embedding")
    adapters = Adapters(loras=lora_files, hypernetworks=hyper_files)
    try:
        if hyper_files:
            from tsuika.methods.hypernetwork import apply_hypernetwork_file

            for path, strength in hyper_files:
                adapters._hooks.append(apply_hypernetwork_file(model.unet, path, strength))
        if lora_files:
            from tsuika.methods.lora.stack import apply_lora_files

            adapters._lora_stack = apply_lora_files(model, lora_files)
        if embedding_files:
            adapters.embeddings = load_embeddings(model, embedding_files)
    except BaseException:
        adapters.remove()
        raise
    return adapters
