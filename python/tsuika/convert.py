"""``tsuika convert``: adapter files from one tool's layout to another's.

* LoRA: kohya / A1111 (``--to kohya``, alias ``a1111``) <-> diffusers / peft
  (``--to diffusers``), SD 1.x/2.x and SDXL. kohya's scale ``alpha / rank``
  is folded into the up weights on the way to diffusers and the file says
  ``lora_alpha = r``, so readers that ignore the header still get the right
  scale; the kohya alphas are remembered in the header
  (``tsuika_kohya_alphas``) so the way back gives kohya's tensors again. A
  diffusers file from elsewhere comes back with its effective alpha (its
  header's ``lora_alpha`` / ``alpha_pattern``, else the rank). kohya names
  are turned into module paths by :func:`kohya_module_path`; an SDXL file
  (:func:`lora_family`) is named as kohya's SDXL trainer names it: the UNet
  by the original blocks, the encoders ``lora_te1`` / ``lora_te2``.
* Embedding: A1111 ``.pt`` (``--to a1111``), ``emb_params`` safetensors
  (``--to safetensors``), diffusers ``{token: tensor}`` (``--to diffusers``).
  An SDXL embedding (``clip_l`` + ``clip_g``) exists in the safetensors layout
  only; the others are refused naming the file and the layout that exists.
* Hypernetwork: A1111 ``.pt`` (``--to a1111``) <-> safetensors (``--to safetensors``).

The kind of the input is found from its keys (:func:`detect`).
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch

from tsuika.errors import TsuikaError
from tsuika.formats.kohya_lora import LoraFileError, LoraWeights
from tsuika.methods.lora.names import ORIGINAL_ROOTS, original_to_unet_module
from tsuika.models.ldm_names import UnknownModuleError


class ConvertError(TsuikaError, ValueError):
    """A conversion that cannot be done; the message names the file and the problem."""


# --------------------------------------------------------------------------- kohya names

# Module-name words that contain "_" (kohya joins path levels with "_" too).
MULTI_WORD = {
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v",
    "to_out", "proj_in", "proj_out", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out",
    "conv_norm_out", "time_embedding", "linear_1", "linear_2", "text_model", "self_attn",
    "q_proj", "k_proj", "v_proj", "out_proj", "final_layer_norm", "layer_norm1", "layer_norm2",
    "token_embedding", "position_embedding", "add_embedding", "text_projection",
    # the original (sgm / ldm) UNet, as kohya's SDXL trainer names it
    "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
    "skip_connection", "time_embed", "label_emb",
}  # fmt: skip
SINGLE_WORD = {
    "attentions", "resnets", "attn1", "attn2", "ff", "net", "proj", "conv1", "conv2", "norm",
    "norm1", "norm2", "norm3", "downsamplers", "upsamplers", "conv", "encoder", "layers", "mlp",
    "fc1", "fc2", "embeddings", "op", "out",
}  # fmt: skip
KOHYA_COMPONENTS = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder",
                    "lora_te2": "text_encoder_2"}  # fmt: skip
COMPONENT_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}


def kohya_module_path(name: str) -> tuple[str, str]:
    """``lora_unet_down_blocks_0_attentions_0_proj_in`` -> ``("unet", "down_blocks.0.attentions.0.proj_in")``.

    Words are matched longest first against the module names of SD's UNet and
    CLIP text model; a word outside them raises :class:`ConvertError`. A UNet
    named by the original blocks (kohya's SDXL trainer:
    ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``) comes back
    as the diffusers path (:func:`~tsuika.methods.lora.names.original_to_unet_module`);
    ``lora_te1`` / ``lora_te2`` are SDXL's ``text_encoder`` / ``text_encoder_2``.
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
    component, path = KOHYA_COMPONENTS[prefix], ".".join(out)
    if component == "unet" and out[0] in ORIGINAL_ROOTS:
        try:
            path = original_to_unet_module(path)
        except UnknownModuleError as exc:
            raise ConvertError(f"{name}: {exc.args[0]}") from None
    return component, path


# --------------------------------------------------------------------------- detection


def _safetensors_keys(path: Path) -> list[str]:
    from tsuika.formats.safetensors_check import safe_open_checked

    with safe_open_checked(path) as f:
        return list(f.keys())


