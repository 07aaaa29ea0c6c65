"""Loading errors, pickle safety, VAE override and the offline guarantee."""

from __future__ import annotations

import os
import pickle
import shutil
import socket

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tsuika.models import (
    ArchitectureError,
    CheckpointError,
    ModelLoadError,
    UnsafeCheckpointError,
    build_tiny_model,
    load_base_model,
    load_vae,
    save_diffusers,
    save_single_file,
)


class Custom:  # a class a pickle must not be allowed to rebuild
    pass


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    return save_single_file(build_tiny_model(0), path)


def tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def decode(vae) -> torch.Tensor:
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return vae.decode(z).sample


SDXL_LIKE = {
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(
        4, 4
    ),
    "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
    "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 4),
}
RANDOM_KEYS = {"foo.bar": torch.zeros(2), "baz": torch.zeros(3)}


@pytest.mark.parametrize(
    ("state", "message"),
    [(SDXL_LIKE, "SDXL"), (RANDOM_KEYS, "not a Stable Diffusion 1.x/2.x checkpoint: missing UNet")],
)
def test_detection_errors_name_the_file(tmp_path, state, message) -> None:
    path = tmp_path / "weird.safetensors"
    save_file(state, str(path))
    with pytest.raises(ArchitectureError, match=message) as err:
        load_base_model(path)
    assert str(path) in str(err.value)


def test_missing_component_names_the_file(tmp_path, tiny_file) -> None:
    state = {k: v for k, v in tensors(tiny_file).items() if not k.startswith("first_stage_model.")}
    path = tmp_path / "novae.safetensors"
    save_file(state, str(path))
    with pytest.raises(ArchitectureError, match=r"missing VAE \(first_stage_model"):
        load_base_model(path)


def test_truncated_tensor_set_names_the_missing_key(tmp_path, tiny_file) -> None:
    state = tensors(tiny_file)
    del state["model.diffusion_model.middle_block.1.proj_out.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(KeyError, match="middle_block.1.proj_out.weight"):
        load_base_model(path)


@pytest.mark.parametrize(
    "payload", [os.system, Custom(), print], ids=["os.system", "custom-class", "builtin"]
)
def test_pickle_with_code_is_refused(tmp_path, payload) -> None:
    """A pickle that names a callable or class (how malicious .ckpt files run code)."""
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {"x": torch.zeros(1)}, "hook": payload}))
    with pytest.raises(
        UnsafeCheckpointError, match="pickled code objects and was refused for safety"
    ) as err:
        load_base_model(path)
    assert str(path) in str(err.value) and "safetensors" in str(err.value)


@pytest.mark.parametrize("nested", [False, True])
def test_plain_tensor_ckpt_loads(tmp_path, tiny_file, nested) -> None:
    state = tensors(tiny_file)
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": state, "global_step": 5} if nested else state, str(path))
    loaded = load_base_model(path)
    reference = load_base_model(tiny_file)
    key = "conv_in.weight"
    assert torch.equal(loaded.unet.state_dict()[key], reference.unet.state_dict()[key])
    assert loaded.kind == "sd1"


def test_path_errors(tmp_path, tiny_file) -> None:
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_base_model(tmp_path / "nope.safetensors")
    wrong = tmp_path / "model.onnx"
    wrong.write_bytes(b"x")
    with pytest.raises(
        CheckpointError, match=r"model.onnx: unsupported checkpoint extension '.onnx'"
    ):
        load_base_model(wrong)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_base_model(garbage)
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_base_model(tmp_path)


def test_diffusers_folder_missing_component(tmp_path) -> None:
    folder = save_diffusers(build_tiny_model(), tmp_path / "folder")
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(
        ModelLoadError,
        match=r"folder: diffusers folder is missing tokenizer/tokenizer.json or "
        r"tokenizer/vocab.json \+ tokenizer/merges.txt",
    ):
        load_base_model(folder)


def test_vae_override(tmp_path, tiny_file) -> None:
    other = build_tiny_model(11)
    full = save_single_file(other, tmp_path / "other.safetensors")
    bare = {
        k.removeprefix("first_stage_model."): v
        for k, v in tensors(full).items()
        if k.startswith("first_stage_model.")
    }
    save_file(bare, str(tmp_path / "vae-ft.safetensors"))
    save_diffusers(other, tmp_path / "other_folder")
    base = load_base_model(tiny_file)
    expected = decode(other.vae)
    assert not torch.equal(decode(base.vae), expected)
    for source in ["vae-ft.safetensors", "other.safetensors", "other_folder", "other_folder/vae"]:
        model = load_base_model(tiny_file, vae=tmp_path / source)
        assert torch.equal(decode(model.vae), expected), source
        assert model.vae_source == tmp_path / source
        assert torch.equal(
            model.unet.state_dict()["conv_in.weight"], base.unet.state_dict()["conv_in.weight"]
        )
    save_file({"x": torch.zeros(1)}, str(tmp_path / "noVAE.safetensors"))
    with pytest.raises(ArchitectureError, match="noVAE.safetensors: no VAE found"):
        load_vae(tmp_path / "noVAE.safetensors")


def test_prediction_type_and_kind_arguments(tmp_path, tiny_file) -> None:
    assert (
        load_base_model(tiny_file, prediction_type="v_prediction").scheduler.config.prediction_type
        == "v_prediction"
    )
    with pytest.raises(ValueError, match="prediction_type"):
        load_base_model(tiny_file, prediction_type="sample_x")
    with pytest.raises(ArchitectureError, match="expected a sd2 model"):
        load_base_model(tiny_file, kind="sd2")


def test_sidecar_yaml_sets_v_prediction(tmp_path, tiny_file) -> None:
    state = {k: v for k, v in tensors(tiny_file).items()}  # no tsuika metadata
    path = tmp_path / "foreign.safetensors"
    save_file(state, str(path))
    assert load_base_model(path).prediction_type == "epsilon"
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert load_base_model(path).prediction_type == "v_prediction"


def test_offline(tmp_path, tiny_file, monkeypatch) -> None:
    """Loading makes no network call although no offline variable is set: every socket entry
    point is replaced by a counter that refuses, and the attempts are counted (library code
    may swallow the refusal). A cache folder of its own, so the tokenizer is rebuilt too."""
    import huggingface_hub.constants
    from diffusers import StableDiffusionPipeline
    from tsuika.models import tokenizer

    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "DIFFUSERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
    ):
        monkeypatch.delenv(name, raising=False)
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # the hub libraries are online
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    attempts: list[str] = []

    def blocked(name: str):
        def call(*args, **kwargs):
            attempts.append(f"{name}{args!r}")
            raise OSError(101, "Network is unreachable (blocked by test_offline)")

        return call

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"),
                        (socket, "create_connection"), (socket, "getaddrinfo")):  # fmt: skip
        monkeypatch.setattr(owner, name, blocked(name))
    with pytest.raises(OSError, match="blocked"):  # the counter itself counts
        socket.create_connection(("huggingface.co", 443))
    assert len(attempts) == 1
    attempts.clear()

    tokenizer.tokenizer_folder.cache_clear()
    try:
        folder = save_diffusers(build_tiny_model(1), tmp_path / "folder")
        assert load_base_model(folder).kind == "sd1"
        assert load_base_model(tiny_file, vae=folder).kind == "sd1"
        StableDiffusionPipeline.from_single_file(
            str(tiny_file), config=str(folder), local_files_only=True
        )
    finally:
        tokenizer.tokenizer_folder.cache_clear()
    assert (tmp_path / "cache").is_dir()  # the tokenizer files were built here
    assert attempts == []
