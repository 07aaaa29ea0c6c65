"""Files written by other tools, built by hand here, load into generation; broken ones are refused.

Also the builders the other generate/merge/convert tests use (module-level functions).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tsuika.formats.kohya_lora import LoraFileError
from tsuika.generation import attach
from tsuika.methods.lora.stack import apply_lora_files
from tsuika.models.tiny import build_tiny_model

TE = "lora_te_text_model_encoder_layers_{}_{}"
ATTN = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_{}"
CONV = "lora_unet_down_blocks_2_resnets_0_conv1"  # 3x3 conv, 32 -> 64 channels


def _pair(gen, name, rank, fan_in, fan_out, alpha, kernel=None):
    down_shape = (rank, fan_in, *kernel) if kernel else (rank, fan_in)
    up_shape = (fan_out, rank, 1, 1) if kernel else (fan_out, rank)
    return {
        f"{name}.lora_down.weight": torch.randn(down_shape, generator=gen) * 0.2,
        f"{name}.lora_up.weight": torch.randn(up_shape, generator=gen) * 0.2,
        f"{name}.alpha": torch.tensor(float(alpha)),
    }


def kohya_tensors(seed: int = 0, rank: int = 4, alpha: float = 2.0) -> dict[str, torch.Tensor]:
    """A kohya LoRA as kohya-ss/sd-scripts writes it for SD 1.x: UNet attention, a 3x3
    conv (LoCon), and a text-encoder part without ``out_proj`` (q/k/v and the MLP only)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for proj, fan_in in (("q", 32), ("k", 32), ("v", 32)):
        state.update(_pair(gen, ATTN.format(proj), rank, fan_in, 32, alpha))
    state.update(_pair(gen, CONV, 2, 32, 64, 1.0, kernel=(3, 3)))
    for layer in (0, 1):
        for part in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj"):
            state.update(_pair(gen, TE.format(layer, part), rank, 32, 32, alpha))
        state.update(_pair(gen, TE.format(layer, "mlp_fc1"), rank, 32, 128, alpha))
    return state


def write_kohya(path: Path, seed: int = 0, **kw) -> Path:
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2"}
    save_file(kohya_tensors(seed, **kw), str(path), metadata=meta)
    return path


def write_a1111_embedding(path: Path, vectors: torch.Tensor) -> Path:
    """AUTOMATIC1111's ``.pt`` (``Embedding.save``)."""
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vectors},
            "name": path.stem,
            "step": 500,
            "sd_checkpoint": "0123456789",
            "sd_checkpoint_name": "tiny",
        },
        path,
    )
    return path


def write_hypernetwork(path: Path, seed: int = 0, dims=(32,)) -> Path:
    """AUTOMATIC1111's hypernetwork ``.pt``: ``layer_structure [1, 2, 1]``, relu
    (Sequential: Linear, ReLU, Linear -> keys ``linear.0`` and ``linear.2``)."""
    gen = torch.Generator().manual_seed(seed)

    def module(dim):
        return {
            "linear.0.weight": torch.randn(2 * dim, dim, generator=gen) * 0.1,
            "linear.0.bias": torch.randn(2 * dim, generator=gen) * 0.1,
            "linear.2.weight": torch.randn(dim, 2 * dim, generator=gen) * 0.1,
            "linear.2.bias": torch.randn(dim, generator=gen) * 0.1,
        }

    data = {dim: (module(dim), module(dim)) for dim in dims}
    data.update(
        layer_structure=[1, 2, 1],
        activation_func="relu",
        is_layer_norm=False,
        weight_initialization="Normal",
        use_dropout=False,
        step=100,
        name=path.stem,
        sd_checkpoint=None,
        sd_checkpoint_name=None,
    )
    torch.save(data, path)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return build_tiny_model(seed=0)


@torch.no_grad()
def outputs(model):
    gen = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    ids = model.tokenizer(["a red circle"], padding="max_length", return_tensors="pt").input_ids
    hidden = model.text_encoder(ids)[0]
    return hidden, model.unet(latents, 25, encoder_hidden_states=hidden).sample


