"""The real SD 1.5 architecture (random weights) from the shipped configs, via a single file."""

from __future__ import annotations

import gc
import json

import pytest
import torch
from tsuika.models import BaseModel, load_base_model, save_single_file
from tsuika.models.derive import derive_configs, detect_kind, shipped_config, shipped_config_dir
from tsuika.models.single_file import read_checkpoint
from tsuika.models.tokenizer import load_clip_tokenizer


@pytest.mark.slow
def test_sd15_architecture_round_trip(tmp_path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = shipped_config_dir("sd1")
    torch.manual_seed(0)
    model = BaseModel(
        unet=UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(str(folder / "unet"))
        ),
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder / "vae"))),
        text_encoder=CLIPTextModel(
            CLIPTextConfig.from_dict(
                json.loads((folder / "text_encoder" / "config.json").read_text())
            )
        ),
        tokenizer=load_clip_tokenizer("sd1"),
        scheduler=DDPMScheduler.from_config(DDPMScheduler.load_config(str(folder / "scheduler"))),
    )
    assert 850e6 < sum(p.numel() for p in model.unet.parameters()) < 870e6
    keys = {
        "unet": "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_v.weight",
        "vae": "decoder.mid_block.attentions.0.to_q.weight",
        "text_encoder": "encoder.layers.11.self_attn.q_proj.weight",
    }
    expected = {name: getattr(model, name).state_dict()[key].clone() for name, key in keys.items()}
    path = save_single_file(model, tmp_path / "sd15.safetensors")
    del model
    gc.collect()
    loaded = load_base_model(path)
    assert loaded.kind == "sd1" and loaded.prediction_type == "epsilon"
    assert loaded.unet.config.cross_attention_dim == 768
    assert list(loaded.unet.config.block_out_channels) == [320, 640, 1280, 1280]
    for name, key in keys.items():
        assert torch.equal(getattr(loaded, name).state_dict()[key], expected[name]), name
    del loaded
    gc.collect()
    # a foreign SD 1.5 file carries no tsuika metadata: the shapes alone must give SD 1.5's configs
    state, _ = read_checkpoint(path)
    derived = derive_configs(state, detect_kind(state, path), "sd1", None)
    for name in ("unet", "vae", "text_encoder"):
        shipped = shipped_config("sd1", name)
        assert {k: derived[name][k] for k in shipped} == shipped, name