def _pickle(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        raise ConvertError(f"{path}: not a readable PyTorch file ({exc})") from exc


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


KOHYA_ALPHAS_KEY = "tsuika_kohya_alphas"  # header of a converted diffusers file: {name: alpha}


def _lora_metadata(path: Path) -> dict[str, str]:
    from tsuika.formats.diffusers_lora import METADATA_KEY
    from tsuika.formats.kohya_lora import read_metadata

    dropped = (METADATA_KEY, "format", KOHYA_ALPHAS_KEY)
    return {k: v for k, v in read_metadata(path).items() if k not in dropped}


def _folded(w: LoraWeights) -> LoraWeights:
    """The same update with scale 1: ``alpha / r`` folded into up, alpha = r.

    Folding into one factor keeps the way back exact where ``alpha / r`` is a
    power of two (the common 0.5, 1, 2), and within one rounding otherwise.
    """
    return LoraWeights(down=w.down, up=w.up * (float(w.alpha) / w.rank), alpha=float(w.rank))


def _unfolded(w: LoraWeights, alpha: float) -> LoraWeights:
    """The inverse of :func:`_folded` for a module whose kohya alpha was ``alpha``."""
    return LoraWeights(down=w.down, up=w.up / (float(alpha) / w.rank), alpha=float(alpha))


def lora_to_diffusers(src: Path, dst: Path) -> Path:
    """Any LoRA file -> diffusers/peft; kohya's alphas are folded and remembered in the header."""
    import json

    from tsuika.formats.diffusers_lora import save_diffusers_lora
    from tsuika.methods.lora import read_lora_file

    components: dict[str, dict[str, LoraWeights]] = {}
    alphas: dict[str, float] = {}
    for name, weights in _recorded(src, read_lora_file(src)).items():
        if weights.dora_scale is not None:
            raise ConvertError(
                f"{src}: {name}.dora_scale: DoRA has no diffusers/peft equivalent "
                "(peft's magnitude is per output row); keep it as a kohya file"
            )
        component, module_path = kohya_module_path(name)
        components.setdefault(component, {})[module_path] = _folded(weights)
        alphas[f"{component}.{module_path}"] = float(weights.alpha)
    metadata = {**_lora_metadata(src), KOHYA_ALPHAS_KEY: json.dumps(alphas, sort_keys=True)}
    return save_diffusers_lora(dst, components, metadata)


def _recorded(src: Path, modules: dict[str, LoraWeights]) -> dict[str, LoraWeights]:
    """``modules`` with the kohya alphas a converted diffusers file remembers put back."""
    import json

    from tsuika.formats.kohya_lora import read_metadata

    try:
        recorded = json.loads(read_metadata(src).get(KOHYA_ALPHAS_KEY, "{}"))
        good = isinstance(recorded, dict) and all(
            isinstance(a, int | float) and math.isfinite(a) and a > 0 for a in recorded.values()
        )
    except ValueError:
        good = False
    if not good:
        raise ConvertError(
            f"{src}: header {KOHYA_ALPHAS_KEY} must be a JSON object of positive alphas"
        )
    if not recorded:
        return modules
    out = {}
    for name, weights in modules.items():
        alpha = recorded.get(".".join(kohya_module_path(name)))
        folded = alpha is not None and float(weights.alpha) == weights.rank  # still at scale 1
        out[name] = _unfolded(weights, alpha) if folded else weights
    return out


# --------------------------------------------------------------------------- model family

# clues that a diffusers-format LoRA is for SDXL: (its components, its header) -> bool
SDXL_CLUES: tuple[Callable[[dict[str, dict[str, LoraWeights]], dict[str, str]], bool], ...] = (
    lambda components, _meta: "text_encoder_2" in components,
    lambda _components, meta: meta.get("ss_base_model_version", "").startswith("sdxl"),
    # SDXL's first up block cross-attends (SD's has no attention); only SDXL has add_embedding
    lambda components, _meta: any(
        p.startswith(("up_blocks.0.attentions.", "add_embedding."))
        for p in components.get("unet", {})
    ),
)


def lora_family(components: dict[str, dict[str, LoraWeights]], metadata: dict[str, str]) -> str:
    """``"sdxl"`` when any :data:`SDXL_CLUES` holds, else ``"sd1"`` (SD 1.x/2.x name alike)."""
    return "sdxl" if any(clue(components, metadata) for clue in SDXL_CLUES) else "sd1"


def _kohya_name(family: str, component: str, path: str) -> str:
    from tsuika.formats.kohya_lora import kohya_key
    from tsuika.methods.lora.names import component_prefixes, sdxl_unet_kohya_path

    if family == "sdxl" and component == "unet":
        path = sdxl_unet_kohya_path(path)
    return kohya_key(component_prefixes(family)[component][0], path)


def lora_to_kohya(src: Path, dst: Path) -> Path:
    """Any LoRA file -> kohya; an SDXL diffusers file gets kohya's SDXL trainer's names."""
    from tsuika.formats.diffusers_lora import load_diffusers_lora
    from tsuika.formats.kohya_lora import read_metadata, save_kohya_lora
    from tsuika.methods.lora import read_lora_file

    if detect(src) == "lora-kohya":
        return save_kohya_lora(dst, read_lora_file(src), _lora_metadata(src))
    components = load_diffusers_lora(src)
    family = lora_family(components, read_metadata(src))
    modules = {
        _kohya_name(family, component, path): weights
        for component, paths in components.items()
        for path, weights in paths.items()
    }
    return save_kohya_lora(dst, _recorded(src, modules), _lora_metadata(src))


# --------------------------------------------------------------------------- embeddings


def embedding_to(fmt: str, src: Path, dst: Path, token: str | None = None) -> Path:
    from tsuika.formats.embedding import EmbeddingInfo, embedding_format, read_embedding

    spec = embedding_format(fmt)
    if dst.suffix.lower() != spec.suffix:
        raise ConvertError(f"{dst}: a {fmt} embedding is a {spec.suffix} file")
    found = read_embedding(src)
    if not isinstance(found.vectors, torch.Tensor) and fmt != "safetensors":
        raise ConvertError(
            f"{src}: an SDXL embedding (clip_l [n, 768] + clip_g [n, 1280]) has one layout, "
            "the safetensors file A1111, ComfyUI and diffusers read (--to safetensors); "
            f"the {fmt} layout holds one encoder's vectors. diffusers loads the SDXL file "
            "once per encoder: load_textual_inversion(file['clip_l'], text_encoder=..., "
            "tokenizer=...) and file['clip_g'] with text_encoder_2 / tokenizer_2"
        )
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
