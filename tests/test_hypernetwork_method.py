"""The hypernetwork method on the tiny SD 1.x-shaped model: hook reach, identity at start,
training, strength, removal, files."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from tsuika.formats.a1111_hypernetwork import HypernetworkFileError, load_hypernetwork_file
from tsuika.methods.hypernetwork import (
    ACTIVATIONS,
    INITIALIZATIONS,
    HypernetworkConfig,
    HypernetworkMethod,
    HypernetworkProcessor,
    apply_hypernetwork_file,
)
from tsuika.models.base import BaseModel

CROSS_DIM = 32  # the tiny model's cross-attention width; block widths (32, 32, 64, 64)


@pytest.fixture(scope="module")
def tiny():
    """The tiny model, built once; one torch thread while these tests run (the tiny UNet
    runs several times faster so on a shared two-core machine)."""
    from tsuika.models import build_tiny_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_tiny_model(seed=0)
    torch.set_num_threads(threads)


@pytest.fixture
def model(tiny) -> BaseModel:
    """A fresh copy of the tiny UNet (the other parts are shared, read-only)."""
    return BaseModel(
        unet=copy.deepcopy(tiny.unet),
        vae=tiny.vae,
        text_encoder=tiny.text_encoder,
        tokenizer=tiny.tokenizer,
        scheduler=tiny.scheduler,
    )


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 4, 8, 8, generator=gen),
        torch.tensor([10, 700]),
        torch.randn(2, 77, CROSS_DIM, generator=gen),
    )


def _run(unet, inputs=None):
    x, t, ctx = inputs or _inputs()
    with torch.no_grad():
        return unet(x, t, ctx).sample


def _expected_widths(unet) -> dict[str, int]:
    """Each attention's context width from the UNet's block layout (not from its modules):
    attn2 reads the text states; attn1 reads the hidden states of its block's width."""
    channels = list(unet.config.block_out_channels)
    widths = {}
    for name, _ in unet.named_modules():
        if not re.search(r"\.attn[12]$", name):
            continue
        if name.endswith("attn2"):
            widths[name] = unet.config.cross_attention_dim
        elif name.startswith("mid_block"):
            widths[name] = channels[-1]
        else:
            kind, index = name.split(".")[:2]
            ordered = channels if kind == "down_blocks" else channels[::-1]
            widths[name] = ordered[int(index)]
    return widths


def _perturb(method: HypernetworkMethod, seed=1, std=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.hypernetwork.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)


# --- hook reach ---------------------------------------------------------------------------


@pytest.mark.parametrize(("dims", "count"), [([32], 26), ([64], 6), ([32, 64], 32), ("auto", 32)])
def test_hook_reaches_every_matching_attention_and_no_other(model, dims, count):
    expected = {
        n: w for n, w in _expected_widths(model.unet).items() if dims == "auto" or w in dims
    }
    assert len(expected) == count
    before = {n: m.processor for n, m in model.unet.named_modules() if hasattr(m, "processor")}
    method = HypernetworkMethod(HypernetworkConfig(dims=dims))
    method.prepare(model)
    assert method.hook.hooked == expected
    for name, original in before.items():
        processor = model.unet.get_submodule(name).processor
        if name in expected:
            assert isinstance(processor, HypernetworkProcessor) and processor.inner is original
        else:
            assert processor is original
    # at run time: each hooked attention calls its width's K and V module once per forward
    calls: dict[tuple[int, str], int] = {}
    for dim in method.hypernetwork.dims:
        for side, module in zip("kv", method.hypernetwork.pair(dim), strict=True):
            module.linear.register_forward_hook(
                lambda *_, key=(dim, side): calls.__setitem__(key, calls.get(key, 0) + 1)
            )
    _run(model.unet)
    for dim in method.hypernetwork.dims:
        n = sum(1 for w in expected.values() if w == dim)
        assert (calls.get((dim, "k")), calls.get((dim, "v"))) == (n, n)
    assert sum(calls.values()) == 2 * count


def test_dims_that_match_nothing_are_an_error(model):
    method = HypernetworkMethod(HypernetworkConfig())  # SD 1.x widths on the tiny model
    with pytest.raises(ValueError, match=r"method\.dims: \[768, 320, 640, 1280\].*\[32, 64\]"):
        method.prepare(model)


