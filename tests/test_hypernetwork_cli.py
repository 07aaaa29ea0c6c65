"""`tsuika train` with method.name = "hypernetwork" end to end on a tiny model:
the A1111 file it writes loads back strictly, and applying it to a fresh model
changes the UNet exactly as far as its strength says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw
from tsuika.cli.train import train as train_command
from tsuika.formats.a1111_hypernetwork import load_hypernetwork_file
from tsuika.methods.hypernetwork import apply_hypernetwork_file
from tsuika.models import load_base_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    folder = root / "2_stripes"
    folder.mkdir()
    for i in range(4):
        image = Image.new("RGB", (64, 64), (240, 240, 240))
        draw = ImageDraw.Draw(image)
        for x in range(i, 64, 8):
            draw.line((x, 0, x, 63), fill=(30, 30, 200), width=3)
        image.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a picture in stripes style")
    return root


@pytest.mark.parametrize("fmt, suffix", [("a1111", ".pt"), ("safetensors", ".safetensors")])
def test_hypernetwork_run(tiny_model_dir: Path, dataset: Path, tmp_path: Path, fmt, suffix) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f"""
[model]
path = {json.dumps(str(tiny_model_dir))}
[data]
path = {json.dumps(str(dataset))}
resolution = 64
min_bucket = 32
max_bucket = 128
bucket_step = 32
[method]
name = "hypernetwork"
dims = [32, 64]
layer_structure = [1, 2, 1]
activation = "relu"
[training]
steps = 3
batch_size = 2
learning_rate = 1e-3
save_every = 0
[output]
dir = {json.dumps(str(tmp_path / "out"))}
name = "stripes"
format = "{fmt}"
"""
    )
    result = CliRunner().invoke(train_command, [str(cfg)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    final = Path(summary["final_file"])
    assert final == tmp_path / "out" / f"stripes{suffix}"
    loaded = load_hypernetwork_file(final)
    assert loaded is not None

    model = load_base_model(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        base = model.unet(x, torch.tensor([500]), ctx).sample
        hook = apply_hypernetwork_file(model.unet, final, strength=1.0)
        full = model.unet(x, torch.tensor([500]), ctx).sample
        hook.strength = 0.0
        off = model.unet(x, torch.tensor([500]), ctx).sample
        hook.remove()
        after = model.unet(x, torch.tensor([500]), ctx).sample
    assert (full - base).abs().max() > 1e-6  # the trained modules act (last layers left zero)
    torch.testing.assert_close(off, base, atol=1e-6, rtol=0)
    torch.testing.assert_close(after, base, atol=0, rtol=0)
