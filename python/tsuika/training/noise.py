"""Pure helpers for the diffusion training objective (no state, no model).

* DDPM forward process (Ho et al. 2020, "Denoising Diffusion Probabilistic
  Models", eq. 4): ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` with
  ``a_t = alphas_cumprod[t]`` -- the same as ``diffusers.DDPMScheduler.add_noise``.
* v-prediction target (Salimans & Ho 2022, "Progressive Distillation for Fast
  Sampling of Diffusion Models", sec. 4): ``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0``
  -- the same as ``DDPMScheduler.get_velocity``.
* SNR and min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion
  Training via Min-SNR Weighting Strategy", arXiv:2303.09556; diffusers
  ``training_utils.compute_snr``): ``snr = a_t / (1 - a_t)``; the weight is
  ``min(snr, gamma) / snr`` for an epsilon target and ``min(snr, gamma) / (snr + 1)``
  for a v target.
* Offset noise (Nicholas Guttenberg, crosslabs.org 2023, "Diffusion with
  Offset Noise"): add ``offset * N(0, 1)`` per (sample, channel), constant over
  the picture, so the model learns to change the mean brightness.
"""

from __future__ import annotations

import hashlib

import torch


def step_seed(seed: int, step: int, micro: int = 0, rank: int = 0, purpose: str = "noise") -> int:
    """A 63-bit seed from (run seed, step, micro-batch, process, purpose) alone."""
    digest = hashlib.sha256(f"tsuika:{purpose}:{seed}:{step}:{micro}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def step_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """A CPU generator seeded by :func:`step_seed`.

    Noise and timesteps drawn from it are the same whether or not a run was
    interrupted and resumed before ``step``.
    """
    return torch.Generator().manual_seed(step_seed(seed, step, micro, rank))


def _gather(values: torch.Tensor, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
    out = values.to(timesteps.device)[timesteps].float()
    return out.reshape(out.shape + (1,) * (ndim - 1))


def add_noise(
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """DDPM forward process: ``sqrt(a_t) x_0 + sqrt(1 - a_t) eps``."""
    a = _gather(alphas_cumprod, timesteps, latents.ndim)
    return (a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()).to(latents.dtype)


def velocity(
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """v-prediction target: ``sqrt(a_t) eps - sqrt(1 - a_t) x_0``."""
    a = _gather(alphas_cumprod, timesteps, latents.ndim)
    return (a.sqrt() * noise.float() - (1 - a).sqrt() * latents.float()).to(latents.dtype)


def training_target(
    prediction_type: str,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity (v_prediction)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(latents, noise, timesteps, alphas_cumprod)
    raise ValueError(f"unknown prediction_type {prediction_type!r} (epsilon | v_prediction)")


def compute_snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``a_t / (1 - a_t)`` per timestep (float32)."""
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return a / (1.0 - a)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-gamma (Hang et al. 2023); ``gamma <= 0``: ones."""
    if gamma <= 0:
        return torch.ones_like(snr)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped / snr


def sample_noise(
    latents: torch.Tensor, generator: torch.Generator, offset: float = 0.0
) -> torch.Tensor:
    """Gaussian noise like ``latents`` (+ offset noise per sample and channel)."""
    shape = latents.shape
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if offset:
        noise = noise + offset * torch.randn(
            shape[:2] + (1,) * (len(shape) - 2), generator=generator
        )
    return noise.to(latents.device, latents.dtype)


def sample_timesteps(
    batch: int, num_train_timesteps: int, generator: torch.Generator
) -> torch.Tensor:
    """Uniform integer timesteps in ``[0, num_train_timesteps)``."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, dtype=torch.long)