def _reference_attention(attn, hidden, context, hyper_k, hyper_v):
    """softmax(q k^T * scale) v with k = to_k(hyper_k(context)), v = to_v(hyper_v(context))
    and the query from the hidden states untouched (A1111's attention_CrossAttention_forward)."""
    q, k, v = attn.to_q(hidden), attn.to_k(hyper_k(context)), attn.to_v(hyper_v(context))
    b, n, heads = q.shape[0], q.shape[1], attn.heads

    def split(t):
        return t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) * attn.scale, dim=-1)
    return attn.to_out[0]((weights @ split(v)).transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize(
    ("path", "width"),
    [
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn1", 32),
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn2", CROSS_DIM),
        ("up_blocks.1.attentions.2.transformer_blocks.0.attn1", 64),
    ],
)
def test_k_and_v_read_the_context_through_their_own_modules(model, path, width):
    method = HypernetworkMethod(HypernetworkConfig(dims=[32, 64], activation="relu"))
    method.prepare(model)
    _perturb(method)
    attn = model.unet.get_submodule(path)
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 16, attn.to_q.in_features, generator=gen)
    context = torch.randn(2, 77, CROSS_DIM, generator=gen) if path.endswith("attn2") else None
    k, v = method.hypernetwork.pair(width)
    source = hidden if context is None else context
    with torch.no_grad():
        got = attn(hidden, encoder_hidden_states=context)
        torch.testing.assert_close(got, _reference_attention(attn, hidden, source, k, v))
        swapped = _reference_attention(attn, hidden, source, v, k)
    assert (got - swapped).abs().max() > 1e-4  # the check can tell K from V


# --- identity at start, training --------------------------------------------------------------

CASES = [
    (act, init, layer_norm)
    for i, act in enumerate(ACTIVATIONS)
    for layer_norm in (False, True)
    for init in [list(INITIALIZATIONS)[(i + layer_norm) % len(INITIALIZATIONS)]]
]


@pytest.mark.parametrize(("activation", "initialization", "layer_norm"), CASES)
def test_untrained_hypernetwork_leaves_the_unet_unchanged(
    model, activation, initialization, layer_norm
):
    base = _run(model.unet)
    cfg = HypernetworkConfig(
        dims=[32, 64],
        activation=activation,
        initialization=initialization,
        layer_norm=layer_norm,
        activate_output=activation != "sigmoid" or layer_norm,
        dropout=0.2,
    )
    method = HypernetworkMethod(cfg)
    method.prepare(model)
    assert torch.equal(_run(model.unet), base)
    model.unet.train()  # dropout on, multiplier 1: still exactly the base model
    assert torch.equal(_run(model.unet), base)


@pytest.mark.parametrize(
    ("activation", "initialization", "layer_norm"),
    [("relu", "Normal", False), ("swish", "KaimingNormal", True), ("tanh", "XavierUniform", True)],
)
def test_training_moves_the_output_and_only_hypernetwork_params_train(
    model, activation, initialization, layer_norm
):
    cfg = HypernetworkConfig(
        dims="auto", activation=activation, initialization=initialization, layer_norm=layer_norm
    )
    method = HypernetworkMethod(cfg)
    torch.manual_seed(0)
    method.prepare(model)
    ours = {id(p) for p in method.hypernetwork.parameters()}
    (group,) = method.param_groups(1e-3)
    assert {id(p) for p in group["params"]} == ours and group["lr"] == 1e-3
    everything = [
        *model.unet.parameters(),
        *model.vae.parameters(),
        *model.text_encoder.parameters(),
    ]
    assert {id(p) for p in everything if p.requires_grad} == ours
    base = _run(model.unet)
    x, t, ctx = _inputs()
    target = base + 0.5
    optimizer = torch.optim.Adam(group["params"], lr=1e-2)
    model.unet.train()
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.mse_loss(model.unet(x, t, ctx).sample, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.after_step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in model.unet.parameters() if id(p) not in ours)
    model.unet.eval()
    assert (_run(model.unet) - base).abs().max() > 1e-4
    assert method.steps == 4


# --- strength and removal ---------------------------------------------------------------------