def test_kohya_lora_with_te_and_conv_parts_loads(base, tmp_path):
    path = write_kohya(tmp_path / "other.safetensors")
    model = copy.deepcopy(base)
    before = outputs(model)
    handle = apply_lora_files(model, [(path, 1.0)])
    assert len(handle.layers) == 4 + 2 * 4  # attention q/k/v + conv, 4 TE modules per layer
    conv = model.unet.get_submodule("down_blocks.2.resnets.0.conv1")
    assert conv.rank == 2 and conv.kernel_size == (3, 3)  # reads through to the base conv
    hidden, out = outputs(model)
    assert (hidden - before[0]).abs().max() > 1e-3  # the text-encoder part acts
    assert (out - before[1]).abs().max() > 1e-3
    handle.remove()
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), before, strict=True))


def _by_kohya_name(model) -> dict[str, torch.nn.Module]:
    """Every UNet and text-encoder module under its kohya name, built here from module paths
    (``lora_unet_`` + path; ``lora_te_text_model_`` + path without its ``text_model.`` level)."""
    names = {f"lora_unet_{n.replace('.', '_')}": m for n, m in model.unet.named_modules()}
    for name, module in model.text_encoder.named_modules():
        path = name.removeprefix("text_model.").replace(".", "_")
        names[f"lora_te_text_model_{path}"] = module
    return names


@torch.no_grad()
def merged_by_hand(base, state: dict[str, torch.Tensor], strength: float = 1.0):
    """A copy of ``base`` with each kohya pair merged into its weight:
    ``W += strength * alpha / rank * up @ down`` (a 1x1 up times a kxk down for convs)."""
    model = copy.deepcopy(base)
    modules = _by_kohya_name(model)
    for key in state:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key.removesuffix(".lora_down.weight")
        down, up = state[key], state[f"{name}.lora_up.weight"]
        scale = strength * float(state[f"{name}.alpha"]) / down.shape[0]
        delta = torch.einsum("or,ri...->oi...", up.flatten(1), down)
        modules[name].weight += scale * delta
    return model


def test_te_lora_without_out_proj_loads_in_ours_not_in_diffusers(base, tmp_path):
    """diffusers' kohya converter expects out_proj beside q/k/v; without it diffusers 0.42
    drops the text encoder's q/k/v LoRA as unexpected keys and keeps only the MLP part.
    Ours maps key by key, so the text encoder gets the whole LoRA: the same model as the
    LoRA merged into the weights by hand."""
    from diffusers import StableDiffusionPipeline

    path = write_kohya(tmp_path / "other.safetensors")
    ours = copy.deepcopy(base)
    apply_lora_files(ours, [(path, 1.0)])
    pipe = StableDiffusionPipeline(
        vae=base.vae,
        text_encoder=copy.deepcopy(base.text_encoder),
        tokenizer=base.tokenizer,
        unet=copy.deepcopy(base.unet),
        scheduler=base.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(str(path))
    with_lora = {n.rpartition(".lora_A")[0] for n, _ in pipe.text_encoder.named_modules()
                 if n.endswith(".lora_A")}  # fmt: skip
    assert with_lora == {"encoder.layers.0.mlp.fc1", "encoder.layers.1.mlp.fc1"}  # q/k/v dropped

    reference = merged_by_hand(base, kohya_tensors())
    tolerance = 1e-5
    for got, want, plain in zip(outputs(ours), outputs(reference), outputs(base), strict=True):
        assert (want - plain).abs().max() > 100 * tolerance
        torch.testing.assert_close(got, want, atol=tolerance, rtol=0)
    theirs = copy.deepcopy(base)
    theirs.text_encoder = pipe.text_encoder
    assert (outputs(theirs)[0] - outputs(ours)[0]).abs().max() > 100 * tolerance


def _broken(kind: str) -> tuple[dict[str, torch.Tensor], str]:
    state = kohya_tensors()
    key = f"{ATTN.format('q')}.lora_down.weight"
    if kind == "shape":
        state[key] = torch.zeros(4, 33)
    elif kind == "nan":
        state[key] = state[key].clone()
        state[key][0, 0] = float("nan")
    elif kind == "unknown_suffix":
        key = f"{ATTN.format('q')}.lora_mid.weight"
        state[key] = torch.zeros(4, 4)
    elif kind == "unknown_module":
        key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn9_to_q"
        state.update(_pair(torch.Generator().manual_seed(1), key, 4, 32, 32, 4))
    return state, key


@pytest.mark.parametrize("kind", ["shape", "nan", "unknown_suffix", "unknown_module"])
def test_broken_lora_is_refused_naming_the_key(base, tmp_path, kind):
    state, key = _broken(kind)
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    model = copy.deepcopy(base)
    before = outputs(model)
    with pytest.raises(LoraFileError, match=key.split(".")[0]) as info:
        attach(model, loras=[f"{path}:0.5"])
    assert str(path) in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), before, strict=True))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a1111_embedding_loads_under_its_stem(base, tmp_path, suffix):
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(4))
    if suffix == ".pt":
        path = write_a1111_embedding(tmp_path / "MyStyle.pt", vectors)
    else:
        path = tmp_path / "MyStyle.safetensors"
        save_file({"emb_params": vectors}, str(path))
    model = copy.deepcopy(base)
    rows = model.text_encoder.get_input_embeddings().weight.shape[0]
    adapters = attach(model, embeddings=[path])
    prompt = adapters.expand("a mystyle circle, mystyle")
    assert prompt.count("<tsuika-emb-0-0> <tsuika-emb-0-1>") == 2
    assert adapters.expand("mystyles") == "mystyles"  # whole words only
    ids = model.tokenizer(prompt).input_ids
    table = model.text_encoder.get_input_embeddings().weight
    new = [i for i in ids if i >= rows]
    assert len(new) == 4
    torch.testing.assert_close(table[new[0]], vectors[0])
    torch.testing.assert_close(table[new[1]], vectors[1])
    adapters.remove()
    assert model.text_encoder.get_input_embeddings().weight.shape[0] == rows
    assert len(model.tokenizer) == 49408


