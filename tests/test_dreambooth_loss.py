"""The prior-preservation loss helper against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch
from tsuika.training.losses import per_sample_mse, prior_preservation_loss
from tsuika.training.noise import compute_snr, min_snr_weights

LOSSES = torch.tensor([1.0, 2.0, 3.0, 4.0])  # instance 0, instance 1, class 0, class 1
WEIGHTS = torch.tensor([0.5, 1.0, 0.25, 2.0])


@pytest.mark.parametrize(
    ("n_instance", "prior_weight", "weights", "expected"),
    [
        (2, 1.0, None, 1.5 + 3.5),  # mean(1, 2) + 1 * mean(3, 4)
        (2, 0.5, None, 1.5 + 0.5 * 3.5),
        (2, 0.0, None, 1.5),
        # (0.5 + 2) / 2 + 0.5 * (0.75 + 8) / 2 = 1.25 + 2.1875
        (2, 0.5, WEIGHTS, 3.4375),
        (4, 1.0, None, 2.5),  # no class half: the plain mean
        (1, 1.0, None, 1.0 + 3.0),  # one instance sample, three class samples
        (1, 2.0, WEIGHTS, 0.5 + 2.0 * (2.0 + 0.75 + 8.0) / 3),
    ],
)
def test_halves_are_averaged_separately(n_instance, prior_weight, weights, expected) -> None:
    got = prior_preservation_loss(LOSSES, n_instance, prior_weight, weights)
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_min_snr_weights_come_from_each_samples_own_timestep() -> None:
    """One instance and one class sample at very different timesteps: the doubled-batch
    shortcut (instance loss times the mean of both weights, class half unweighted)
    gives another number; ours matches the per-sample hand computation."""
    alphas = torch.linspace(0.999, 0.01, 1000)
    steps = torch.tensor([10, 900])
    snr = compute_snr(steps, alphas)
    weights = min_snr_weights(snr, 5.0, "epsilon")
    assert weights[0] < 0.1 and weights[1] == pytest.approx(1.0)  # the weights truly differ
    losses = torch.tensor([2.0, 3.0])
    ours = float(prior_preservation_loss(losses, 1, 1.0, weights))
    hand = 2.0 * float(weights[0]) + 1.0 * 3.0 * float(weights[1])
    assert ours == pytest.approx(hand, rel=1e-6)
    doubled_batch = float((losses[:1] * weights).mean() + losses[1:].mean())
    assert abs(ours - doubled_batch) > 0.5


def test_gradient_reaches_each_half_with_its_weight() -> None:
    losses = LOSSES.clone().requires_grad_(True)
    prior_preservation_loss(losses, 2, 0.5, WEIGHTS).backward()
    expected = torch.tensor([0.5 / 2, 1.0 / 2, 0.5 * 0.25 / 2, 0.5 * 2.0 / 2])
    torch.testing.assert_close(losses.grad, expected)


@pytest.mark.parametrize(
    ("losses", "n", "weights", "message"),
    [
        (torch.ones(2, 2), 1, None, "1-D"),
        (torch.ones(4), 0, None, "n_instance"),
        (torch.ones(4), 5, None, "n_instance"),
        (torch.ones(4), 2, torch.ones(8), "one weight per sample"),
    ],
)
def test_bad_arguments_are_refused(losses, n, weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        prior_preservation_loss(losses, n, 1.0, weights)


def test_per_sample_mse() -> None:
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    torch.testing.assert_close(per_sample_mse(pred, target), torch.tensor([1.0, 4.0]))
    with pytest.raises(ValueError, match="differ"):
        per_sample_mse(pred, target[:1])
