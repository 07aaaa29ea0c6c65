"""Pure helpers of the training objective: forward process, targets, min-SNR, seeds."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from tsuika.training.losses import per_sample_mse, prior_preservation_loss
from tsuika.training.noise import (
    add_noise,
    compute_snr,
    min_snr_weights,
    sample_noise,
    sample_timesteps,
    step_generator,
    training_target,
    velocity,
)

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.fixture
def scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, **SD)


@pytest.fixture
def tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    eps = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    return x0, eps, t


def test_add_noise_and_velocity_match_diffusers(scheduler, tensors) -> None:
    x0, eps, t = tensors
    ac = scheduler.alphas_cumprod
    torch.testing.assert_close(add_noise(x0, eps, t, ac), scheduler.add_noise(x0, eps, t))
    torch.testing.assert_close(velocity(x0, eps, t, ac), scheduler.get_velocity(x0, eps, t))


def test_v_prediction_identity_recovers_clean_latents_and_noise(scheduler, tensors) -> None:
    # With x_t = a x0 + s eps and v = a eps - s x0 (a^2 + s^2 = 1):
    # x0 = a x_t - s v and eps = s x_t + a v.
    x0, eps, t = tensors
    ac = scheduler.alphas_cumprod
    xt = add_noise(x0, eps, t, ac)
    v = training_target("v_prediction", x0, eps, t, ac)
    a = ac[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - ac[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(a * xt - s * v, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s * xt + a * v, eps, atol=1e-5, rtol=1e-5)
    assert training_target("epsilon", x0, eps, t, ac) is eps
    with pytest.raises(ValueError, match="sample"):
        training_target("sample", x0, eps, t, ac)


def test_snr_and_min_snr_weights_against_hand_numbers() -> None:
    # alphas_cumprod chosen so snr = a / (1 - a) is round: 0.8 -> 4, 0.5 -> 1, 0.2 -> 0.25, 0.95 -> 19
    ac = torch.tensor([0.8, 0.5, 0.2, 0.95])
    t = torch.arange(4)
    snr = compute_snr(t, ac)
    torch.testing.assert_close(snr, torch.tensor([4.0, 1.0, 0.25, 19.0]))
    # epsilon: min(snr, 5) / snr
    eps_w = min_snr_weights(snr, 5.0, "epsilon")
    torch.testing.assert_close(eps_w, torch.tensor([1.0, 1.0, 1.0, 5.0 / 19.0]))
    # v-prediction: min(snr, 5) / (snr + 1)
    v_w = min_snr_weights(snr, 5.0, "v_prediction")
    torch.testing.assert_close(v_w, torch.tensor([4 / 5, 1 / 2, 0.25 / 1.25, 5 / 20]))
    # gamma = 1 clips everything above snr 1
    torch.testing.assert_close(
        min_snr_weights(snr, 1.0, "epsilon"), torch.tensor([0.25, 1.0, 1.0, 1 / 19])
    )
    assert torch.equal(min_snr_weights(snr, 0.0, "epsilon"), torch.ones(4))


def test_weighted_mse_per_sample() -> None:
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)])
    per = per_sample_mse(pred, target)
    assert per.tolist() == [1.0, 9.0]
    # without class samples the prior loss is the plain (weighted) mean
    assert prior_preservation_loss(per, 2, 1.0).item() == pytest.approx((1 + 9) / 2)
    weights = torch.tensor([1.0, 0.5])
    assert prior_preservation_loss(per, 2, 1.0, weights).item() == pytest.approx((1 + 4.5) / 2)


def test_step_generator_depends_only_on_its_inputs() -> None:
    def draw(*args: int) -> torch.Tensor:
        return torch.randn(5, generator=step_generator(*args))

    assert torch.equal(draw(0, 3), draw(0, 3))
    for other in [(1, 3), (0, 4), (0, 3, 1), (0, 3, 0, 1)]:
        assert not torch.equal(draw(0, 3), draw(*other)), other


def test_noise_offset_is_constant_over_the_picture() -> None:
    latents = torch.zeros(3, 4, 8, 8)
    plain = sample_noise(latents, torch.Generator().manual_seed(1))
    offset = sample_noise(latents, torch.Generator().manual_seed(1), offset=0.5)
    diff = offset - plain
    assert diff.abs().max() > 0
    # one value per (sample, channel), the same at every pixel
    torch.testing.assert_close(diff, diff[:, :, :1, :1].expand_as(diff))


def test_timesteps_cover_the_range() -> None:
    t = sample_timesteps(10_000, 1000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) == 0 and int(t.max()) == 999
