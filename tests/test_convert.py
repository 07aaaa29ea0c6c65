"""``tsuika convert``: round trips between tools' layouts keep the effect on the model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file
from test_generate_thirdparty import outputs, write_a1111_embedding, write_hypernetwork, write_kohya
from tsuika.convert import ConvertError, convert, detect, kohya_module_path
from tsuika.formats.embedding import read_embedding
from tsuika.generation import attach
from tsuika.generation.denoise import encode_prompts
from tsuika.methods.lora.stack import apply_lora_files
from tsuika.models.tiny import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return build_tiny_model(seed=0)


def _keys(path):
    with safe_open(str(path), "pt") as f:
        return set(f.keys()), dict(f.metadata() or {})


def _effect(base, path):
    model = copy.deepcopy(base)
    apply_lora_files(model, [(path, 1.0)])
    return outputs(model)


def test_lora_kohya_diffusers_kohya_keeps_the_effect(base, tmp_path):
    src = write_kohya(tmp_path / "k.safetensors", rank=4, alpha=2.0)  # scale 0.5
    mid = convert(src, tmp_path / "d.safetensors", "diffusers")
    back = convert(mid, tmp_path / "k2.safetensors", "kohya")
    assert detect(mid) == "lora-diffusers" and detect(back) == "lora-kohya"
    keys, meta = _keys(mid)
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.lora_A.weight" in keys
    assert "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_B.weight" in keys
    adapter = json.loads(meta["lora_adapter_metadata"])
    assert adapter["unet.lora_alpha"] == adapter["unet.r"] == 4  # alpha folded into the weights
    assert meta["ss_network_alpha"] == "2"  # kohya's header travels along
    assert _keys(back)[0] == _keys(src)[0]
    expected = _effect(base, src)
    for path in (mid, back):
        for got, want in zip(_effect(base, path), expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _pipeline(base):
    """A diffusers pipeline over copies of ``base``'s parts that loaders may change."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=base.vae, text_encoder=copy.deepcopy(base.text_encoder),
        tokenizer=copy.deepcopy(base.tokenizer), unet=copy.deepcopy(base.unet),
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


def test_diffusers_reads_our_converted_file_with_the_right_scale(base, tmp_path):
    """A reader that knows nothing of kohya's alpha (diffusers) gets the same UNet and the
    same text encoder from the converted file (alpha 1, rank 4: scale 0.25 folded in)."""
    src = tmp_path / "k.safetensors"
    save_file(write_kohya_state(), str(src))
    mid = convert(src, tmp_path / "d.safetensors", "diffusers")
    assert any(k.startswith("text_encoder.") for k in _keys(mid)[0])
    pipe = _pipeline(base)
    pipe.load_lora_weights(str(mid))
    theirs = copy.deepcopy(base)
    theirs.unet, theirs.text_encoder = pipe.unet, pipe.text_encoder
    tolerance = 1e-5
    for got, want, plain in zip(outputs(theirs), _effect(base, src), outputs(base), strict=True):
        assert (want - plain).abs().max() > 100 * tolerance  # the LoRA acts on this part
        torch.testing.assert_close(got, want, atol=tolerance, rtol=0)


def write_kohya_state():
    from test_generate_thirdparty import kohya_tensors

    return kohya_tensors(seed=3, rank=4, alpha=1.0)


