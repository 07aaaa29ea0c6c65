"""GroupNorm groups of narrow models: never instance norm (one channel a group),
which erases each channel's mean over the picture, its colour."""

from __future__ import annotations

import pytest
from tsuika.models import build_tiny_model
from tsuika.models.derive import groups_for


@pytest.mark.parametrize(
    ("channels", "groups"),
    [
        ([320, 640, 1280, 1280], 32),  # SD 1.x UNet
        ([128, 256, 512, 512], 32),  # SD 1.x VAE: 4 channels a group, still 32
        ([32, 64, 64, 64], 8),
        ([16, 16, 32, 32], 4),
        ([32, 32, 64, 64], 8),
        ([24, 48], 6),
        ([6, 12], 1),  # too narrow for 4 a group twice: one group
    ],
)
def test_groups_keep_four_channels_a_group(channels: list[int], groups: int) -> None:
    assert groups_for(channels) == groups
    assert all(c % groups == 0 for c in channels)


def test_tiny_models_have_no_instance_norm() -> None:
    model = build_tiny_model(0, vae_channels=(16, 16, 32, 32), vae_layers=1)
    for config in (model.unet.config, model.vae.config):
        assert min(config.block_out_channels) // config.norm_num_groups >= 4
    assert model.vae.config.layers_per_block == 1
