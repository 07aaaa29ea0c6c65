"""``tsuika.generate`` (implemented here; ``tsuika/generate.py`` would shadow the function
with a module of the same name): pictures from a base model with any mix of adapters and a chosen VAE.

A base model (path or loaded :class:`~tsuika.models.BaseModel`), any number
of LoRAs (``FILE[:WEIGHT]``, stacked into one low-rank product per layer),
embeddings (``FILE[:TOKEN]``; the token is the file's stem by default, as in
AUTOMATIC1111), hypernetworks (``FILE[:STRENGTH]``) and a VAE override.
Picture ``i`` is drawn from seed ``seed + i``, so a seed always gives the
same picture. Each PNG carries A1111's ``parameters`` text
(:mod:`tsuika.generation.infotext`).

A model passed in loaded is left as it was found (adapters removed, VAE
restored), on the device and dtype it was run on.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tsuika.checks import CheckError
from tsuika.models.base import BaseModel

from .adapters import Adapters, TokenSpec, WeightedSpec, attach
from .infotext import (
    embedding_hash,
    format_infotext,
    lora_hash,
    model_hash,
    number,
)
from .samplers import DEFAULT_SAMPLER, infotext_fields, sampler_key

MAX_SEED = 2**32 - 1


@dataclass
class Picture:
    """One generated picture: the image (``image.info["parameters"]`` set), its seed,
    its A1111 ``parameters`` text and, when written, its path."""

    image: Image.Image
    seed: int
    parameters: str
    path: Path | None = None


def _device_and_dtype(device: str | None, dtype: torch.dtype | str | None):
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(dtype, str):
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    if dtype is None:
        dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return torch.device(device), dtype


def _load(model, vae, device, dtype) -> tuple[BaseModel, tuple | None]:
    """The model to run and, for a model passed in loaded, its ``(vae, vae_source)`` to restore."""
    from tsuika.models import FAMILIES, load_base_model, load_vae

    if isinstance(model, BaseModel):
        if vae is None:
            return model, None
        saved = (model.vae, model.vae_source)
        param = next(model.vae.parameters())
        model.vae = load_vae(vae, kind=model.kind).to(param.device, param.dtype)
        model.vae_source = Path(vae)
        return model, saved
    loaded = load_base_model(model, vae=vae, dtype=dtype, families=FAMILIES)
    for part in (loaded.unet, loaded.text_encoder, loaded.text_encoder_2):
        if part is not None:
            part.to(device)
    loaded.vae.to(device, torch.float32)  # SD's (and SDXL's) VAE overflows in fp16: fp32
    return loaded, None


def _check_size(model: BaseModel, width: int | None, height: int | None) -> tuple[int, int]:
    native = int(model.unet.config.sample_size) * model.vae_scale_factor
    width, height = width or native, height or native
    factor = model.vae_scale_factor
    for name, value in (("width", width), ("height", height)):
        if value <= 0 or value % factor:
            raise CheckError(name, f"{name} must be a positive multiple of {factor}, got {value}")
    return width, height


def _fields(model, adapters: Adapters, *, steps, sampler, cfg, width, height) -> dict:
    """The infotext fields in A1111's order; ``Seed`` is filled in per picture."""
    source = model.source
    fields: dict[str, object] = {"Steps": steps, **infotext_fields(sampler)}
    fields.update({"CFG scale": number(cfg), "Seed": None, "Size": f"{width}x{height}"})
    if source is not None:
        fields["Model hash"] = model_hash(source)
        fields["Model"] = Path(source).stem if Path(source).is_file() else Path(source).name
    if model.vae_source is not None:
        fields["VAE hash"] = model_hash(model.vae_source)
        fields["VAE"] = Path(model.vae_source).name
    if adapters.loras:
        fields["Lora hashes"] = ", ".join(f"{_alias(p)}: {lora_hash(p)}" for p, _ in adapters.loras)
    if adapters.embeddings and adapters.embeddings.files:
        files = adapters.embeddings.files
        fields["TI hashes"] = ", ".join(
            f"{_alias(Path(w))}: {embedding_hash(p)}" for w, p in files.items()
        )
    from tsuika import __version__

    fields["Version"] = f"tsuika {__version__}"
    return fields


def _alias(path: Path) -> str:
    """A name as A1111 writes it in hash lists (``:`` and ``,`` removed)."""
    return path.stem.replace(":", "").replace(",", "")


