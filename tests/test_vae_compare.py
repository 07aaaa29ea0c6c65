"""``tsuika vae compare`` with two tiny VAEs: a fitted one (the model's own) and a perturbed
copy, on pictures drawn here; metrics, the best, the side-by-side PNG, tiled large pictures."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from tsuika.generation.vae import round_trip, to_picture, to_tensor
from tsuika.models import save_diffusers
from tsuika.models.tiny import build_tiny_model, tiny_vae_config
from tsuika.vae_compare import compare, psnr, ssim

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random pictures in [-1, 1] (bicubic-upsampled 4 x 4 noise)."""
    small = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def fit_vae(vae, steps: int) -> None:
    """Fit ``vae`` to :func:`blobs` for ``steps`` Adam steps (a VAE that reconstructs), then
    freeze it in eval mode."""
    vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), 2e-3)
    for step in range(steps):
        x = blobs(4, 32, step)
        loss = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mode()).sample, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    """A factor-2 VAE fitted briefly to smooth pictures (a VAE that reconstructs), saved as a
    model's own VAE; and a copy with noisy decoder weights."""
    from diffusers import AutoencoderKL

    folder = tmp_path_factory.mktemp("vaes")
    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_vae_config(2, (16, 32), 32))
    fit_vae(vae, 120)
    model = build_tiny_model(seed=0)
    model.vae = vae
    save_diffusers(model, folder / "model")
    noisy = copy.deepcopy(vae)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in noisy.decoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    noisy.save_pretrained(folder / "noisy")
    pictures = folder / "pictures"
    pictures.mkdir()
    for i, x in enumerate(blobs(2, 48, 100)):
        to_picture(x).save(pictures / f"small{i}.png")
    to_picture(blobs(1, 160, 200)[0]).save(pictures / "large.png")
    return {"model": folder / "model", "noisy": folder / "noisy", "pictures": pictures, "vae": vae}


def test_metrics():
    a = torch.zeros(3, 16, 16)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    picture = (blobs(1, 32, 0)[0] + 1) / 2
    assert ssim(picture, picture) == pytest.approx(1.0)
    noise = torch.randn(picture.shape, generator=torch.Generator().manual_seed(0))
    assert (
        1.0
        > ssim(picture, (picture + 0.05 * noise).clamp(0, 1))
        > ssim(picture, (picture + 0.2 * noise).clamp(0, 1))
    )


def test_compare_names_the_model_vae_best(vaes, tmp_path):
    out = tmp_path / "side.png"
    report = compare([vaes["pictures"]], [vaes["noisy"]], model=vaes["model"], out=out)
    names = [v["name"] for v in report["vaes"]]
    assert names == ["model:model", "noisy"]
    assert report["best"] == "model:model"
    own, noisy = report["vaes"]
    assert own["psnr"] > noisy["psnr"] + 1 and own["ssim"] > noisy["ssim"]
    assert report["tiled"] == [str(vaes["pictures"] / "large.png")]
    # per-picture numbers are what a direct round trip gives
    picture = Image.open(vaes["pictures"] / "small0.png")
    x = to_tensor(picture)
    y = round_trip(vaes["vae"], x).clamp(-1, 1)
    row = next(r for r in own["per_picture"] if r["picture"].endswith("small0.png"))
    assert row["psnr"] == pytest.approx(psnr((x[0] + 1) / 2, (y[0] + 1) / 2), abs=1e-6)
    sheet = Image.open(out)
    assert sheet.size == (48 * 3, 14 + 48 * 3)  # original + 2 VAEs, 3 pictures; crop = 48


def test_large_picture_goes_tiled_and_stays_close(vaes, monkeypatch):
    vae = vaes["vae"]
    tile = blobs(1, 16, 5)
    x = tile.repeat(1, 1, 10, 10)  # 160 x 160, the same statistics in every tile
    whole = round_trip(vae, x, tile_above=10_000)
    calls = []
    original = type(vae).tiled_decode
    monkeypatch.setattr(
        type(vae), "tiled_decode", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    tiled = round_trip(vae, x)  # default: tiled above 2 x sample_size = 64 px
    assert calls and not vae.use_tiling  # went tiled, and tiling is off again
    a, b, t = (x[0] + 1) / 2, (whole[0].clamp(-1, 1) + 1) / 2, (tiled[0].clamp(-1, 1) + 1) / 2
    assert psnr(b, t) > 20  # tiles differ only at seams and in per-tile GroupNorm statistics
    assert abs(psnr(a, b) - psnr(a, t)) < 1.5


def test_cli_json(vaes, tmp_path):
    from tsuika.cli import main

    out = tmp_path / "cmp.png"
    args = ["vae", "compare", str(vaes["pictures"] / "small0.png"), str(vaes["pictures"] / "small1.png"),
            "--vae", str(vaes["noisy"]), "--model", str(vaes["model"]), "--out", str(out), "--json"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["best"] == "model:model" and report["side_by_side"] == str(out) and out.is_file()
    table = CliRunner().invoke(main, args[:-1])
    assert table.exit_code == 0 and "best: model:model" in table.output and "PSNR" in table.output
    none = CliRunner().invoke(main, args[:3])
    assert none.exit_code != 0 and "--vae" in none.output
