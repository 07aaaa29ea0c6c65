"""``tsuika convert``: adapter files from one tool's layout to another's.

* LoRA: kohya / A1111 (``--to kohya``, alias ``a1111``) <-> diffusers / peft
  (``--to diffusers``). kohya's scale ``alpha / rank`` is folded into the
  weights on the way to diffusers (``sqrt(alpha / rank)`` on each of down and
  up, as diffusers' own kohya converter does), and the file says
  ``lora_alpha = r``, so readers that ignore the header still get the right
  scale; on the way back the file's effective alpha (its header's
  ``lora_alpha`` / ``alpha_pattern``, else the rank) becomes kohya's
  ``alpha``. kohya names are turned into module paths by
  :func:`kohya_module_path`.
* Embedding: A1111 ``.pt`` (``--to a1111``), ``emb_params`` safetensors
  (``--to safetensors``), diffusers ``{token: tensor}`` (``--to diffusers``).
* Hypernetwork: A1111 ``.pt`` (``--to a1111``) <-> safetensors (``--to safetensors``).

The kind of the input is found from its keys (:func:`detect`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from tsuika.formats.kohya_lora import LoraFileError, LoraWeights


class ConvertError(ValueError):
    """A conversion that cannot be done; the message names the file and the problem."""


# --------------------------------------------------------------------------- kohya names

# Module-name words that contain "_" (kohya joins path levels with "_" too).
MULTI_WORD = {
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v",
    "to_out", "proj_in", "proj_out", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out",
    "conv_norm_out", "time_embedding", "linear_1", "linear_2", "text_model", "self_attn",
    "q_proj", "k_proj", "v_proj", "out_proj", "final_layer_norm", "layer_norm1", "layer_norm2",
    "token_embedding", "position_embedding", "add_embedding", "text_projection",
}  # fmt: skip
SINGLE_WORD = {
    "attentions", "resnets", "attn1", "attn2", "ff", "net", "proj", "conv1", "conv2", "norm",
    "norm1", "norm2", "norm3", "downsamplers", "upsamplers", "conv", "encoder", "layers", "mlp",
    "fc1", "fc2", "embeddings",
}  # fmt: skip
KOHYA_COMPONENTS = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder",
                    "lora_te2": "text_encoder_2"}  # fmt: skip
COMPONENT_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}


def kohya_module_path(name: str) -> tuple[str, str]:
    """``lora_unet_down_blocks_0_attentions_0_proj_in`` -> ``("unet", "down_blocks.0.attentions.0.proj_in")``.

    Words are matched longest first against the module names of SD's UNet and
    CLIP text model; a word outside them raises :class:`ConvertError`.
    """
    for prefix in sorted(KOHYA_COMPONENTS, key=len, reverse=True):
        if name.startswith(prefix + "_"):
            break
    else:
        raise ConvertError(f"{name}: not a kohya module name (prefix lora_unet_ / lora_te_)")
    parts = name[len(prefix) + 1 :].split("_")
    out, i = [], 0
    while i < len(parts):
        for length in (3, 2):
            word = "_".join(parts[i : i + length])
            if i + length <= len(parts) and word in MULTI_WORD:
                out.append(word)
                i += length
                break
        else:
            if not (parts[i].isdigit() or parts[i] in SINGLE_WORD):
                raise ConvertError(
                    f"{name}: unknown module word {parts[i]!r}; cannot tell where its path splits"
                )
            out.append(parts[i])
            i += 1
    return KOHYA_COMPONENTS[prefix], ".".join(out)


# --------------------------------------------------------------------------- detection


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _pickle(path: Path) -> object:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def detect(path: str | os.PathLike) -> str:
    """``"lora-kohya"``, ``"lora-diffusers"``, ``"embedding"`` or ``"hypernetwork"``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        keys = _safetensors_keys(path)
        if keys and all(k.startswith(tuple(p + "_" for p in KOHYA_COMPONENTS)) for k in keys):
            return "lora-kohya"
        if any(re.search(r"\.lora_[AB]\.weight$", k) for k in keys):
            return "lora-diffusers"
        if keys and all(re.match(r"\d+\.[kv]\.", k) for k in keys):
            return "hypernetwork"
        return "embedding"
    try:
        data = _pickle(path)
    except Exception:  # the embedding reader gives the precise message
        return "embedding"
    if isinstance(data, dict) and any(isinstance(k, int) for k in data):
        return "hypernetwork"
    return "embedding"


# --------------------------------------------------------------------------- LoRA


def _lora_metadata(path: Path) -> dict[str, str]:
    from tsuika.formats.diffusers_lora import METADATA_KEY
    from tsuika.formats.kohya_lora import read_metadata

    return {k: v for k, v in read_metadata(path).items() if k not in (METADATA_KEY, "format")}


def _folded(w: LoraWeights) -> LoraWeights:
    """The same update with scale 1: ``sqrt(alpha / r)`` on down and on up, alpha = r."""
    root = math.sqrt(float(w.alpha) / w.rank)
    return LoraWeights(down=w.down * root, up=w.up * root, alpha=float(w.rank))