def _recorded_prompt(prompt: str, adapters: Adapters) -> str:
    """The prompt as A1111 would record it: with its extra-network tags."""
    tags = [f"<lora:{p.stem}:{number(w)}>" for p, w in adapters.loras]
    tags += [f"<hypernet:{p.stem}:{number(s)}>" for p, s in adapters.hypernetworks]
    return " ".join([prompt, *tags]) if tags else prompt


def _next_index(folder: Path) -> int:
    taken = [int(m[1]) for p in folder.glob("*.png") if (m := re.match(r"(\d{5})-", p.name))]
    return max(taken, default=-1) + 1


def _save(picture: Picture, folder: Path, index: int) -> Path:
    info = PngInfo()
    info.add_text("parameters", picture.parameters)
    path = folder / f"{index:05d}-{picture.seed}.png"
    picture.image.save(path, pnginfo=info)
    return path


def _batches(seeds: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(seeds), size):
        yield list(seeds[start : start + size])


def generate(
    model: str | os.PathLike | BaseModel,
    prompt: str,
    *,
    negative_prompt: str = "",
    n: int = 1,
    steps: int = 20,
    cfg: float = 7.0,
    seed: int | None = None,
    width: int | None = None,
    height: int | None = None,
    sampler: str = DEFAULT_SAMPLER,
    vae: str | os.PathLike | None = None,
    loras: Iterable[WeightedSpec] = (),
    embeddings: Iterable[TokenSpec] = (),
    hypernetworks: Iterable[WeightedSpec] = (),
    out: str | os.PathLike | None = None,
    batch_size: int = 1,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
) -> list[Picture]:
    """Generate ``n`` pictures; write them to ``out`` (a folder) when given.

    ``seed`` ``None`` or ``-1`` draws one at random (recorded in the PNGs).
    ``width`` / ``height`` default to the model's native size. ``sampler``:
    ``ddim``, ``euler``, ``euler_a``, ``dpmpp_2m``, ``dpmpp_2m_karras`` (or
    A1111's labels). ``loras`` / ``hypernetworks``: ``"FILE[:WEIGHT]"`` or
    ``(path, weight)``; ``embeddings``: ``"FILE[:TOKEN]"`` or ``(path, token)``.
    """
    from .denoise import denoise, encode_prompt_states
    from .vae import decode, to_picture

    if n < 1 or steps < 1 or batch_size < 1:
        raise CheckError(
            "n", f"n, steps and batch_size must be >= 1 (got {n}, {steps}, {batch_size})"
        )
    sampler = sampler_key(sampler)
    if seed is None or seed == -1:
        seed = random.randrange(MAX_SEED)
    device_, dtype_ = _device_and_dtype(device, dtype)
    base, restore = _load(model, vae, device_, dtype_)
    width, height = _check_size(base, width, height)
    adapters = attach(base, loras=loras, embeddings=embeddings, hypernetworks=hypernetworks)
    folder = Path(out) if out is not None else None
    try:
        text_device = next(base.text_encoder.parameters()).device
        cond = encode_prompt_states(base, [adapters.expand(prompt)], text_device)
        uncond = encode_prompt_states(base, [adapters.expand(negative_prompt)], text_device)
        recorded = _recorded_prompt(prompt, adapters)
        fields = _fields(
            base, adapters, steps=steps, sampler=sampler, cfg=cfg, width=width, height=height
        )
        pictures: list[Picture] = []
        factor = base.vae_scale_factor
        for seeds in _batches([seed + i for i in range(n)], batch_size):
            latents = denoise(
                base,
                cond.repeat(len(seeds)),
                uncond.repeat(len(seeds)),
                seeds,
                latent_size=(height // factor, width // factor),
                steps=steps,
                cfg=cfg,
                sampler=sampler,
            )
            for s, pixels in zip(seeds, decode(base.vae, latents), strict=True):
                text = format_infotext(recorded, negative_prompt, {**fields, "Seed": s})
                image = to_picture(pixels)
                image.info["parameters"] = text
                pictures.append(Picture(image, s, text))
    finally:
        adapters.remove()
        if restore is not None:
            base.vae, base.vae_source = restore
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        start = _next_index(folder)
        for i, picture in enumerate(pictures):
            picture.path = _save(picture, folder, start + i)
    return pictures
