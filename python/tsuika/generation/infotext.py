"""AUTOMATIC1111's ``parameters`` text (its "infotext") and the short file hashes it carries.

Format (A1111 ``modules/processing.py`` ``create_infotext``)::

    {prompt}
    Negative prompt: {negative}          <- only when there is one
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: ..., Model: ...

The last line is ``key: value`` pairs joined by ``", "``; a value holding
``,``, ``:`` or a newline is written as a JSON string
(``infotext_utils.quote``). LoRAs appear as ``<lora:name:weight>`` in the
prompt (A1111 keeps the tags of extra networks in the prompt it records) and
as ``Lora hashes: "name: hash, ..."``; embeddings as ``TI hashes``.

Hashes (A1111 ``modules/hashes.py``): a checkpoint's and a VAE's short hash
is the first 10 hex digits of the file's SHA-256; an embedding's the first
12; a LoRA's the first 12 of the "addnet" hash of a ``.safetensors`` (the
SHA-256 of everything after the header), of the whole file otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

_BLOCK = 1 << 20


def sha256(path: str | os.PathLike, *, skip_safetensors_header: bool = False) -> str:
    """The file's SHA-256 hex digest; with ``skip_safetensors_header``, of the data after it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if skip_safetensors_header:
            header_len = int.from_bytes(f.read(8), "little")
            f.seek(8 + header_len)
        for chunk in iter(lambda: f.read(_BLOCK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_hash(path: str | os.PathLike) -> str | None:
    """A checkpoint's or VAE's short hash (10 digits); ``None`` for a folder."""
    return sha256(path)[:10] if Path(path).is_file() else None


def lora_hash(path: str | os.PathLike) -> str:
    safetensors = Path(path).suffix.lower() == ".safetensors"
    return sha256(path, skip_safetensors_header=safetensors)[:12]


def embedding_hash(path: str | os.PathLike) -> str:
    return sha256(path)[:12]


def quote(value: object) -> str:
    """A1111's ``quote``: JSON-quote values that hold ``,`` ``:`` or a newline."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def number(value: float) -> str:
    """``7.0`` -> ``7``, ``7.5`` -> ``7.5`` (A1111 writes CFG scale and weights this way)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def format_infotext(prompt: str, negative_prompt: str, fields: Mapping[str, object]) -> str:
    """The ``parameters`` text; ``None`` values are left out, as A1111 does."""
    pairs = ", ".join(
        k if k == v else f"{k}: {quote(v)}" for k, v in fields.items() if v is not None
    )
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{pairs}".strip()


_PAIR = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """``(prompt, negative prompt, fields)`` from a ``parameters`` text (A1111's layout)."""
    *lines, last = text.strip().split("\n")
    if not _PAIR.match(last) or "Steps:" not in last:
        lines, last = [*lines, last], ""
    prompt_lines, negative_lines, target = [], [], None
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:") :].strip()
        (negative_lines if target is negative_lines else prompt_lines).append(line)
    fields: dict[str, str] = {}
    for key, value in _PAIR.findall(last):
        value = value.strip()
        fields[key.strip()] = json.loads(value) if value.startswith('"') else value
    return "\n".join(prompt_lines).strip(), "\n".join(negative_lines).strip(), fields