def lora_to_diffusers(src: Path, dst: Path) -> Path:
    from tsuika.formats.diffusers_lora import save_diffusers_lora
    from tsuika.methods.lora import read_lora_file

    components: dict[str, dict[str, LoraWeights]] = {}
    for name, weights in read_lora_file(src).items():
        if weights.dora_scale is not None:
            raise ConvertError(
                f"{src}: {name}.dora_scale: DoRA has no diffusers/peft equivalent "
                "(peft's magnitude is per output row); keep it as a kohya file"
            )
        component, module_path = kohya_module_path(name)
        components.setdefault(component, {})[module_path] = _folded(weights)
    return save_diffusers_lora(dst, components, _lora_metadata(src))


def lora_to_kohya(src: Path, dst: Path) -> Path:
    from tsuika.formats.kohya_lora import save_kohya_lora
    from tsuika.methods.lora import read_lora_file

    return save_kohya_lora(dst, read_lora_file(src), _lora_metadata(src))


# --------------------------------------------------------------------------- embeddings


def embedding_to(fmt: str, src: Path, dst: Path, token: str | None = None) -> Path:
    from tsuika.formats.embedding import EmbeddingInfo, embedding_format, read_embedding

    spec = embedding_format(fmt)
    if dst.suffix.lower() != spec.suffix:
        raise ConvertError(f"{dst}: a {fmt} embedding is a {spec.suffix} file")
    found = read_embedding(src)
    info = EmbeddingInfo(
        token=token or found.token,
        name=dst.stem,
        step=found.step,
        sd_checkpoint=found.sd_checkpoint,
        sd_checkpoint_name=found.sd_checkpoint_name,
        metadata=dict(found.metadata),
    )
    return spec.write(dst, found.vectors, info)


def hypernetwork_to(fmt: str, src: Path, dst: Path) -> Path:
    from tsuika.formats import a1111_hypernetwork as hn

    writers = {"a1111": (".pt", hn.save_a1111_hypernetwork),
               "safetensors": (".safetensors", hn.save_safetensors_hypernetwork)}  # fmt: skip
    suffix, write = writers[fmt]
    if dst.suffix.lower() != suffix:
        raise ConvertError(f"{dst}: a {fmt} hypernetwork is a {suffix} file")
    return write(dst, hn.load_hypernetwork_file(src))


# --------------------------------------------------------------------------- entry point

Converter = Callable[[Path, Path, str | None], Path]


def _lora(write: Callable[[Path, Path], Path]) -> Converter:
    def run(src: Path, dst: Path, _token: str | None) -> Path:
        if dst.suffix.lower() != ".safetensors":
            raise ConvertError(f"{dst}: a LoRA is written as a .safetensors file")
        return write(src, dst)

    return run


def _embedding(fmt: str) -> Converter:
    return lambda src, dst, token: embedding_to(fmt, src, dst, token)


def _hypernetwork(fmt: str) -> Converter:
    return lambda src, dst, _token: hypernetwork_to(fmt, src, dst)


# (input kind, --to) -> converter
CONVERTERS: dict[tuple[str, str], Converter] = {
    ("lora-kohya", "kohya"): _lora(lora_to_kohya),
    ("lora-kohya", "a1111"): _lora(lora_to_kohya),
    ("lora-kohya", "diffusers"): _lora(lora_to_diffusers),
    ("lora-diffusers", "kohya"): _lora(lora_to_kohya),
    ("lora-diffusers", "a1111"): _lora(lora_to_kohya),
    ("lora-diffusers", "diffusers"): _lora(lora_to_diffusers),
    ("embedding", "a1111"): _embedding("a1111"),
    ("embedding", "safetensors"): _embedding("safetensors"),
    ("embedding", "diffusers"): _embedding("diffusers"),
    ("hypernetwork", "a1111"): _hypernetwork("a1111"),
    ("hypernetwork", "safetensors"): _hypernetwork("safetensors"),
}
TARGETS = ("kohya", "diffusers", "a1111", "safetensors")


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, to: str, *, token: str | None = None
) -> Path:
    """Convert ``src`` into ``dst`` in layout ``to``; returns ``dst``.

    ``token`` names the placeholder of a diffusers embedding (default: the input's).
    """
    src, dst = Path(src), Path(dst)
    if to not in TARGETS:
        raise ConvertError(f"--to {to!r}: allowed: {', '.join(TARGETS)}")
    if src.resolve() == dst.resolve():
        raise ConvertError(f"{dst}: the output would overwrite the input")
    kind = detect(src)
    converter = CONVERTERS.get((kind, to))
    if converter is None:
        allowed = sorted(t for k, t in CONVERTERS if k == kind)
        raise ConvertError(f"{src} is a {kind} file; --to may be {', '.join(allowed)}, not {to!r}")
    try:
        return converter(src, dst, token)
    except LoraFileError as exc:
        raise ConvertError(str(exc)) from None
