"""VAE encode/decode of whole pictures, tiled when they are large (so a CPU copes).

Small pictures go through the VAE whole. Past ``tile_above`` pixels on a
side (default: twice the VAE's ``sample_size``, 1024 for SD's VAE) the
VAE's own tiled path is used (diffusers ``AutoencoderKL.enable_tiling``:
tiles of ``sample_size`` pixels overlapping by a quarter, blended
linearly), one picture at a time (slicing). Tiling changes the GroupNorm
statistics per tile, so the result is close to, not equal to, the whole
pass.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def vae_tile_size(vae) -> int:
    size = vae.config.sample_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def wants_tiling(vae, height: int, width: int, tile_above: int | None = None) -> bool:
    limit = 2 * vae_tile_size(vae) if tile_above is None else tile_above
    return max(height, width) > limit


class _Tiling:
    """Switch the VAE's tiling on for a block, leaving it as it was afterwards."""

    def __init__(self, vae, on: bool) -> None:
        self.vae, self.on, self.was = vae, on, bool(getattr(vae, "use_tiling", False))

    def __enter__(self):
        if self.on:
            self.vae.enable_tiling()
        return self

    def __exit__(self, *exc) -> None:
        if self.on and not self.was:
            self.vae.disable_tiling()


def to_tensor(picture: Image.Image) -> torch.Tensor:
    """RGB picture -> ``[1, 3, H, W]`` float32 in [-1, 1]."""
    array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def to_picture(tensor: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` in [-1, 1] -> RGB picture (rounded, clamped)."""
    array = ((tensor.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), "RGB")


@torch.no_grad()
def decode(vae, latents: torch.Tensor, *, tile_above: int | None = None) -> torch.Tensor:
    """Scaled latents (as the UNet makes them) -> pixels ``[B, 3, H, W]`` in [-1, 1]."""
    param = next(vae.parameters())
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = latents.shape[-2] * factor, latents.shape[-1] * factor
    out = []
    with _Tiling(vae, wants_tiling(vae, h, w, tile_above)):
        for one in latents.split(1):  # slicing: one picture at a time
            z = one.to(param.device, param.dtype) / vae.config.scaling_factor
            out.append(vae.decode(z).sample.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def round_trip(vae, pixels: torch.Tensor, *, tile_above: int | None = None) -> torch.Tensor:
    """``[1, 3, H, W]`` in [-1, 1] -> encoded (distribution mode) and decoded again."""
    param = next(vae.parameters())
    h, w = pixels.shape[-2:]
    with _Tiling(vae, wants_tiling(vae, h, w, tile_above)):
        z = vae.encode(pixels.to(param.device, param.dtype)).latent_dist.mode()
        return vae.decode(z).sample.float().cpu()
