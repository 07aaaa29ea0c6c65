"""Textual Inversion on SDXL: one word in both encoders, written as ``clip_l`` / ``clip_g``.

diffusers' ``load_textual_inversion`` (once per encoder, the way its docs load
an SDXL embedding) is the independent reader: the prompt states of its SDXL
pipeline equal our conditioning with the method's tables.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_cli import draw_dataset, invoke, run_config, write_config
from tsuika.methods.textual_inversion import TextualInversionConfig, TextualInversionMethod
from tsuika.models import build_tiny_sdxl_model, save_diffusers
from tsuika.training.objective import SampleSize, build_objective

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    model = build_tiny_sdxl_model(0)
    return {"model": model, "folder": save_diffusers(model, tmp_path_factory.mktemp("ti") / "b")}


def _method(model, vectors: int = 2) -> TextualInversionMethod:
    config = TextualInversionConfig.from_dict(
        {"placeholder_token": "<zq>", "initializer_token": "circle", "num_vectors": vectors}
    )
    method = TextualInversionMethod(config)
    method.prepare(model)
    return method


def _conditioning(model, prompt: str) -> dict:
    obj = build_objective(
        model, unet=model.unet, text_encoder=model.text_encoder, device=torch.device("cpu")
    )
    with torch.no_grad():
        return obj.condition([prompt], [SampleSize.uncropped(64, 64)])


def test_both_tables_train_and_the_file_holds_clip_l_and_clip_g(base, tmp_path: Path) -> None:
    model = copy.deepcopy(base["model"])
    method = _method(model)
    assert [len(r.ids) for r in method.rows] == [2, 2]
    (group,) = method.param_groups(1e-3)
    weights = group["params"]
    assert weights[0] is model.text_encoder.get_input_embeddings().weight
    assert weights[1] is model.text_encoder_2.get_input_embeddings().weight
    before = {k: v.clone() for k, v in method.vectors().items()}
    old_rows = [w.detach().clone() for w in weights]
    optimizer = torch.optim.AdamW(weights, lr=0.1, weight_decay=0.5)
    obj = build_objective(
        model, unet=model.unet, text_encoder=model.text_encoder, device=torch.device("cpu")
    )
    out = obj.condition(["a " + method.config.placeholder_text], [SampleSize.uncropped(64, 64)])
    (
        out["encoder_hidden_states"].pow(2).sum() + out["added_cond_kwargs"]["text_embeds"].sum()
    ).backward()
    optimizer.step()
    method.after_step()
    after = method.vectors()
    for key in ("clip_l", "clip_g"):
        assert (after[key] - before[key]).abs().max() > 1e-3, key  # both tables learned
    for rows, old in zip(method.rows, old_rows, strict=True):
        keep = torch.ones(old.shape[0], dtype=torch.bool)
        keep[rows.ids] = False
        assert torch.equal(rows.weight.detach()[keep], old[keep])  # the vocabulary is intact

    path = method.save(tmp_path, "zq", "a1111", {"ss_steps": "1"})
    assert path == tmp_path / "zq.safetensors"
    state = load_file(str(path))
    assert set(state) == {"clip_l", "clip_g"}
    assert state["clip_l"].shape == (2, 32) and state["clip_g"].shape == (2, 64)
    assert torch.equal(state["clip_g"], after["clip_g"])


def test_diffusers_load_textual_inversion_reads_our_file(base, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    model = copy.deepcopy(base["model"])
    method = _method(model)
    gen = torch.Generator().manual_seed(4)
    method.load_vectors(
        {"clip_l": torch.randn(2, 32, generator=gen), "clip_g": torch.randn(2, 64, generator=gen)}
    )
    path = method.save(tmp_path, "zq", "safetensors", {})
    state = load_file(str(path))
    pipe = StableDiffusionXLPipeline.from_pretrained(str(base["folder"]), local_files_only=True)
    plain, _, plain_pooled, _ = pipe.encode_prompt(
        "a photo of <zq>", device="cpu", do_classifier_free_guidance=False
    )
    for key, encoder, tokenizer in (
        ("clip_l", pipe.text_encoder, pipe.tokenizer),
        ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2),
    ):
        pipe.load_textual_inversion(
            state[key], token="<zq>", text_encoder=encoder, tokenizer=tokenizer
        )
    with torch.no_grad():
        theirs, _, pooled, _ = pipe.encode_prompt(
            "a photo of <zq>", device="cpu", do_classifier_free_guidance=False
        )
    ours = _conditioning(model, "a photo of " + method.config.placeholder_text)
    assert (theirs - plain).abs().max() > 100 * TOLERANCE
    assert (pooled - plain_pooled).abs().max() > 100 * TOLERANCE
    torch.testing.assert_close(ours["encoder_hidden_states"], theirs, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(
        ours["added_cond_kwargs"]["text_embeds"], pooled, atol=TOLERANCE, rtol=0
    )

    # tsuika generate's embedding loader puts clip_l / clip_g into the two encoders too
    from tsuika.generation.adapters import attach
    from tsuika.generation.denoise import encode_prompt_states

    fresh = copy.deepcopy(base["model"])
    sizes = (len(fresh.tokenizer), len(fresh.tokenizer_2))
    adapters = attach(fresh, embeddings=[f"{path}:zq"])
    states = encode_prompt_states(fresh, [adapters.expand("a photo of zq")], torch.device("cpu"))
    torch.testing.assert_close(states.states, theirs, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(states.pooled, pooled, atol=TOLERANCE, rtol=0)
    adapters.remove()
    assert (len(fresh.tokenizer), len(fresh.tokenizer_2)) == sizes
    assert fresh.text_encoder_2.get_input_embeddings().weight.shape[0] == sizes[1]


def test_tsuika_train_textual_inversion_on_sdxl(base, tmp_path: Path) -> None:
    data = draw_dataset(tmp_path / "data", n=2)
    cfg = run_config(base["folder"], data, tmp_path / "out")
    cfg["method"] = {
        "name": "textual_inversion",
        "placeholder_token": "<zq>",
        "initializer_token": "circle",
        "num_vectors": 2,
    }
    cfg["training"].update(steps=2, save_every=0, gradient_accumulation=1, learning_rate=0.05)
    result = invoke(str(write_config(tmp_path / "run.toml", cfg)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert all(math.isfinite(v) for _, v in summary["train_loss"])
    state = load_file(summary["final_file"])
    start = _method(copy.deepcopy(base["model"])).vectors()
    for key in ("clip_l", "clip_g"):
        assert (state[key] - start[key]).abs().max() > 1e-4, key


def test_an_sd_embedding_on_sdxl_is_refused_naming_the_file(base, tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from tsuika.formats.embedding import EmbeddingFileError
    from tsuika.generation.adapters import attach

    path = tmp_path / "sd_only.safetensors"
    save_file({"emb_params": torch.ones(1, 32)}, str(path))
    model = copy.deepcopy(base["model"])
    with pytest.raises(EmbeddingFileError, match="sd_only.safetensors: an SD 1.x/2.x embedding"):
        attach(model, embeddings=[str(path)])
    assert len(model.tokenizer) == len(base["model"].tokenizer)
