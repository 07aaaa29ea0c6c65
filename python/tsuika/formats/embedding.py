"""Textual Inversion embedding files: AUTOMATIC1111 ``.pt``, ``emb_params`` safetensors,
diffusers ``{token: tensor}``, and SDXL ``clip_l`` / ``clip_g`` (read and write).

Layouts (``vectors`` is ``[n_vectors, dim]``):

* ``a1111`` -- ``{name}.pt``, a torch pickle of plain data, as
  ``Embedding.save`` in AUTOMATIC1111's ``modules/textual_inversion/textual_inversion.py``
  writes it: ``{"string_to_token": {"*": 265}, "string_to_param": {"*": vectors},
  "name": str, "step": int, "sd_checkpoint": str | None, "sd_checkpoint_name": str | None}``
  (265 is the id of ``*`` in CLIP's vocabulary; A1111 ignores it when loading).
* ``safetensors`` -- ``{name}.safetensors`` with one tensor ``emb_params``, as
  kohya-ss/sd-scripts ``train_textual_inversion.py`` writes it; for SDXL two
  tensors ``clip_l`` ``[n, 768]`` and ``clip_g`` ``[n, 1280]``.
* ``diffusers`` -- ``{name}.safetensors`` with one tensor named after the
  placeholder token, as diffusers' ``examples/textual_inversion`` writes
  ``learned_embeds.safetensors``. ``load_textual_inversion`` names the
  vectors of a multi-vector embedding ``tok``, ``tok_1``, ..., ``tok_{n-1}``.

A1111 triggers an embedding by its file name; diffusers by the file's key (a
diffusers file) or the ``name`` field (an A1111 ``.pt``), unless ``token=``
is given. :func:`read_embedding` suggests the file name, except for diffusers
files, whose key is the token.

Pickles are read with ``torch.load(weights_only=True)`` only: a file that
needs anything beyond tensors and plain containers is refused, never run.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tsuika.atomic import atomic_write
from tsuika.errors import TsuikaError

A1111_STAR_TOKEN_ID = 265  # CLIP's id of "*", the key A1111 writes in string_to_token
EMB_PARAMS = "emb_params"
SDXL_KEYS = ("clip_l", "clip_g")
PICKLE_SUFFIXES = (".pt", ".bin", ".pth", ".ckpt")

Vectors = torch.Tensor | dict[str, torch.Tensor]


class EmbeddingFileError(TsuikaError, ValueError):
    """An embedding file that cannot be read or written; the message names the file and key."""


class UnsafeEmbeddingError(EmbeddingFileError):
    """A pickled embedding that needs arbitrary Python objects (code) to load: refused."""


@dataclass
class EmbeddingFile:
    """What an embedding file holds.

    ``vectors`` is ``[n, dim]`` float32, or for SDXL ``{"clip_l": [n, 768],
    "clip_g": [n, 1280]}``. ``token`` is the word to load it under (see the
    module docstring); ``name`` the A1111 ``name`` field when there is one.
    """

    vectors: Vectors
    token: str
    layout: str  # "a1111" | "safetensors" | "diffusers" | "sdxl" | "tensor"
    name: str | None = None
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_vectors(self) -> int:
        first = self.vectors if isinstance(self.vectors, torch.Tensor) else self.vectors["clip_l"]
        return int(first.shape[0])


class LoadedEmbedding(NamedTuple):
    """``(vectors, suggested_token)``; ``vectors`` as in :class:`EmbeddingFile`."""

    vectors: Vectors
    token: str


# --------------------------------------------------------------------------- reading


def check_vectors(value: Any, where: str) -> torch.Tensor:
    """``value`` as float32 ``[n, dim]`` (a ``[dim]`` vector becomes ``[1, dim]``, as A1111
    and diffusers accept); non-tensors, other ranks, empty or non-finite values are errors."""
    if not isinstance(value, torch.Tensor):
        raise EmbeddingFileError(f"{where}: expected a tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise EmbeddingFileError(f"{where}: expected floating-point vectors, got {value.dtype}")
    if value.ndim == 1:
        value = value.unsqueeze(0)
    if value.ndim != 2:
        raise EmbeddingFileError(
            f"{where}: expected vectors of shape [n_vectors, dim], got {list(value.shape)}"
        )
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise EmbeddingFileError(f"{where}: empty embedding of shape {list(value.shape)}")
    if not torch.isfinite(value).all():
        raise EmbeddingFileError(f"{where}: holds non-finite values (nan or inf)")
    return value.detach().to(torch.float32).contiguous()


def _read_raw(path: Path) -> tuple[Any, dict[str, str]]:
    """The file's object (a dict or a tensor) and its safetensors metadata."""
    if not path.is_file():
        raise FileNotFoundError(f"embedding file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError

        from tsuika.formats.safetensors_check import SafetensorsHeaderError, safe_open_checked

        try:
            with safe_open_checked(path) as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except SafetensorsHeaderError as exc:
            raise EmbeddingFileError(str(exc)) from None
        except SafetensorError as exc:
            raise EmbeddingFileError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError as exc:
        reason = _pickle_reason(exc)
        if "GLOBAL" not in reason:
            raise EmbeddingFileError(f"{path}: not a readable torch file ({reason})") from None
        raise UnsafeEmbeddingError(
            f"{path}: refusing to load: the pickle needs Python objects beyond tensors and "
            f"plain data, and loading it could run code ({reason}). Only weights-only "
            "pickles are read; use a .safetensors embedding or convert this one in a "
            "trusted environment"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise EmbeddingFileError(f"{path}: not a readable torch file ({exc})") from None


def _pickle_reason(exc: pickle.UnpicklingError) -> str:
    """The informative line of torch's weights-only refusal (``... GLOBAL os.system ...``
    for code, ``Unsupported operand ...`` for bytes that are no pickle)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return line
    return lines[0] if lines else type(exc).__name__


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _parse_a1111(data: dict[str, Any], path: Path) -> EmbeddingFile:
    params = data["string_to_param"]
    if not isinstance(params, Mapping):
        raise EmbeddingFileError(
            f"{path}: string_to_param must be a dict, got {type(params).__name__}"
        )
    if len(params) != 1:
        raise EmbeddingFileError(
            f"{path}: string_to_param must hold exactly one entry, got keys {sorted(map(str, params))}"
        )
    ((key, value),) = params.items()
    step = data.get("step")
    return EmbeddingFile(
        vectors=check_vectors(value, f"{path}: string_to_param[{key!r}]"),
        token=path.stem,
        layout="a1111",
        name=_optional_str(data.get("name")),
        step=step if isinstance(step, int) and not isinstance(step, bool) else None,
        sd_checkpoint=_optional_str(data.get("sd_checkpoint")),
        sd_checkpoint_name=_optional_str(data.get("sd_checkpoint_name")),
    )


def _parse_sdxl(data: dict[str, Any], path: Path) -> EmbeddingFile:
    vectors = {k: check_vectors(data[k], f"{path}: {k}") for k in SDXL_KEYS}
    counts = {k: int(v.shape[0]) for k, v in vectors.items()}
    if len(set(counts.values())) != 1:
        raise EmbeddingFileError(f"{path}: clip_l and clip_g differ in vector count {counts}")
    return EmbeddingFile(vectors=vectors, token=path.stem, layout="sdxl")


def _parse_emb_params(data: dict[str, Any], path: Path) -> EmbeddingFile:
    vectors = check_vectors(data[EMB_PARAMS], f"{path}: {EMB_PARAMS}")
    return EmbeddingFile(vectors=vectors, token=path.stem, layout="safetensors")


def _parse_diffusers(data: dict[str, Any], path: Path) -> EmbeddingFile:
    ((token, value),) = data.items()
    if not isinstance(token, str) or not token.strip():
        raise EmbeddingFileError(f"{path}: the single key must be a token string, got {token!r}")
    return EmbeddingFile(
        vectors=check_vectors(value, f"{path}: {token!r}"), token=token, layout="diffusers"
    )


def _is_a1111(data: dict[str, Any]) -> bool:
    return "string_to_param" in data


def _is_sdxl(data: dict[str, Any]) -> bool:
    return all(k in data for k in SDXL_KEYS)


def _is_emb_params(data: dict[str, Any]) -> bool:
    return list(data) == [EMB_PARAMS]


def _is_diffusers(data: dict[str, Any]) -> bool:
    return len(data) == 1 and isinstance(next(iter(data.values())), torch.Tensor)


# Checked in order: the first layout that matches a file's dict reads it.
LAYOUTS: tuple[tuple[str, Callable[[dict[str, Any]], bool], Callable[..., EmbeddingFile]], ...] = (
    ("a1111", _is_a1111, _parse_a1111),
    ("sdxl", _is_sdxl, _parse_sdxl),
    ("safetensors", _is_emb_params, _parse_emb_params),
    ("diffusers", _is_diffusers, _parse_diffusers),
)


def read_embedding(path: str | os.PathLike[str]) -> EmbeddingFile:
    """Read any supported embedding file (see the module docstring)."""
    path = Path(path)
    data, metadata = _read_raw(path)
    if isinstance(data, torch.Tensor):  # a bare tensor, as diffusers also accepts
        return EmbeddingFile(check_vectors(data, str(path)), path.stem, "tensor", metadata=metadata)
    if not isinstance(data, dict):
        raise EmbeddingFileError(
            f"{path}: unknown embedding layout: a {type(data).__name__}, not a dict of tensors"
        )
    for _, matches, parse in LAYOUTS:
        if matches(data):
            found = parse(data, path)
            found.metadata = metadata
            return found
    keys = sorted(map(str, data))
    raise EmbeddingFileError(
        f"{path}: unknown embedding layout with keys {keys[:8]}{'...' if len(keys) > 8 else ''}; "
        "expected string_to_param (A1111), emb_params, clip_l + clip_g (SDXL) "
        "or one {token: tensor} entry (diffusers)"
    )


def load_embedding(path: str | os.PathLike[str]) -> LoadedEmbedding:
    """``(vectors, suggested_token)`` from an embedding file; see :func:`read_embedding`."""
    found = read_embedding(path)
    return LoadedEmbedding(found.vectors, found.token)


# --------------------------------------------------------------------------- writing


@dataclass
class EmbeddingInfo:
    """What goes into a file beside the vectors."""

    token: str  # the placeholder token (diffusers' key)
    name: str  # the embedding's name (A1111's "name"; the file name)
    step: int | None = None
    sd_checkpoint: str | None = None  # A1111: the base model's short hash
    sd_checkpoint_name: str | None = None  # A1111: the base model's name
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors header (strings)


def _plain(vectors: Vectors, fmt: str) -> torch.Tensor:
    if not isinstance(vectors, torch.Tensor):
        raise EmbeddingFileError(
            f"format {fmt!r} holds one [n, dim] tensor; SDXL clip_l/clip_g embeddings "
            "are written with format 'safetensors'"
        )
    return check_vectors(vectors, f"{fmt} embedding").cpu().clone()


def _strings(metadata: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in metadata.items()}


def _write_a1111(path: Path, vectors: Vectors, info: EmbeddingInfo) -> Path:
    data = {
        "string_to_token": {"*": A1111_STAR_TOKEN_ID},
        "string_to_param": {"*": _plain(vectors, "a1111")},
        "name": info.name,
        "step": None if info.step is None else int(info.step),
        "sd_checkpoint": info.sd_checkpoint,
        "sd_checkpoint_name": info.sd_checkpoint_name,
    }
    return atomic_write(path, lambda tmp: torch.save(data, tmp))


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], info: EmbeddingInfo) -> Path:
    from safetensors.torch import save_file

    meta = _strings(info.metadata)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _write_emb_params(path: Path, vectors: Vectors, info: EmbeddingInfo) -> Path:
    if isinstance(vectors, torch.Tensor):
        tensors = {EMB_PARAMS: _plain(vectors, "safetensors")}
    else:
        if sorted(vectors) != sorted(SDXL_KEYS):
            raise EmbeddingFileError(
                f"SDXL embedding needs keys {SDXL_KEYS}, got {sorted(vectors)}"
            )
        tensors = {k: check_vectors(vectors[k], k).cpu().clone() for k in SDXL_KEYS}
    return _save_safetensors(path, tensors, info)


def _write_diffusers(path: Path, vectors: Vectors, info: EmbeddingInfo) -> Path:
    return _save_safetensors(path, {info.token: _plain(vectors, "diffusers")}, info)


class EmbeddingFormat(NamedTuple):
    suffix: str
    write: Callable[[Path, Vectors, EmbeddingInfo], Path]


# [output] format -> how the file is written
FORMATS: dict[str, EmbeddingFormat] = {
    "a1111": EmbeddingFormat(".pt", _write_a1111),
    "safetensors": EmbeddingFormat(".safetensors", _write_emb_params),
    "diffusers": EmbeddingFormat(".safetensors", _write_diffusers),
}


def embedding_format(fmt: str) -> EmbeddingFormat:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise EmbeddingFileError(
            f"output.format = {fmt!r} is not an embedding format; allowed: {', '.join(FORMATS)}"
        ) from None


def save_embedding(
    out_dir: str | os.PathLike[str], fmt: str, vectors: Vectors, info: EmbeddingInfo
) -> Path:
    """Write ``{out_dir}/{info.name}{suffix}`` in ``fmt`` (atomically); return its path."""
    spec = embedding_format(fmt)
    return spec.write(Path(out_dir) / f"{info.name}{spec.suffix}", vectors, info)
