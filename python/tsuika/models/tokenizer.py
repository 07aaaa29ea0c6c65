"""The CLIP tokenizer files, built offline from the BPE merges open-clip-torch ships.

Stable Diffusion's tokenizer (SD 1.x: OpenAI CLIP ViT-L/14; SD 2.x: OpenCLIP
ViT-H/14) is the same byte-level BPE with a 49408-entry vocabulary. Its merges
are in ``open_clip/bpe_simple_vocab_16e6.txt.gz``; the vocabulary is built the
way ``open_clip.tokenizer.SimpleTokenizer`` builds it: the 256 byte-level
unicode characters, the same with ``</w>``, the first 49152-256-2 merges
joined, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
SD 1.x pads with ``<|endoftext|>``; SD 2.x pads with ``!`` (id 0), as its
OpenCLIP tokenizer pads with zeros. :func:`load_clip_tokenizer` sets the SD 2.x
pad token after loading so ``!`` is not an added token (an added ``!`` would be
split out of ``!!``, unlike OpenCLIP); the files written for SD 2.x diffusers
folders name ``!`` as the pad token, as Stability's hub folders do.
SDXL has both: its first tokenizer (CLIP ViT-L) pads like SD 1.x, its second
(OpenCLIP ViT-bigG, ``tokenizer_2``) pads with ``!`` like SD 2.x, as
``open_clip.tokenizer.SimpleTokenizer`` does (:func:`load_sdxl_tokenizers`).

Files are written once into ``$XDG_CACHE_HOME/tsuika/tokenizer/<hash>`` (or
``~/.cache/...``), atomically; when that is not writable, into a temp dir.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from tsuika.errors import TsuikaError

if TYPE_CHECKING:
    import torch

N_MERGES = 49152 - 256 - 2
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD_TOKENS = {"sd1": EOS, "sd2": "!", "sdxl": EOS}
SDXL_PAD_TOKEN_2 = "!"  # tokenizer_2 (OpenCLIP ViT-bigG) pads with zeros, as open_clip does
FORMAT_VERSION = "1"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


class TokenizerBuildError(TsuikaError, RuntimeError):
    """The BPE merges could not be found or the files could not be written."""


def bpe_path() -> Path:
    """The merges file inside the installed open-clip-torch package."""
    try:
        import open_clip
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise TokenizerBuildError(
            "open-clip-torch is needed to build the CLIP tokenizer files (pip install open-clip-torch)"
        ) from err
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise TokenizerBuildError(f"BPE merges not found at {path}")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def read_merges(path: Path) -> list[tuple[str, str]]:
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise TokenizerBuildError(f"{path}: expected {N_MERGES} merge pairs")
    return merges  # type: ignore[return-value]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    units = list(bytes_to_unicode().values())
    tokens = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def write_tokenizer_files(folder: Path, *, pad_token: str = EOS, max_length: int = 77) -> None:
    """Write vocab.json, merges.txt and the two config files into ``folder``."""
    merges = read_merges(bpe_path())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tsuika" / "tokenizer"


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in TOKENIZER_FILES)


@lru_cache(maxsize=8)
def tokenizer_folder(pad_token: str = EOS) -> Path:
    """A folder holding the CLIP tokenizer files, built on first use and cached."""
    source = bpe_path()
    digest = hashlib.sha256(
        f"{FORMAT_VERSION}|{pad_token}|{source.stat().st_size}".encode()
        + source.read_bytes()[:4096]
    ).hexdigest()[:16]
    target = _cache_root() / digest
    if _complete(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    except OSError:
        fallback = Path(tempfile.mkdtemp(prefix="tsuika-tokenizer-"))
        write_tokenizer_files(fallback, pad_token=pad_token)
        return fallback
    try:
        write_tokenizer_files(staging, pad_token=pad_token)
        os.replace(staging, target)
    except OSError:
        if not _complete(target):  # lost a race only if the winner finished
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def copy_tokenizer_files(destination: Path, *, pad_token: str = EOS) -> None:
    """Copy the built tokenizer files into ``destination`` (e.g. a diffusers folder)."""
    destination.mkdir(parents=True, exist_ok=True)
    source = tokenizer_folder(pad_token)
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, destination / name)


def load_clip_tokenizer(kind: str = "sd1"):
    """A ``transformers.CLIPTokenizer`` for ``kind`` (``"sd1"``, ``"sd2"``, ``"sdxl"``), offline.

    For ``"sdxl"`` this is the first tokenizer; :func:`load_sdxl_tokenizers` gives both.
    """
    from transformers import CLIPTokenizer

    if kind not in PAD_TOKENS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(PAD_TOKENS)}")
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_folder(EOS)), local_files_only=True)
    # Set the pad token without registering it as an added token: an added "!"
    # would be split out of "!!" and break equality with OpenCLIP's ids.
    tokenizer.pad_token = PAD_TOKENS[kind]
    return tokenizer


def load_sdxl_tokenizers():
    """SDXL's two tokenizers, offline: CLIP ViT-L's (pads with ``<|endoftext|>``) and
    OpenCLIP ViT-bigG's (the same BPE, pads with ``!`` / id 0)."""
    first, second = load_clip_tokenizer("sdxl"), load_clip_tokenizer("sdxl")
    second.pad_token = SDXL_PAD_TOKEN_2  # set, not added: "!!" stays one token
    return first, second


def load_folder_tokenizer(folder: Path):
    """The ``CLIPTokenizer`` saved in ``folder``: ``vocab.json`` + ``merges.txt``, or
    ``tokenizer.json`` alone (what transformers 5's ``save_pretrained`` writes).

    When the folder holds the stock 49408-token vocabulary padding with ``!``, the
    tokenizer is built here instead, so ``!`` stays an ordinary token (see the
    module docstring); a vocabulary with added tokens (textual inversion) is kept.
    """
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token == SDXL_PAD_TOKEN_2 and len(tokenizer) == N_MERGES + 512 + 2:
        stock = load_clip_tokenizer("sd2")
        stock.model_max_length = tokenizer.model_max_length
        return stock
    return tokenizer


def prompt_ids(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Token ids ``[B, model_max_length]`` (77), padded and truncated as SD pipelines do."""
    return tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
