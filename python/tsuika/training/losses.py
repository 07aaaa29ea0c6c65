"""The prior-preservation loss of DreamBooth, as pure functions (no state, no model).

Ruiz et al. 2023, "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for
Subject-Driven Generation" (arXiv:2208.12242), eq. 2: the instance term plus
``lambda`` times the same denoising loss on class pictures that the base model
generated from the class prompt. Combined with min-SNR-gamma weighting
(Hang et al. 2023, arXiv:2303.09556) as ``tsuika.training.noise`` computes it.
"""

from __future__ import annotations

import torch


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample, in float32: shape ``[batch]``."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def prior_preservation_loss(
    per_sample_loss: torch.Tensor,
    n_instance: int,
    prior_loss_weight: float,
    snr_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean(instance half) + prior_loss_weight * mean(class half)``.

    ``per_sample_loss`` is ``[n_instance + n_class]``: the instance samples
    first, then the class samples the loop appended (the paired batch).
    ``snr_weights`` (optional, same shape) are each sample's own min-SNR
    weight, computed from *that sample's* timestep; they multiply the losses
    before the halves are averaged, so both halves are weighted correctly.

    The pitfall this avoids: diffusers' ``train_dreambooth.py`` splits the
    prediction into halves, then computes ``compute_snr(noise_scheduler,
    timesteps)`` on the timesteps of the whole doubled batch and multiplies the
    instance half by them. With one instance picture that broadcasts ``[1]`` by
    ``[2]``, so the instance loss is scaled by the mean of the instance *and*
    class weights, and the class half gets no min-SNR weight at all; with more
    pictures the shapes do not match. Here each half keeps its own weights.

    With no class samples (``n_instance == len(per_sample_loss)``) this is the
    plain (weighted) mean of the instance losses.
    """
    if per_sample_loss.ndim != 1:
        raise ValueError(f"per_sample_loss must be 1-D [batch], got {tuple(per_sample_loss.shape)}")
    total = per_sample_loss.shape[0]
    if not 0 < n_instance <= total:
        raise ValueError(f"n_instance must be in 1..{total}, got {n_instance}")
    losses = per_sample_loss.float()
    if snr_weights is not None:
        if snr_weights.shape != per_sample_loss.shape:
            raise ValueError(
                f"snr_weights {tuple(snr_weights.shape)} must match per_sample_loss "
                f"{tuple(per_sample_loss.shape)}: one weight per sample, from its own timestep"
            )
        losses = losses * snr_weights.to(losses.device, torch.float32)
    instance = losses[:n_instance].mean()
    if n_instance == total:
        return instance
    return instance + prior_loss_weight * losses[n_instance:].mean()
