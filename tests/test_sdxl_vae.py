"""``tsuika vae compare`` on SDXL VAEs: a tiny SDXL model's own VAE from its diffusers
folder, the same VAE from the model's SDXL single file, a bare SDXL VAE file
(``encoder.*`` / ``decoder.*``, as ``sdxl_vae.safetensors``) and a worse VAE in
an SDXL single file stored in fp16 -- compared in float32 (SDXL's VAE
overflows in fp16), on drawn pictures.

Independent reader: diffusers' ``AutoencoderKL.from_pretrained`` (the folder)
and ``AutoencoderKL.from_single_file`` (the bare file) give the VAEs whose
round trips the reported PSNRs must equal.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file
from test_vae_compare import blobs, fit_vae
from tsuika.generation.vae import round_trip, to_picture, to_tensor
from tsuika.models import build_tiny_sdxl_model, save_diffusers
from tsuika.models.single_file import save_single_file
from tsuika.vae_compare import load_vaes, psnr

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The tiny SDXL model with its VAE fitted briefly (a VAE that reconstructs), as a
    diffusers folder and a single file; a bare copy of that VAE in fp16; and a model
    whose VAE decoder is noisy, as an fp16 single file."""
    root = tmp_path_factory.mktemp("sdxl_vaes")
    model = build_tiny_sdxl_model(0)
    torch.manual_seed(0)
    fit_vae(model.vae, 80)
    folder = save_diffusers(model, root / "base")
    single = save_single_file(model, root / "base.safetensors")
    prefix = "first_stage_model."
    bare = {
        k[len(prefix) :]: v.half() for k, v in load_file(single).items() if k.startswith(prefix)
    }
    save_file(bare, str(root / "sdxl_vae.safetensors"))
    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in noisy.vae.decoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    save_single_file(noisy, root / "noisy.safetensors", dtype=torch.float16)
    pictures = root / "pictures"
    pictures.mkdir()
    for i, x in enumerate(blobs(2, 48, 100)):
        to_picture(x).save(pictures / f"drawn{i}.png")
    return {
        "folder": folder,
        "single": single,
        "bare": root / "sdxl_vae.safetensors",
        "noisy": root / "noisy.safetensors",
        "pictures": pictures,
    }


def _psnr_of(vae, picture: Path) -> float:
    x = to_tensor(Image.open(picture))
    with torch.no_grad():
        y = round_trip(vae, x).clamp(-1, 1)
    return psnr((x[0] + 1) / 2, (y[0] + 1) / 2)


def test_cli_compares_sdxl_vaes_from_folders_and_single_files(files, tmp_path) -> None:
    from diffusers import AutoencoderKL
    from tsuika.cli import main

    out = tmp_path / "side.png"
    args = ["vae", "compare", str(files["pictures"]), "--model", str(files["folder"])]
    for name in ("single", "bare", "noisy"):
        args += ["--vae", str(files[name])]
    result = CliRunner().invoke(main, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(result.output)
    scores = {v["name"]: v for v in report["vaes"]}
    assert list(scores) == ["model:base", "base", "sdxl_vae", "noisy"]
    assert report["best"] != "noisy"  # the fp16 copy may edge out the fp32 one by rounding
    # the same VAE from the folder and from the SDXL single file scores the same
    assert scores["base"]["psnr"] == pytest.approx(scores["model:base"]["psnr"], abs=1e-9)
    # the fp16 bare file is compared in float32: within fp16 rounding of the weights
    assert scores["sdxl_vae"]["psnr"] == pytest.approx(scores["base"]["psnr"], abs=0.05)
    assert scores["model:base"]["psnr"] > scores["noisy"]["psnr"] + 1
    assert scores["model:base"]["ssim"] > scores["noisy"]["ssim"]
    assert Image.open(out).size == (48 * 5, 14 + 48 * 2)  # original + 4 VAEs, 2 pictures

    reference = AutoencoderKL.from_pretrained(str(files["folder"] / "vae"), local_files_only=True)
    picture = files["pictures"] / "drawn0.png"
    row = next(r for r in scores["model:base"]["per_picture"] if r["picture"] == str(picture))
    assert row["psnr"] == pytest.approx(_psnr_of(reference.eval(), picture), abs=1e-6)


def test_fp16_sdxl_vae_files_are_compared_in_float32(files) -> None:
    from diffusers import AutoencoderKL

    named = load_vaes([files["bare"], files["noisy"]], model=files["single"])
    assert [v.dtype for _, _, v in named] == [torch.float32] * 3
    theirs = AutoencoderKL.from_single_file(
        str(files["bare"]), config=str(files["folder"]), subfolder="vae", local_files_only=True
    ).float()
    picture = files["pictures"] / "drawn1.png"
    ours = dict((name, vae) for name, _, vae in named)["sdxl_vae"]
    assert _psnr_of(ours, picture) == pytest.approx(_psnr_of(theirs.eval(), picture), abs=1e-6)
