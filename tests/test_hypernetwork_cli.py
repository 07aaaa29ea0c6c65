"""`tsuika train` with method.name = "hypernetwork" end to end on a tiny model:
the file it writes is read without our reader (``torch.load`` as A1111 does; the
safetensors form by ``safe_open``), its modules are built as A1111 builds them and load
strictly, and a UNet whose attentions use them as A1111's attention does gives the output
of our hook. Applying the file changes the UNet exactly as far as its strength says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw
from safetensors import safe_open
from test_hypernetwork_format import a1111_from_file_dict
from tsuika.cli.train import train as train_command
from tsuika.methods.hypernetwork import apply_hypernetwork_file
from tsuika.models import load_base_model

pytestmark = pytest.mark.usefixtures("one_thread")


class A1111Attention:
    """An attention processor written after A1111's ``attention_CrossAttention_forward``
    (modules/hypernetworks/hypernetwork.py): the context (the hidden states themselves for
    self-attention) goes through the hypernetwork pair of its width before ``to_k`` /
    ``to_v``; plain softmax attention over the heads; ``to_out``."""

    def __init__(self, layers: dict[int, tuple[torch.nn.Module, torch.nn.Module]]) -> None:
        self.layers = layers

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):  # fmt: skip
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        pair = self.layers.get(context.shape[2])
        context_k, context_v = (pair[0](context), pair[1](context)) if pair else (context,) * 2
        q, k, v = attn.to_q(hidden_states), attn.to_k(context_k), attn.to_v(context_v)
        q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
        weights = (q @ k.transpose(-1, -2) * attn.scale).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).flatten(2)
        return attn.to_out[1](attn.to_out[0](out))


def a1111_data(path: Path) -> dict:
    """The file as A1111's ``Hypernetwork.load`` sees it: ``{dim: (k_state, v_state), field:
    value}``. ``.pt``: ``torch.load``; ``.safetensors``: tensors ``{dim}.{k|v}.{key}`` and the
    fields as JSON in the header, unpacked here."""
    if path.suffix == ".pt":
        return torch.load(path, map_location="cpu", weights_only=True)
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
        data: dict = {k: json.loads(header[k]) for k in ("layer_structure", "activation_func",
                      "is_layer_norm", "activate_output", "dropout_structure")}  # fmt: skip
        for key in f.keys():  # noqa: SIM118 - safe_open has no iteration
            dim, side, rest = key.split(".", 2)
            data.setdefault(int(dim), ({}, {}))["kv".index(side)][rest] = f.get_tensor(key)
    return data


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
learning_rate = 1e-2
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
    data = a1111_data(final)
    assert {k for k in data if isinstance(k, int)} == {32, 64}
    a1111 = {
        dim: tuple(a1111_from_file_dict(data, dim, side) for side in (0, 1)) for dim in (32, 64)
    }

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
        theirs = {}
        for name, layers in (("base", {}), ("full", a1111)):
            model.unet.set_attn_processor(A1111Attention(layers))
            theirs[name] = model.unet(x, torch.tensor([500]), ctx).sample
    tolerance = 1e-5
    torch.testing.assert_close(theirs["base"], base, atol=tolerance, rtol=0)
    assert (full - base).abs().max() > 100 * tolerance  # the trained modules act
    torch.testing.assert_close(full, theirs["full"], atol=tolerance, rtol=0)
    torch.testing.assert_close(off, base, atol=tolerance, rtol=0)
    torch.testing.assert_close(after, base, atol=0, rtol=0)
