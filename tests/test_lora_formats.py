"""kohya / diffusers LoRA files without a model: names, validation, round trips, config."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tsuika.formats.diffusers_lora import load_diffusers_lora, save_diffusers_lora
from tsuika.formats.kohya_lora import (
    LoraFileError,
    LoraWeights,
    kohya_key,
    load_kohya_lora,
    read_metadata,
    save_kohya_lora,
)
from tsuika.methods.lora import LoraConfig

NAME = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _weights(out=8, inp=6, rank=2, conv=False, dora=False):
    gen = torch.Generator().manual_seed(0)
    k = (3, 3) if conv else ()
    return LoraWeights(
        down=torch.randn(rank, inp, *k, generator=gen),
        up=torch.randn(out, rank, *((1, 1) if conv else ()), generator=gen),
        alpha=1.5,
        dora_scale=torch.rand(1, inp, *((1, 1) if conv else ()), generator=gen) if dora else None,
    )


@pytest.mark.parametrize(
    ("prefix", "path", "key"),
    [
        (
            "lora_unet",
            "down_blocks.0.attentions.0.proj_in",
            "lora_unet_down_blocks_0_attentions_0_proj_in",
        ),
        (
            "lora_te_",
            "encoder.layers.0.self_attn.q_proj",
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        ),
        (
            "lora_te",
            "text_model.encoder.layers.1.mlp.fc2",
            "lora_te_text_model_encoder_layers_1_mlp_fc2",
        ),
        ("lora_te2", "encoder.layers.3.mlp.fc1", "lora_te2_text_model_encoder_layers_3_mlp_fc1"),
    ],
)
def test_kohya_key(prefix, path, key):
    assert kohya_key(prefix, path) == key


def test_kohya_key_rejects_unknown_prefix():
    with pytest.raises(ValueError, match="unknown kohya prefix 'lora_vae'"):
        kohya_key("lora_vae", "x")


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("dora", [False, True])
def test_kohya_round_trip(tmp_path, conv, dora):
    w = _weights(conv=conv, dora=dora)
    path = save_kohya_lora(tmp_path / "a.safetensors", {NAME: w}, {"ss_network_dim": "2"})
    raw = load_file(str(path))
    assert raw[f"{NAME}.alpha"].shape == () and float(raw[f"{NAME}.alpha"]) == 1.5
    assert (f"{NAME}.dora_scale" in raw) == dora
    back = load_kohya_lora(path)[NAME]
    assert torch.equal(back.down, w.down) and torch.equal(back.up, w.up) and back.alpha == 1.5
    assert (back.dora_scale is None) == (not dora)
    assert read_metadata(path) == {"ss_network_dim": "2"}
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp file left


def test_kohya_reader_accepts_both_text_encoder_spellings_and_missing_alpha(tmp_path):
    w = _weights()
    state = {
        "lora_te_encoder_layers_0_self_attn_q_proj.lora_down.weight": w.down,
        "lora_te_encoder_layers_0_self_attn_q_proj.lora_up.weight": w.up,
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": w.down,
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": w.up,
    }
    save_file({k: v.clone() for k, v in state.items()}, str(tmp_path / "te.safetensors"))
    modules = load_kohya_lora(tmp_path / "te.safetensors")
    assert set(modules) == {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te1_text_model_encoder_layers_0_mlp_fc1",
    }
    assert modules["lora_te_text_model_encoder_layers_0_self_attn_q_proj"].alpha == 2.0  # = rank


def _bad(kind: str) -> tuple[dict[str, torch.Tensor], str]:
    w = _weights()
    state = {
        f"{NAME}.lora_down.weight": w.down,
        f"{NAME}.lora_up.weight": w.up,
        f"{NAME}.alpha": torch.tensor(1.0),
    }
    if kind == "nan":
        state[f"{NAME}.lora_up.weight"] = w.up.clone().index_fill_(
            0, torch.tensor([1]), float("nan")
        )
        return state, f"{NAME}.lora_up.weight holds non-finite"
    if kind == "inf_alpha":
        state[f"{NAME}.alpha"] = torch.tensor(float("inf"))
        return state, f"{NAME}.alpha holds non-finite"
    if kind == "rank_mismatch":
        state[f"{NAME}.lora_up.weight"] = torch.randn(8, 3)
        return state, f"{NAME}.lora_up.weight has shape \\(8, 3\\)"
    if kind == "ndim":
        state[f"{NAME}.lora_down.weight"] = torch.randn(2, 6, 3)
        return state, f"{NAME}: lora_down.weight \\(2, 6, 3\\)"
    if kind == "alpha_shape":
        state[f"{NAME}.alpha"] = torch.ones(2)
        return state, f"{NAME}.alpha must be a scalar"
    if kind == "suffix":
        state[f"{NAME}.lora_mid.weight"] = w.up
        return state, f"key '{NAME}.lora_mid.weight' has an unknown suffix 'lora_mid.weight'"
    if kind == "prefix":
        state["lora_vae_decoder.lora_up.weight"] = w.up
        return state, "key 'lora_vae_decoder.lora_up.weight' does not start with"
    if kind == "missing_up":
        del state[f"{NAME}.lora_up.weight"]
        return state, f"{NAME}.lora_up.weight is missing"
    if kind == "dora_shape":
        state[f"{NAME}.dora_scale"] = torch.ones(8, 1)
        return state, f"{NAME}.dora_scale has shape \\(8, 1\\), expected \\(1, 6\\)"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "nan",
        "inf_alpha",
        "rank_mismatch",
        "ndim",
        "alpha_shape",
        "suffix",
        "prefix",
        "missing_up",
        "dora_shape",
    ],
)
def test_kohya_reader_refuses_bad_files_naming_the_key(tmp_path, kind):
    state, message = _bad(kind)
    path = tmp_path / f"{kind}.safetensors"
    save_file({k: v.clone() for k, v in state.items()}, str(path))
    with pytest.raises(LoraFileError, match=message) as err:
        load_kohya_lora(path)
    assert str(path) in str(err.value)


def test_kohya_reader_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_kohya_lora(tmp_path / "nope.safetensors")


def test_diffusers_round_trip_and_adapter_metadata(tmp_path):
    lin, conv = _weights(), _weights(conv=True, rank=3)
    conv = conv._replace(alpha=1.0)
    components = {
        "unet": {"down_blocks.0.attentions.0.proj_in": lin, "down_blocks.0.resnets.0.conv1": conv},
        "text_encoder": {"encoder.layers.0.self_attn.q_proj": lin},
    }
    path = save_diffusers_lora(tmp_path / "d.safetensors", components, {"ss_output_name": "d"})
    keys = set(load_file(str(path)))
    assert "unet.down_blocks.0.resnets.0.conv1.lora_A.weight" in keys
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight" in keys
    meta = read_metadata(path)
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["text_encoder.target_modules"] == ["encoder.layers.0.self_attn.q_proj"]
    assert meta["ss_output_name"] == "d"
    back = load_diffusers_lora(path)
    got = back["unet"]["down_blocks.0.resnets.0.conv1"]
    assert (got.rank, got.alpha) == (3, 1.0) and torch.equal(got.up, conv.up)
    assert back["unet"]["down_blocks.0.attentions.0.proj_in"].alpha == 1.5
    assert back["text_encoder"]["text_model.encoder.layers.0.self_attn.q_proj"].alpha == 1.5


# --- config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"rank": 0}, "method.rank: must be >= 1"),
        ({"rank": 4.5}, "method.rank: must be an integer"),
        ({"alpha": -1}, "method.alpha: must be a finite number > 0"),
        ({"dropout": 1.0}, "method.dropout: must be in \\[0, 1\\)"),
        ({"rank_dropout": -0.1}, "method.rank_dropout"),
        ({"module_dropout": "x"}, "method.module_dropout: must be a number"),
        ({"train_text_encoder": "yes"}, "method.train_text_encoder: must be true or false"),
        ({"text_encoder_lr": -1e-4}, "method.text_encoder_lr"),
        ({"conv_rank": -1}, "method.conv_rank"),
        ({"conv_alpha": 0}, "method.conv_alpha"),
        ({"dora": 1}, "method.dora"),
        (
            {"targets": ["attention", "mlp"]},
            "method.targets: unknown target\\(s\\) 'mlp'; allowed: attention, proj, ff",
        ),
        ({"targets": []}, "method.targets: must name at least one"),
        ({"targets": "attention"}, "method.targets: must be a list"),
        ({"rnak": 4}, "unknown lora option\\(s\\) rnak; allowed: rank, alpha"),
    ],
)
def test_config_errors_name_the_field(table, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig.from_dict(table)


def test_config_defaults_and_from_dict():
    cfg = LoraConfig()
    assert (cfg.rank, cfg.alpha, cfg.scale, cfg.targets) == (16, 8.0, 0.5, ("attention",))
    cfg = LoraConfig.from_dict(
        {"rank": 8, "alpha": 8, "targets": ["ff", "attention", "ff"], "conv_rank": 4}
    )
    assert cfg.targets == ("ff", "attention") and cfg.conv_rank == 4 and cfg.scale == 1.0
    assert LoraConfig.from_dict(cfg.to_dict()) == cfg
