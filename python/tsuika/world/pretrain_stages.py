"""The two stages of pretraining the tiny world's Stable Diffusion.

Stage 1 (:func:`train_vae`): the AutoencoderKL learns to reconstruct rendered
pictures: L1 + L2 on pixels, the shape's pixels weighted ``foreground_weight``
times more than the background (a shape covers a tenth of a picture; unweighted,
the first thousands of steps only learn backgrounds), plus a very small KL
term as in the latent diffusion paper's KL-regularised autoencoder (Rombach et
al. 2022). The posterior's log-variance starts at :data:`INITIAL_LOGVAR`
(std 0.02) instead of 0 (std 1): sampled latents are then informative from
the first step. :func:`latent_scaling_factor` is 1/std of the latents, as
SD 1.x's 0.18215 was chosen.

Stage 2 (:func:`train_denoiser`): the UNet and the CLIP text model learn
together to predict the noise (DDPM, 1000 steps, SD's scaled-linear betas),
with min-SNR-5 loss weights (Hang et al. 2023) and 10% of captions replaced by
the empty prompt so classifier-free guidance works. Latent pixels under the
shape weigh ``foreground_weight`` times more here too: with even weights the
denoiser learned colours fully but drew every shape as a blob.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from tsuika.training.noise import add_noise, compute_snr, min_snr_weights

from .pretrain_data import WorldData

Log = Callable[[str], None]
INITIAL_LOGVAR = -8.0


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_vae(
    vae,
    data: WorldData,
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    log: Log,
    foreground_weight: float = 4.0,
    kl_weight: float = 1e-6,
) -> list[float]:
    """Fit ``vae`` on ``data.pixels``; returns the reconstruction loss per logged step."""
    generator = torch.Generator().manual_seed(seed)
    latent_channels = vae.config.latent_channels
    with torch.no_grad():  # quant_conv's second half is the log-variance
        vae.quant_conv.weight[latent_channels:].zero_()
        vae.quant_conv.bias[latent_channels:].fill_(INITIAL_LOGVAR)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    curve, start = [], time.time()
    for step in range(steps):
        _set_lr(optimizer, cosine_lr(step, steps, lr, warmup=min(50, steps // 10 + 1)))
        index = torch.randint(0, len(data.pixels), (batch,), generator=generator)
        x = data.pixels[index]
        weight = 1.0 + foreground_weight * data.foreground[index].float()
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        error = vae.decode(z).sample - x
        rec = ((error.abs() + error.pow(2)) * weight).mean() / weight.mean()
        kl = posterior.kl().mean() / z[0].numel()
        loss = rec + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 100.0)  # only against blow-ups
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            curve.append(rec.item())
            log(
                f"vae step {step}/{steps} rec {rec.item():.4f} kl {kl.item():.3f} "
                f"std {posterior.std.mean().item():.3f} "
                f"({time.time() - start:.0f}s)"
            )
    vae.eval()
    return curve


@torch.no_grad()
def encode_latents(
    vae, pixels: torch.Tensor, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations (unscaled), [N, 4, h, w] each."""
    means, stds = [], []
    for i in range(0, len(pixels), batch):
        posterior = vae.encode(pixels[i : i + batch]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(means: torch.Tensor, stds: torch.Tensor) -> float:
    """1 / std of sampled latents (mean and spread both count), rounded to 5 digits."""
    variance = means.var() + stds.pow(2).mean()
    return round(float(1.0 / variance.sqrt()), 5)


def train_denoiser(
    unet,
    text_encoder,
    scheduler,
    data: WorldData,
    latents: tuple[torch.Tensor, torch.Tensor],
    scaling: float,
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    log: Log,
    caption_dropout: float = 0.1,
    snr_gamma: float = 5.0,
    foreground_weight: float = 3.0,
) -> list[float]:
    """Fit ``unet`` + ``text_encoder`` to predict noise; returns the loss per logged step."""
    generator = torch.Generator().manual_seed(seed)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    alphas = scheduler.alphas_cumprod
    means, stds = latents
    factor = data.pixels.shape[-1] // means.shape[-1]  # a latent pixel covers factor^2 pixels
    foreground = torch.nn.functional.max_pool2d(data.foreground.float(), factor)
    unet.train()
    text_encoder.train()
    curve, running, start = [], 0.0, time.time()
    for step in range(steps):
        _set_lr(optimizer, cosine_lr(step, steps, lr, warmup=min(200, steps // 10 + 1)))
        index = torch.randint(0, len(means), (batch,), generator=generator)
        z0 = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
        z0 = z0 * scaling
        which = torch.randint(0, 2, (batch,), generator=generator)
        ids = data.ids[index, which]
        drop = torch.rand(batch, generator=generator) < caption_dropout
        ids = torch.where(drop[:, None], data.empty[None], ids)
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.randint(0, len(alphas), (batch,), generator=generator)
        noisy = add_noise(z0, noise, t, alphas)
        context = text_encoder(ids)[0]
        prediction = unet(noisy, t, context).sample
        weight = 1.0 + foreground_weight * foreground[index]
        per_sample = ((prediction - noise).pow(2) * weight).mean(dim=(1, 2, 3))
        per_sample = per_sample / weight.mean(dim=(1, 2, 3))
        weights = min_snr_weights(compute_snr(t, alphas), snr_gamma, "epsilon")
        loss = (per_sample * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        running += loss.item()
        if (step + 1) % 50 == 0 or step == steps - 1:
            n = (step % 50) + 1
            curve.append(running / n)
            log(f"unet step {step + 1}/{steps} loss {running / n:.4f} ({time.time() - start:.0f}s)")
            running = 0.0
    unet.eval()
    text_encoder.eval()
    return curve
