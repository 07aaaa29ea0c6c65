"""``tsuika merge``: bake LoRAs (and a VAE) into a single-file checkpoint.

Each LoRA's update is computed against the original weight and the updates
are summed, ``W' = W + sum_i (f_i(W) - W)`` -- for plain LoRA
``W + sum_i m_i (alpha_i / r_i) up_i down_i``; for DoRA the file's
renormalised weight minus ``W`` -- which is how A1111 combines several
networks on one layer (``extensions-builtin/Lora/networks.py``: every
network's ``calc_updown`` is taken from the original weight). The result is
written in the original Stable Diffusion layout
(:func:`tsuika.models.save_single_file`; for SDXL the ``sgm`` layout with
``conditioner.embedders.0/1``), which A1111, ComfyUI and diffusers'
``from_single_file`` read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch

from tsuika.generation.adapters import WeightedSpec, parse_weighted
from tsuika.models.base import BaseModel


@torch.no_grad()
def bake_loras(model: BaseModel, loras: Iterable[WeightedSpec]) -> int:
    """Add the updates of ``loras`` (``FILE[:WEIGHT]`` specs) to ``model``'s weights in place.

    Returns the number of layers changed. Errors name the file and key.
    """
    from tsuika.methods.lora import apply_lora_file, remove

    updates: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for spec in loras:
        path, weight = parse_weighted(spec, "LoRA")
        layers = apply_lora_file(model, path, weight)
        try:
            for name, layer in layers.items():
                base = layer.base_layer.weight
                delta = layer.merged_weight().float() - base.float()
                key = (id(base), name)
                previous = updates.get(key)
                updates[key] = (base, delta if previous is None else previous[1] + delta)
        finally:
            for root in (model.unet, model.text_encoder, model.text_encoder_2):
                if root is not None:
                    remove(root)
    for weight, delta in updates.values():
        weight.copy_((weight.float() + delta).to(weight.dtype))
    return len(updates)


def merge(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    loras: Iterable[WeightedSpec] = (),
    vae: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Load ``model`` (with ``vae`` in place of its own), bake ``loras``, write ``out``
    (``.safetensors``, original layout; ``dtype`` e.g. ``torch.float16`` to halve it)."""
    from tsuika.models import FAMILIES, ModelFileError, load_base_model, save_single_file

    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise ModelFileError(f"{out}: merge writes a .safetensors file")
    base = load_base_model(model, vae=vae, families=FAMILIES)
    specs = list(loras)
    bake_loras(base, specs)
    notes = {
        "tsuika.merged_loras": ", ".join(
            f"{p.name}:{w:g}" for p, w in (parse_weighted(s) for s in specs)
        ),
        "tsuika.base_model": Path(model).name,
    }
    if vae is not None:
        notes["tsuika.vae"] = Path(vae).name
    return save_single_file(base, out, dtype=dtype, metadata=notes)