@torch.no_grad()
def test_embedding_a1111_safetensors_diffusers_a1111(base, tmp_path):
    """a1111 -> safetensors -> diffusers -> a1111: diffusers' ``load_textual_inversion``
    places our diffusers file's vectors and encodes its prompt as we encode the original."""
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    src = write_a1111_embedding(tmp_path / "thing.pt", vectors)
    st = convert(src, tmp_path / "thing.safetensors", "safetensors")
    diff = convert(st, tmp_path / "learned" / "thing-d.safetensors", "diffusers", token="<thing>")
    back = convert(diff, tmp_path / "thing2.pt", "a1111")
    assert _keys(st)[0] == {"emb_params"} and _keys(diff)[0] == {"<thing>"}
    final = read_embedding(back)
    assert final.layout == "a1111" and final.name == "thing2"
    assert torch.equal(final.vectors, vectors)

    pipe = _pipeline(base)
    pipe.load_textual_inversion(str(diff))
    ids = pipe.tokenizer.convert_tokens_to_ids(["<thing>", "<thing>_1", "<thing>_2"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], vectors)
    theirs = pipe.encode_prompt("a <thing>", "cpu", 1, False)[0]
    states = []
    for path in (src, back):
        model = copy.deepcopy(base)
        adapters = attach(model, embeddings=[f"{path}:thing"])
        states.append(encode_prompts(model, [adapters.expand("a thing")], torch.device("cpu")))
    plain = encode_prompts(base, ["a thing"], torch.device("cpu"))
    assert (states[0] - plain).abs().max() > 0.1  # the embedding changes the prompt
    torch.testing.assert_close(theirs, states[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(states[1], states[0], atol=0, rtol=0)


def test_hypernetwork_pt_safetensors_pt(tmp_path):
    from tsuika.formats.a1111_hypernetwork import load_hypernetwork_file

    src = write_hypernetwork(tmp_path / "hn.pt")
    st = convert(src, tmp_path / "hn.safetensors", "safetensors")
    back = convert(st, tmp_path / "hn2.pt", "a1111")
    a, b = load_hypernetwork_file(src), load_hypernetwork_file(back)
    assert a.structure == b.structure
    for side in (0, 1):
        for key, tensor in a.layers[32][side].items():
            assert torch.equal(tensor, b.layers[32][side][key]), key


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0",
         ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0")),
        ("lora_unet_up_blocks_2_resnets_1_time_emb_proj",
         ("unet", "up_blocks.2.resnets.1.time_emb_proj")),
        ("lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
         ("unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj")),
        ("lora_unet_down_blocks_0_downsamplers_0_conv", ("unet", "down_blocks.0.downsamplers.0.conv")),
        ("lora_te_text_model_encoder_layers_11_self_attn_out_proj",
         ("text_encoder", "text_model.encoder.layers.11.self_attn.out_proj")),
        ("lora_te2_text_model_encoder_layers_0_mlp_fc2",
         ("text_encoder_2", "text_model.encoder.layers.0.mlp.fc2")),
    ],
)  # fmt: skip
def test_kohya_names_to_module_paths(name, expected):
    assert kohya_module_path(name) == expected


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ConvertError, match="unknown module word 'wibble'"):
        kohya_module_path("lora_unet_down_blocks_0_wibble_0")
    emb = write_a1111_embedding(tmp_path / "e.pt", torch.randn(1, 32))
    with pytest.raises(
        ConvertError, match="embedding file; --to may be a1111, diffusers, safetensors"
    ):
        convert(emb, tmp_path / "e.safetensors", "kohya")
    with pytest.raises(ConvertError, match=r"\.pt file"):
        convert(emb, tmp_path / "e2.safetensors", "a1111")


def test_cli_convert(tmp_path):
    from tsuika.cli import main

    src = write_kohya(tmp_path / "k.safetensors")
    out = tmp_path / "d.safetensors"
    result = CliRunner().invoke(main, ["convert", str(src), str(out), "--to", "diffusers"])
    assert result.exit_code == 0, result.output
    assert detect(out) == "lora-diffusers"
    copy_ = CliRunner().invoke(
        main, ["convert", str(out), str(tmp_path / "a.safetensors"), "--to", "a1111"]
    )
    assert copy_.exit_code == 0 and detect(tmp_path / "a.safetensors") == "lora-kohya"
    bad = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "x.pt"), "--to", "a1111"])
    assert bad.exit_code != 0 and ".safetensors file" in bad.output
    wrong = CliRunner().invoke(main, ["convert", str(src), str(out), "--to", "safetensors"])
    assert wrong.exit_code != 0 and "lora-kohya file" in wrong.output
