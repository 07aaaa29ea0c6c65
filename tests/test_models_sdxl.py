"""SDXL models: the single file we write, read by diffusers and by us; folders; tokenizers.

diffusers' ``StableDiffusionXLPipeline`` is the independent reader. Outputs are
compared exactly; a model of another seed shows the comparison is not vacuous.
"""

from __future__ import annotations

import shutil
import socket

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from safetensors import safe_open
from safetensors.torch import save_file
from tsuika.models import (
    FAMILIES,
    ArchitectureError,
    build_tiny_sdxl_model,
    load_base_model,
    load_clip_tokenizer,
    save_diffusers,
    save_single_file,
)
from tsuika.models.base import BaseModel
from tsuika.models.tiny import build_tiny_model
from tsuika.models.tokenizer import prompt_ids

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red circle!! on a white background"


def sdxl_outputs(model: BaseModel) -> dict[str, torch.Tensor]:
    """What SDXL computes: both encoders' penultimate states, the pooled projection,
    the UNet on their concatenation with size/crop ids, VAE encode and decode."""
    g = torch.Generator().manual_seed(1)
    factor = model.vae_scale_factor
    latents = torch.randn(1, 4, 64 // factor, 64 // factor, generator=g)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
    with torch.no_grad():
        one = model.text_encoder(prompt_ids(model.tokenizer, [PROMPT]), output_hidden_states=True)
        two = model.text_encoder_2(
            prompt_ids(model.tokenizer_2, [PROMPT]), output_hidden_states=True
        )
        context = torch.cat([one.hidden_states[-2], two.hidden_states[-2]], dim=-1)
        unet = model.unet(
            latents,
            torch.tensor([500]),
            encoder_hidden_states=context,
            added_cond_kwargs={"text_embeds": two.text_embeds, "time_ids": time_ids},
        ).sample
        encoded = model.vae.encode(image).latent_dist.mean
        decoded = model.vae.decode(latents).sample
    return {
        "text_1": one.hidden_states[-2],
        "text_2": two.hidden_states[-2],
        "pooled": two.text_embeds,
        "unet": unet,
        "vae_encode": encoded,
        "vae_decode": decoded,
    }


def assert_same_outputs(a: BaseModel, b: BaseModel) -> None:
    oa, ob = sdxl_outputs(a), sdxl_outputs(b)
    for name in oa:
        assert torch.equal(oa[name], ob[name]), name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """One tiny SDXL model, its diffusers folder and its single file."""
    root = tmp_path_factory.mktemp("sdxl")
    model = build_tiny_sdxl_model(7)
    folder = save_diffusers(model, root / "folder")
    path = save_single_file(model, root / "model.safetensors")
    return {"model": model, "folder": folder, "file": path, "outputs": sdxl_outputs(model)}


def test_outputs_tell_models_apart(tiny) -> None:
    """The exact comparisons below would catch a wrong tensor: another seed moves
    every output by far more than float noise."""
    other = sdxl_outputs(build_tiny_sdxl_model(8))
    for name, tensor in tiny["outputs"].items():
        assert (tensor - other[name]).abs().max() > 1e-2, name


def test_diffusers_from_single_file_reads_our_file(tiny, tmp_path) -> None:
    """The weights come from our file (another seed than the config folder's)."""
    from diffusers import StableDiffusionXLPipeline

    model = build_tiny_sdxl_model(9)
    path = save_single_file(model, tmp_path / "seed9.safetensors")
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(tiny["folder"]), local_files_only=True
    )
    theirs = BaseModel(
        pipe.unet,
        pipe.vae,
        pipe.text_encoder,
        model.tokenizer,
        pipe.scheduler,
        kind="sdxl",
        text_encoder_2=pipe.text_encoder_2,
        tokenizer_2=model.tokenizer_2,
    )
    assert_same_outputs(model, theirs)


def test_our_loader_reads_the_file_equal_to_the_folder(tiny) -> None:
    from_file = load_base_model(tiny["file"], families=FAMILIES)
    from_folder = load_base_model(tiny["folder"], families=FAMILIES)
    for loaded in (from_file, from_folder):
        assert (loaded.kind, loaded.prediction_type) == ("sdxl", "epsilon")
        assert loaded.tokenizer.pad_token_id == 49407 and loaded.tokenizer_2.pad_token_id == 0
        assert loaded.vae.config.scaling_factor == pytest.approx(0.13025)
    assert_same_outputs(from_file, from_folder)
    assert_same_outputs(tiny["model"], from_file)