def test_embedding_token_can_be_chosen_and_bad_ones_are_refused(base, tmp_path):
    from tsuika.formats.embedding import EmbeddingFileError

    path = write_a1111_embedding(tmp_path / "thing.pt", torch.randn(1, 32))
    adapters = attach(copy.deepcopy(base), embeddings=[f"{path}:sks"])
    assert adapters.expand("a sks thing") == "a <tsuika-emb-0-0> thing"
    wide = write_a1111_embedding(tmp_path / "wide.pt", torch.randn(1, 768))
    with pytest.raises(EmbeddingFileError, match="width 768"):
        attach(copy.deepcopy(base), embeddings=[wide])
    bad = torch.randn(1, 32)
    bad[0, 3] = float("inf")
    broken = write_a1111_embedding(tmp_path / "broken.pt", bad)
    with pytest.raises(EmbeddingFileError, match="string_to_param"):
        attach(copy.deepcopy(base), embeddings=[broken])


def test_a1111_hypernetwork_loads_and_strength_scales(base, tmp_path):
    path = write_hypernetwork(tmp_path / "hn.pt")
    model = copy.deepcopy(base)
    before = outputs(model)[1]
    adapters = attach(model, hypernetworks=[f"{path}:0.0"])
    assert torch.allclose(outputs(model)[1], before, atol=1e-6)  # strength 0: no effect
    adapters.remove()
    adapters = attach(model, hypernetworks=[f"{path}:1.0"])
    assert (outputs(model)[1] - before).abs().max() > 1e-4
    adapters.remove()
    assert torch.equal(outputs(model)[1], before)


def test_broken_hypernetwork_is_refused_naming_the_key(base, tmp_path):
    from tsuika.formats.a1111_hypernetwork import HypernetworkFileError

    path = write_hypernetwork(tmp_path / "hn.pt")
    data = torch.load(path, weights_only=True)
    data[32][0]["linear.2.weight"] = torch.zeros(32, 65)
    torch.save(data, path)
    with pytest.raises(HypernetworkFileError, match="linear.2.weight"):
        attach(copy.deepcopy(base), hypernetworks=[path])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("a.safetensors", ("a.safetensors", 1.0)), ("a.safetensors:0.5", ("a.safetensors", 0.5)),
     ("C:/x/a.pt:-1", ("C:/x/a.pt", -1.0))],
)  # fmt: skip
def test_weighted_specs(spec, expected):
    from tsuika.generation import parse_weighted

    path, weight = parse_weighted(spec)
    assert (str(path), weight) == (str(Path(expected[0])), expected[1])
    assert math.isfinite(weight)


def test_bad_weight_spec_names_the_spec():
    from tsuika.generation import AdapterSpecError, parse_weighted

    with pytest.raises(AdapterSpecError, match="a.safetensors:strong"):
        parse_weighted("a.safetensors:strong")
