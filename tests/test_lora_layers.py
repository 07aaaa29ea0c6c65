"""LoRA layers and the method on tiny models: merge, remove, training, DoRA, max-norm."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from tsuika.methods.lora import (
    LoraConfig,
    LoraConv2d,
    LoraLayer,
    LoraLinear,
    LoraMethod,
    apply_lora_file,
)
from tsuika.models.tiny import build_tiny_model

VARIANTS = {
    "attention": dict(rank=4, alpha=2),
    "locon": dict(rank=4, alpha=4, conv_rank=3, conv_alpha=2, targets=["attention", "proj", "ff"]),
    "dora": dict(rank=4, alpha=4, conv_rank=2, dora=True, train_text_encoder=True),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return build_tiny_model(seed=1)


def _inputs():
    gen = torch.Generator().manual_seed(11)
    return torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 6, 32, generator=gen)


def _unet_out(model) -> torch.Tensor:
    latents, context = _inputs()
    dtype = model.unet.dtype
    with torch.no_grad():
        return model.unet(latents.to(dtype), 10, encoder_hidden_states=context.to(dtype)).sample


def _prepared(base, options, *, randomise=True):
    model = copy.deepcopy(base)
    method = LoraMethod(LoraConfig.from_dict(options))
    method.prepare(model)
    if randomise:
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for _, layer in method.named_layers():
                layer.lora_up.weight.copy_(
                    torch.randn(layer.lora_up.weight.shape, generator=gen) * 0.1
                )
                if layer.dora_scale is not None:
                    layer.dora_scale.mul_(
                        1 + 0.2 * torch.rand(layer.dora_scale.shape, generator=gen)
                    )
    return model, method


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_merge_equals_unmerged_and_remove_restores_base(base, variant):
    # float64: the tiny UNet amplifies fp32 rounding to ~1e-4, which would hide real errors.
    base = copy.deepcopy(base)
    base.unet.double()
    model, method = _prepared(base, VARIANTS[variant])
    unmerged = _unet_out(model)
    assert (unmerged - _unet_out(base)).abs().max() > 1e-3
    method.merge()
    torch.testing.assert_close(_unet_out(model), unmerged, atol=1e-10, rtol=0)
    method.unmerge()
    assert torch.equal(_unet_out(model), unmerged)
    method.merge()  # remove() must also undo a merge
    method.remove()
    assert torch.equal(_unet_out(model), _unet_out(base))
    assert not any(isinstance(m, LoraLayer) for m in model.unet.modules())
    assert list(model.unet.state_dict()) == list(base.unet.state_dict())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fresh_lora_is_the_base_and_training_moves_only_lora(base, variant):
    model, method = _prepared(base, VARIANTS[variant], randomise=False)
    start = _unet_out(model)
    torch.testing.assert_close(start, _unet_out(base), atol=1e-6, rtol=0)
    trainable = {id(p) for p in method.parameters()}
    for part in (model.unet, model.text_encoder, model.vae):
        for name, p in part.named_parameters():
            assert p.requires_grad == (id(p) in trainable), name
    frozen_before = {k: v.clone() for k, v in model.unet.named_parameters() if not v.requires_grad}
    groups = method.param_groups(0.05)
    opt = torch.optim.SGD(groups, lr=0.05)
    latents, context = _inputs()
    model.unet.train()
    for _ in range(3):
        loss = model.unet(latents, 10, encoder_hidden_states=context).sample.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step()
    model.unet.eval()
    assert method.steps == 3
    assert (_unet_out(model) - start).abs().max() > 1e-4
    for key, value in model.unet.named_parameters():
        if key in frozen_before:
            assert torch.equal(value, frozen_before[key]), key


def test_param_groups_use_text_encoder_lr(base):
    _, method = _prepared(
        base, dict(train_text_encoder=True, text_encoder_lr=1e-5), randomise=False
    )
    groups = {g["name"]: g for g in method.param_groups(1e-4)}
    assert (groups["unet"]["lr"], groups["text_encoder"]["lr"]) == (1e-4, 1e-5)
    te_ids = {id(p) for p in groups["text_encoder"]["params"]}
    assert te_ids == {id(p) for p in method.parameters("text_encoder")}
    assert len(groups["text_encoder"]["params"]) == 2 * 6 * 2  # down+up, 6 projections, 2 layers


def test_injection_is_idempotent_and_records_paths(base):
    model, method = _prepared(base, VARIANTS["locon"], randomise=False)
    paths = method.wrapped_modules
    first = dict(method.named_layers())
    method.prepare(model)
    assert method.wrapped_modules == paths
    assert all(first[k] is v for k, v in method.named_layers())
    assert not any(isinstance(m.base_layer, LoraLayer) for m in first.values())
    unet = paths["unet"]
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0" in unet
    assert "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj" in unet
    assert "down_blocks.0.resnets.0.conv1" in unet and "up_blocks.0.upsamplers.0.conv" in unet
    assert "down_blocks.2.resnets.0.conv_shortcut" in unet
    assert not any(p.endswith("time_emb_proj") or p.startswith("conv_in") for p in unet)


@pytest.mark.parametrize("max_norm", [0.05, 0.5])
def test_max_norm_bounds_every_update(base, max_norm):
    _, method = _prepared(base, VARIANTS["locon"])
    with torch.no_grad():
        for _, layer in method.named_layers():
            layer.lora_up.weight.mul_(10)
    before = [float(layer.delta_weight().detach().norm()) for _, layer in method.named_layers()]
    scaled, mean_norm, top = method.apply_max_norm(max_norm)
    after = [float(layer.delta_weight().detach().norm()) for _, layer in method.named_layers()]
    assert scaled == sum(b > max_norm for b in before) > 0
    assert max(after) <= max_norm * (1 + 1e-5)
    assert top == pytest.approx(max(after), rel=1e-5)
    assert mean_norm == pytest.approx(sum(after) / len(after), rel=1e-4)
    for b, a in zip(before, after, strict=True):
        if b <= max_norm:
            assert a == pytest.approx(b, rel=1e-6)


def test_dora_kohya_file_round_trips(base, tmp_path):
    model, method = _prepared(base, VARIANTS["dora"])
    path = method.save(tmp_path, "dora", "kohya", {})
    other, fresh = _prepared(base, VARIANTS["dora"], randomise=False)
    fresh.load_file(path)
    assert torch.equal(_unet_out(other), _unet_out(model))
    applied = copy.deepcopy(base)
    apply_lora_file(applied, path)
    torch.testing.assert_close(_unet_out(applied), _unet_out(model), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="DoRA cannot be saved in the diffusers format"):
        method.save(tmp_path, "dora", "diffusers", {})


# --- single layers ----------------------------------------------------------------------


def _layer(kind: str, **options) -> tuple[nn.Module, LoraLayer, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "linear":
        base = nn.Linear(12, 10)
        layer, x = LoraLinear(base, 4, 2.0, **options), torch.randn(3, 5, 12)
    else:
        base = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        layer, x = LoraConv2d(base, 4, 2.0, **options), torch.randn(3, 6, 9, 9)
    nn.init.normal_(layer.lora_up.weight)
    return base, layer, x


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_delta_weight_is_the_functional_update(kind):
    base, layer, x = _layer(kind)
    with torch.no_grad():
        delta = layer(x) - base(x)
        dw = layer.delta_weight()
        expected = x @ dw.t() if kind == "linear" else F.conv2d(x, dw, stride=2, padding=1)
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-5)
    assert layer.scale == 0.5


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_dora_layer_matches_its_merged_weight(kind):
    base, layer, x = _layer(kind, dora=True)
    with torch.no_grad():
        layer.dora_scale.mul_(
            torch.linspace(0.5, 1.5, layer.dora_scale.numel()).view_as(layer.dora_scale)
        )
        out = layer(x)
        w = layer.merged_weight()
        expected = (
            F.linear(x, w, base.bias) if kind == "linear" else F.conv2d(x, w, base.bias, 2, 1)
        )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    norms = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
    torch.testing.assert_close(norms, layer.dora_scale.reshape(-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("option", ["dropout", "rank_dropout"])
def test_dropouts_act_in_training_only(kind, option):
    base, layer, x = _layer(kind, **{option: 0.5})
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x))
        layer.train()
        a, b = layer(x), layer(x)
    assert not torch.equal(a, b)


def test_module_dropout_skips_the_whole_update():
    base, layer, x = _layer("linear", module_dropout=0.999999)
    with torch.no_grad():
        layer.train()
        assert torch.equal(layer(x), base(x))
        layer.eval()
        assert not torch.equal(layer(x), base(x))


def test_rank_dropout_rescales_like_kohya():
    base, layer, x = _layer("linear", rank_dropout=0.25)
    layer.train()
    with torch.no_grad():
        mean = torch.stack([layer(x) - base(x) for _ in range(4000)]).mean(0)
        layer.eval()
        full = layer(x) - base(x)
    torch.testing.assert_close(mean, full, atol=0.1 * full.abs().max().item(), rtol=0)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("dora", [False, True])
def test_half_precision_base_keeps_fp32_lora(kind, dora):
    base, layer, x = _layer(kind, dora=dora, dropout=0.1, rank_dropout=0.1)
    base.to(torch.bfloat16)
    layer.train()
    y = layer(x.to(torch.bfloat16))
    y.float().square().sum().backward()
    assert y.dtype == torch.bfloat16
    assert layer.lora_down.weight.dtype == torch.float32
    assert layer.lora_down.weight.grad is not None and layer.lora_down.weight.grad.abs().sum() > 0
    assert layer.merged_weight().dtype == torch.bfloat16