def test_diffusers_reads_our_folder(tiny) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny["folder"]), local_files_only=True)
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    theirs = BaseModel(
        pipe.unet,
        pipe.vae,
        pipe.text_encoder,
        tiny["model"].tokenizer,
        pipe.scheduler,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer_2=tiny["model"].tokenizer_2,
    )
    assert_same_outputs(tiny["model"], theirs)


def _tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def test_original_layout_keys_and_shapes(tiny) -> None:
    state = _tensors(tiny["file"])
    model = tiny["model"]
    width_2, projection = 64, 48  # build_tiny_sdxl_model defaults
    g = "conditioner.embedders.1.model."
    assert state[g + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * width_2, width_2)
    assert state[g + "transformer.resblocks.1.mlp.c_fc.weight"].shape == (4 * width_2, width_2)
    assert state[g + "positional_embedding"].shape == (77, width_2)
    assert {g + "ln_final.weight", g + "token_embedding.weight", g + "logit_scale"} <= set(state)
    # open_clip applies the projection as x @ W: W is [width, projection]
    w = state[g + "text_projection"]
    assert w.shape == (width_2, projection)
    assert torch.equal(w, model.text_encoder_2.text_projection.weight.detach().T)
    l_key = "conditioner.embedders.0.transformer.text_model.encoder.layers.1.mlp.fc1.weight"
    assert state[l_key].shape == (128, 32)
    assert state["model.diffusion_model.label_emb.0.0.weight"].shape == (4 * 32, 48 + 6 * 8)
    # level 2 holds two transformer blocks; level 0 has no attention
    assert "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight" in state
    assert not [k for k in state if k.startswith("model.diffusion_model.input_blocks.1.1.")]
    assert not [k for k in state if k.startswith(("cond_stage_model.", "conditioner.embedders.2"))]


def test_loads_without_stored_configs_or_text_model_level(tiny, tmp_path) -> None:
    """A file from another tool: configs come from shapes alone (depths, text_time
    sizes, projection width); ``text_model.`` under embedders.0 is optional."""
    state = {
        k.replace("embedders.0.transformer.text_model.", "embedders.0.transformer."): v
        for k, v in _tensors(tiny["file"]).items()
    }
    bare = tmp_path / "other.safetensors"
    save_file(state, str(bare))
    loaded = load_base_model(bare, families=FAMILIES)
    assert loaded.unet.config.transformer_layers_per_block == [1, 2, 2]
    assert loaded.unet.config.addition_time_embed_dim == 8
    assert loaded.text_encoder_2.config.projection_dim == 48
    assert_same_outputs(tiny["model"], loaded)


def test_narrow_variant_round_trip(tmp_path) -> None:
    model = build_tiny_sdxl_model(
        3,
        unet_channels=(16, 24, 40),
        transformer_depths=(1, 1, 3),
        text_hidden=48,
        text_hidden_2=32,
        projection_dim=32,
        text_layers=1,
        time_embed_dim=4,
        vae_factor=2,
        vae_channels=(16, 32),
        prediction_type="v_prediction",
    )
    path = save_single_file(model, tmp_path / "narrow.safetensors", dtype=torch.float32)
    loaded = load_base_model(path, kind="sdxl", families=FAMILIES)
    assert loaded.prediction_type == "v_prediction"
    assert_same_outputs(model, loaded)
    bare = tmp_path / "bare.safetensors"  # no stored configs: odd widths from shapes alone
    save_file(_tensors(path), str(bare))
    derived = load_base_model(bare, families=FAMILIES, prediction_type="v_prediction")
    assert derived.unet.config.transformer_layers_per_block == [1, 1, 3]
    assert_same_outputs(model, derived)


def test_tokenizer_2_pads_like_open_clip() -> None:
    from tsuika.models.tokenizer import load_sdxl_tokenizers

    first, second = load_sdxl_tokenizers()
    body = [49406, *SimpleTokenizer().encode(PROMPT), 49407]
    assert prompt_ids(second, [PROMPT])[0].tolist() == body + [0] * (77 - len(body))
    assert prompt_ids(first, [PROMPT])[0].tolist() == body + [49407] * (77 - len(body))