def test_strength_zero_is_the_base_model_and_strength_scales_the_delta(model):
    model.unet.double()
    method = HypernetworkMethod(HypernetworkConfig(dims=[32, 64], activation="elu"))
    method.prepare(model)
    _perturb(method)
    x, t, ctx = (v.double() if v.is_floating_point() else v for v in _inputs())
    method.strength = 0.0
    base = _run(model.unet, (x, t, ctx))
    method.strength = 1.0
    full = _run(model.unet, (x, t, ctx))
    assert (full - base).abs().max() > 1e-3
    method.remove()
    assert torch.equal(_run(model.unet, (x, t, ctx)), base)  # strength 0 == no hypernetwork
    method.prepare(model)
    _perturb(method)
    method.strength = 1e-6
    unit = _run(model.unet, (x, t, ctx)) - base
    assert unit.abs().max() > 1e-9
    for s in (3e-6, -2e-6):  # small: the UNet is linear in the strength to first order
        method.strength = s
        delta = _run(model.unet, (x, t, ctx)) - base
        error = (delta - unit * (s / 1e-6)).norm() / delta.norm()
        assert error < 1e-4, (s, error)
    model.unet.train()
    method.strength = 0.0
    assert not torch.equal(_run(model.unet, (x, t, ctx)), base)  # training: multiplier 1


def test_remove_restores_the_original_processors_and_output(model):
    before = {n: m.processor for n, m in model.unet.named_modules() if hasattr(m, "processor")}
    n_params = len(list(model.unet.parameters()))
    base = _run(model.unet)
    first = HypernetworkMethod(HypernetworkConfig(dims=[32]))
    first.prepare(model)
    _perturb(first)
    second = HypernetworkMethod(HypernetworkConfig(dims=[32, 64], activation="gelu"))
    second.prepare(model)  # stacks on the first, as A1111 applies several in turn
    _perturb(second, seed=2)
    assert not torch.equal(_run(model.unet), base)
    first.remove()  # from under the second wrapper
    second.remove()
    second.remove()  # idempotent
    after = {n: m.processor for n, m in model.unet.named_modules() if hasattr(m, "processor")}
    assert all(after[n] is p for n, p in before.items())
    assert len(list(model.unet.parameters())) == n_params
    assert torch.equal(_run(model.unet), base)


# --- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "suffix"), [("a1111", ".pt"), ("safetensors", ".safetensors")])
def test_saved_file_applies_to_a_fresh_unet_like_the_trained_one(
    model, tiny, tmp_path, fmt, suffix
):
    cfg = HypernetworkConfig(dims=[32, 64], activation="mish", layer_norm=True, dropout=True)
    method = HypernetworkMethod(cfg)
    method.prepare(model)
    _perturb(method)
    trained = _run(model.unet)
    meta = {"ss_steps": "12", "ss_sd_model_name": "tiny.safetensors"}
    path = method.save(tmp_path, "hn", fmt, meta)
    assert path == tmp_path / f"hn{suffix}" and sorted(tmp_path.iterdir()) == [path]
    hf = load_hypernetwork_file(path)
    assert (hf.step, hf.name, hf.sd_checkpoint_name) == (12, "hn", "tiny")
    assert hf.structure == method.hypernetwork.structure
    fresh = copy.deepcopy(tiny.unet)
    base = _run(fresh)
    hook = apply_hypernetwork_file(fresh, path)
    assert torch.equal(_run(fresh), trained)
    hook.strength = 0.0
    assert torch.equal(_run(fresh), base)
    hook.remove()
    assert torch.equal(_run(fresh), base)


def test_adapter_state_round_trip_and_strict_loading(model, tmp_path):
    method = HypernetworkMethod(HypernetworkConfig(dims=[32, 64], activation="silu"))
    method.prepare(model)
    _perturb(method)
    state = method.adapter_state()
    assert all(re.fullmatch(r"(32|64)\.[kv]\.linear\.\d+\.(weight|bias)", k) for k in state)
    trained = _run(model.unet)
    method.save(tmp_path, "hn", "a1111", {})
    _perturb(method, seed=5)
    method.load_adapter_state(state)
    assert torch.equal(_run(model.unet), trained)
    _perturb(method, seed=6)
    method.load_file(tmp_path / "hn.pt")
    assert torch.equal(_run(model.unet), trained)
    state["64.k.linear.0.weight"] = state["64.k.linear.0.weight"][:, :-1]
    with pytest.raises(HypernetworkFileError, match=r"64\.k: linear\.0\.weight has shape"):
        method.load_adapter_state(state)
    other = HypernetworkMethod(HypernetworkConfig(dims=[32, 64], activation="relu"))
    other.prepare(model)
    with pytest.raises(HypernetworkFileError, match="structure"):
        other.load_file(tmp_path / "hn.pt")
    with pytest.raises(ValueError, match="output.format = 'kohya'.*a1111, safetensors"):
        method.save(tmp_path, "hn", "kohya", {})


def test_unprepared_method_says_so():
    with pytest.raises(RuntimeError, match=r"prepare\(model\)"):
        HypernetworkMethod().adapter_state()
