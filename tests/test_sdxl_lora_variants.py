"""LoRA variants on SDXL end to end through ``tsuika train``: LoCon (conv) written in the
diffusers format, and DoRA (kohya format), on the tiny SDXL model.

The LoCon file is read by diffusers' ``StableDiffusionXLPipeline.load_lora_weights``
(the independent reader) into the same UNet and text-encoder outputs as our
layers with the file applied.

DoRA: diffusers cannot be the reader here. diffusers 0.42's
``load_lora_weights`` filters ``dora_scale`` out of a kohya file (it warns "a
DoRA checkpoint that is not compatible in Diffusers") and loads the plain
LoRA; peft's ``lora_magnitude_vector`` is per *output* row, while kohya's /
A1111's / ComfyUI's ``dora_scale`` (what we write) is per *input* column
``[1, in]``, and the diffusers format refuses DoRA for that reason. So the DoRA
file is checked with our readers: the trained layers and ``apply_lora_file``
(what generate and merge use) give the same outputs, far from the base model's,
and generate's picture moves with the file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_sdxl_lora import sdxl_outputs
from test_train_cli import draw_dataset, invoke, run_config, write_config
from tsuika.formats.kohya_lora import read_metadata
from tsuika.methods.lora import apply_lora_file
from tsuika.models import FAMILIES, build_tiny_sdxl_model, load_base_model, save_diffusers

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory) -> Path:
    return save_diffusers(build_tiny_sdxl_model(0), tmp_path_factory.mktemp("sdxl") / "tiny_sdxl")


@pytest.fixture(scope="module")
def base(sdxl_folder: Path):
    return load_base_model(sdxl_folder, families=FAMILIES)


def _train(sdxl_folder: Path, root: Path, method: dict, output: dict) -> dict:
    data = draw_dataset(root / "data", n=4)
    cfg = run_config(
        sdxl_folder,
        data,
        root / "out",
        method={"name": "lora", "dropout": 0.0, "train_text_encoder": True, **method},
        training={"steps": 3, "save_every": 0, "gradient_accumulation": 1, "learning_rate": 3e-2},
        output={"dir": str(root / "out"), "name": "variant", **output},
    )
    result = invoke(str(write_config(root / "run.toml", cfg)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((root / "out" / "summary.json").read_text())


def test_locon_in_the_diffusers_format_loads_in_the_sdxl_pipeline(
    sdxl_folder: Path, base, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionXLPipeline

    method = {"rank": 4, "alpha": 2, "conv_rank": 2, "conv_alpha": 1}
    summary = _train(sdxl_folder, tmp_path, method, {"format": "diffusers"})
    file = summary["final_file"]
    keys = set(load_file(file))
    assert "unet.down_blocks.0.resnets.0.conv1.lora_A.weight" in keys  # LoCon: a resnet conv
    assert load_file(file)["unet.down_blocks.0.resnets.0.conv1.lora_A.weight"].dim() == 4
    assert any(k.startswith("text_encoder.") for k in keys)
    assert any(k.startswith("text_encoder_2.") for k in keys)
    assert not any(k.startswith("lora_") for k in keys)

    ours = copy.deepcopy(base)
    apply_lora_file(ours, file)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder), local_files_only=True)
    pipe.load_lora_weights(file)
    plain, want = sdxl_outputs(base), sdxl_outputs(ours)
    theirs = sdxl_outputs(pipe)
    for name in want:
        assert (want[name] - plain[name]).abs().max() > 100 * TOLERANCE, name
        torch.testing.assert_close(theirs[name], want[name], atol=TOLERANCE, rtol=0, msg=name)


def test_dora_on_sdxl_trains_and_our_readers_apply_it(
    sdxl_folder: Path, base, tmp_path: Path
) -> None:
    from tsuika.generation.run import generate
    from tsuika.methods.lora import LoraConfig, LoraMethod

    options = {"rank": 4, "alpha": 2, "conv_rank": 2, "conv_alpha": 1, "dora": True}
    summary = _train(sdxl_folder, tmp_path, options, {})
    file = summary["final_file"]
    state = load_file(file)
    scales = {k: v for k, v in state.items() if k.endswith(".dora_scale")}
    assert {k.split("_")[1] for k in scales} == {"unet", "te1", "te2"}
    conv = "lora_unet_input_blocks_1_0_in_layers_2.dora_scale"
    assert scales[conv].shape == (
        1,
        state[conv.replace("dora_scale", "lora_down.weight")].shape[1],
        1,
        1,
    )
    assert read_metadata(file)["ss_network_module"] == "lycoris.kohya"

    trained = copy.deepcopy(base)
    method = LoraMethod(LoraConfig.from_dict({**options, "train_text_encoder": True}))
    method.prepare(trained)
    method.load_file(file)
    applied = copy.deepcopy(base)
    apply_lora_file(applied, file)
    plain, want, got = sdxl_outputs(base), sdxl_outputs(trained), sdxl_outputs(applied)
    for name in want:
        assert (want[name] - plain[name]).abs().max() > 100 * TOLERANCE, name
        torch.testing.assert_close(got[name], want[name], atol=TOLERANCE, rtol=0, msg=name)

    common = dict(prompt="sks shape", steps=2, seed=1, cfg=3.0, device="cpu")
    before = np.asarray(generate(sdxl_folder, **common)[0].image, np.float32)
    after = np.asarray(generate(sdxl_folder, loras=[file], **common)[0].image, np.float32)
    assert np.abs(after - before).max() > 4


def test_dora_cannot_be_written_in_the_diffusers_format(sdxl_folder: Path, tmp_path: Path) -> None:
    data = draw_dataset(tmp_path / "data", n=2)
    cfg = run_config(
        sdxl_folder,
        data,
        tmp_path / "out",
        method={"name": "lora", "rank": 4, "alpha": 2, "dora": True},
        training={"steps": 1, "save_every": 1, "gradient_accumulation": 1},
        output={"dir": str(tmp_path / "out"), "name": "dora", "format": "diffusers"},
    )
    result = invoke(str(write_config(tmp_path / "run.toml", cfg)))
    assert result.exit_code != 0
    assert "DoRA cannot be saved in the diffusers format" in result.output + repr(result.exception)
    assert not list((tmp_path / "out").glob("*.safetensors"))
    assert not (tmp_path / "out" / "checkpoints").exists()  # refused before training