def _tokenizer_json_only(folder, names) -> None:
    """Rewrite the tokenizers as transformers 5's save_pretrained does: tokenizer.json only."""
    from transformers import CLIPTokenizer

    for name in names:
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / name), local_files_only=True)
        shutil.rmtree(folder / name)
        tokenizer.save_pretrained(str(folder / name))
        assert not (folder / name / "vocab.json").exists()
        assert (folder / name / "tokenizer.json").is_file()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_folder_with_tokenizer_json_only_loads(tmp_path, family) -> None:
    if family == "sdxl":
        model, names = build_tiny_sdxl_model(1), ["tokenizer", "tokenizer_2"]
    else:
        model, names = build_tiny_model(1), ["tokenizer"]
    folder = save_diffusers(model, tmp_path / family)
    _tokenizer_json_only(folder, names)
    loaded = load_base_model(folder, families=FAMILIES)
    assert loaded.kind == family
    ids = prompt_ids(loaded.tokenizer, [PROMPT])
    assert torch.equal(ids, prompt_ids(load_clip_tokenizer(family), [PROMPT]))
    if family == "sdxl":
        assert torch.equal(
            prompt_ids(loaded.tokenizer_2, [PROMPT]), prompt_ids(model.tokenizer_2, [PROMPT])
        )


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("conditioner.embedders.1.", "missing text encoder 2"),
        ("first_stage_model.", "missing VAE"),
    ],
)
def test_incomplete_sdxl_file_is_named(tiny, tmp_path, drop, message) -> None:
    state = {k: v for k, v in _tensors(tiny["file"]).items() if not k.startswith(drop)}
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(
        ArchitectureError, match=f"not a complete SDXL checkpoint.*{message}"
    ) as err:
        load_base_model(path, families=FAMILIES)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("where", ["file", "folder"])
def test_sdxl_is_opt_in(tiny, where) -> None:
    """Callers that handle SD 1.x/2.x only (the default) get a clear refusal."""
    with pytest.raises(ArchitectureError, match="an SDXL model; .* handles sd1, sd2") as err:
        load_base_model(tiny[where])
    assert str(tiny[where]) in str(err.value)


def test_kind_argument_must_agree(tiny) -> None:
    with pytest.raises(ArchitectureError, match="expected a sd1 model, the files describe sdxl"):
        load_base_model(tiny["file"], kind="sd1", families=FAMILIES)


def test_offline(tiny, tmp_path, monkeypatch) -> None:
    """Loading SDXL files and folders, ours and diffusers', touches no network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # tokenizers rebuilt too
    from tsuika.models import tokenizer

    tokenizer.tokenizer_folder.cache_clear()

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    try:
        from diffusers import StableDiffusionXLPipeline

        assert load_base_model(tiny["file"], families=FAMILIES).kind == "sdxl"
        assert load_base_model(tiny["folder"], families=FAMILIES).kind == "sdxl"
        StableDiffusionXLPipeline.from_single_file(
            str(tiny["file"]), config=str(tiny["folder"]), local_files_only=True
        )
    finally:
        tokenizer.tokenizer_folder.cache_clear()


def test_bare_vae_file_for_sdxl_keeps_sdxl_scaling(tiny, tmp_path) -> None:
    """A bare VAE file (encoder.* / decoder.*, no configs) on an SDXL model takes
    SDXL's latent scaling factor, not SD 1.x's."""
    prefix = "first_stage_model."
    vae_only = {
        k.removeprefix(prefix): v for k, v in _tensors(tiny["file"]).items() if k.startswith(prefix)
    }
    path = tmp_path / "sdxl_vae.safetensors"
    save_file(vae_only, str(path))
    loaded = load_base_model(tiny["file"], vae=path, families=FAMILIES)
    assert loaded.vae.config.scaling_factor == pytest.approx(0.13025)
    assert loaded.vae_source == path
    assert_same_outputs(tiny["model"], loaded)


def test_ckpt_with_real_file_extras_loads(tiny, tmp_path) -> None:
    """A ``.ckpt`` (weights-only pickle, nested ``state_dict``) with the extra tensors
    real SDXL files carry (CLIP-L ``position_ids``) loads as the same model."""
    state = _tensors(tiny["file"])
    state["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(
        77
    ).unsqueeze(0)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "global_step": 1}, path)
    loaded = load_base_model(path, families=FAMILIES)
    assert loaded.kind == "sdxl"
    assert_same_outputs(tiny["model"], loaded)
