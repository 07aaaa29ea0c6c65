"""``tsuika generate`` / ``tsuika.generation.generate`` on a tiny model: seeds, PNG parameters,
adapters, samplers, the stacked-LoRA layer and the command line."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_generate_thirdparty import (
    outputs,
    write_a1111_embedding,
    write_hypernetwork,
    write_kohya,
)
from tsuika.generation import generate, parse_infotext
from tsuika.methods.lora import apply_lora_file
from tsuika.methods.lora.stack import StackedLora, apply_lora_files
from tsuika.models import save_single_file
from tsuika.models.tiny import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen")
    model = build_tiny_model(seed=0)
    return {
        "model": save_single_file(model, folder / "tiny.safetensors"),
        "lora_a": write_kohya(folder / "style.safetensors", seed=1),
        "lora_b": write_kohya(folder / "other.safetensors", seed=2, rank=3, alpha=6.0),
        "emb": write_a1111_embedding(folder / "mything.pt", torch.randn(2, 32)),
        "hn": write_hypernetwork(folder / "hn.pt"),
        "base": model,
    }


def _pixels(picture):
    return np.asarray(picture.image)


def _run(files, **kw):
    options = dict(negative_prompt="blurry", n=2, steps=3, seed=11, sampler="euler_a")
    options.update(kw)
    return generate(files["model"], "a mything circle", **options)


def test_same_seed_same_pictures_with_every_adapter(files):
    adapters = dict(
        loras=[f"{files['lora_a']}:0.8", files["lora_b"]],
        embeddings=[files["emb"]],
        hypernetworks=[f"{files['hn']}:0.5"],
    )
    first, again = _run(files, **adapters), _run(files, **adapters)
    assert [p.seed for p in first] == [11, 12]
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(first[0]), _pixels(first[1]))
    alone = _run(files, n=1, seed=12, **adapters)[0]  # picture i is seed + i on its own
    assert np.array_equal(_pixels(alone), _pixels(first[1]))
    plain = _run(files)
    assert np.abs(_pixels(plain[0]).astype(int) - _pixels(first[0])).max() > 0


@pytest.mark.parametrize("sampler", ["ddim", "euler", "Euler a", "dpmpp_2m", "DPM++ 2M Karras"])
def test_samplers_are_deterministic_and_distinct(files, sampler):
    a, b = _run(files, n=1, sampler=sampler), _run(files, n=1, sampler=sampler)
    assert np.array_equal(_pixels(a[0]), _pixels(b[0]))
    other = _run(files, n=1, sampler="ddim" if sampler != "ddim" else "euler")
    assert not np.array_equal(_pixels(a[0]), _pixels(other[0]))


def _addnet_hash(path):
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n :]).hexdigest()[:12]


def test_png_carries_a1111_parameters(files, tmp_path):
    pictures = _run(
        files,
        out=tmp_path,
        cfg=7.5,
        loras=[f"{files['lora_a']}:0.8"],
        embeddings=[files["emb"]],
        hypernetworks=[f"{files['hn']}:0.5"],
    )
    assert [p.path.name for p in pictures] == ["00000-11.png", "00001-12.png"]
    text = Image.open(pictures[1].path).text["parameters"]
    assert text == pictures[1].parameters
    prompt, negative, fields = parse_infotext(text)
    assert prompt == "a mything circle <lora:style:0.8> <hypernet:hn:0.5>"
    assert negative == "blurry"
    assert text.splitlines()[2].startswith("Steps: 3, Sampler: Euler a, CFG scale: 7.5, Seed: 12,")
    assert fields["Size"] == "64x64" and fields["Model"] == "tiny"
    model_sha = hashlib.sha256(files["model"].read_bytes()).hexdigest()
    assert fields["Model hash"] == model_sha[:10]
    assert fields["Lora hashes"] == f"style: {_addnet_hash(files['lora_a'])}"
    emb_sha = hashlib.sha256(files["emb"].read_bytes()).hexdigest()[:12]
    assert fields["TI hashes"] == f"mything: {emb_sha}"
    more = _run(files, out=tmp_path, n=1)  # numbering continues, nothing overwritten
    assert more[0].path.name == "00002-11.png"


def test_loaded_model_is_left_as_it_was(files):
    model = copy.deepcopy(files["base"])
    before = outputs(model)
    generate(
        model, "a mything", steps=2, seed=1, loras=[files["lora_a"]], embeddings=[files["emb"]]
    )
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), before, strict=True))
    assert len(model.tokenizer) == 49408


@torch.no_grad()
def test_stacked_loras_equal_the_sum_of_separate_applications(files):
    """One low-rank product of the summed rank gives base + sum of each LoRA's update."""
    base = files["base"]
    layers = {
        "attn": "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q",
        "conv": "down_blocks.2.resnets.0.conv1",
    }
    inputs = {"attn": torch.randn(2, 5, 32), "conv": torch.randn(1, 32, 8, 8)}
    stacked_model = copy.deepcopy(base)
    apply_lora_files(stacked_model, [(files["lora_a"], 0.8), (files["lora_b"], -1.5)])
    for kind, path in layers.items():
        x = inputs[kind]
        plain = base.unet.get_submodule(path)(x)
        deltas = []
        for lora, weight in ((files["lora_a"], 0.8), (files["lora_b"], -1.5)):
            single = copy.deepcopy(base)
            apply_lora_file(single, lora, weight)
            deltas.append(single.unet.get_submodule(path)(x) - plain)
        layer = stacked_model.unet.get_submodule(path)
        assert isinstance(layer, StackedLora)
        assert layer.rank == {"attn": 4 + 3, "conv": 2 + 2}[kind]
        torch.testing.assert_close(layer(x), plain + deltas[0] + deltas[1], atol=1e-5, rtol=0)


def test_cli_generate(files, tmp_path):
    from tsuika.cli import main

    out = tmp_path / "pics"
    args = ["generate", "--model", str(files["model"]), "--prompt", "a mything", "--n", "2",
            "--steps", "2", "--seed", "5", "--sampler", "dpmpp_2m", "--lora",
            f"{files['lora_a']}:0.5", "--embedding", str(files["emb"]), "--hypernetwork",
            str(files["hn"]), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["00000-5.png", "00001-6.png"]
    assert "Sampler: DPM++ 2M" in Image.open(written[0]).text["parameters"]
    bad = CliRunner().invoke(main, args[:-2] + ["--sampler", "plms", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown sampler 'plms'" in bad.output
