"""Embedding files against their readers: diffusers' ``load_textual_inversion``, the
layout AUTOMATIC1111 writes, and our own reader (round trips and refusals)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tsuika.formats.embedding import (
    FORMATS,
    EmbeddingFileError,
    EmbeddingInfo,
    UnsafeEmbeddingError,
    load_embedding,
    read_embedding,
    save_embedding,
)
from tsuika.methods.textual_inversion import build
from tsuika.models.pipeline import ddim_pipeline
from tsuika.models.tiny import build_tiny_model

DIM = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return build_tiny_model(seed=0)


def _trained(base, placeholder: str, vectors: int):
    """A prepared copy of ``base`` whose new vectors are random (as after training)."""
    model = copy.deepcopy(base)
    method = build(
        {"placeholder_token": placeholder, "initializer_token": "dog", "num_vectors": vectors}
    )
    method.prepare(model)
    gen = torch.Generator().manual_seed(11)
    method.load_vectors(torch.randn(vectors, DIM, generator=gen))
    for _ in range(3):
        method.after_step()
    return model, method


@pytest.mark.parametrize("vectors", [1, 3])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_diffusers_load_textual_inversion_places_our_vectors(base, tmp_path, fmt, vectors):
    model, method = _trained(base, "<sks>", vectors)
    path = method.save(tmp_path, "mine", fmt, {"ss_steps": "3"})
    assert path == tmp_path / f"mine{FORMATS[fmt].suffix}"

    pipe = ddim_pipeline(copy.deepcopy(base))  # an untouched model, as a user's would be
    pipe.load_textual_inversion(str(path), token="<sks>")
    prompt = pipe.maybe_convert_prompt("a photo of <sks>", pipe.tokenizer)
    assert prompt == "a photo of " + method.config.placeholder_text
    expanded = pipe.maybe_convert_prompt("<sks>", pipe.tokenizer)
    ids = pipe.tokenizer(expanded, add_special_tokens=False).input_ids
    assert len(ids) == vectors and all(i >= len(base.tokenizer) for i in ids)
    placed = pipe.text_encoder.get_input_embeddings().weight.detach()[ids]
    assert torch.equal(placed, method.vectors())

    # the prompt encodes to what our own model makes of the training caption
    with torch.no_grad():
        theirs, _ = pipe.encode_prompt("a photo of <sks>", "cpu", 1, False)
        tok = model.tokenizer
        ours_ids = tok(
            "a photo of " + method.config.placeholder_text,
            padding="max_length",
            max_length=tok.model_max_length,
            return_tensors="pt",
        ).input_ids
        ours = model.text_encoder(ours_ids)[0]
    assert torch.allclose(theirs, ours, atol=1e-6)


def test_diffusers_reads_the_token_from_a_diffusers_file(base, tmp_path):
    _, method = _trained(base, "sks-style", 2)
    path = method.save(tmp_path, "style", "diffusers", {})
    pipe = ddim_pipeline(copy.deepcopy(base))
    pipe.load_textual_inversion(str(path))  # no token=: the file's key
    ids = pipe.tokenizer.convert_tokens_to_ids(["sks-style", "sks-style_1"])
    assert torch.equal(
        pipe.text_encoder.get_input_embeddings().weight.detach()[ids], method.vectors()
    )


def test_a1111_pt_has_the_keys_and_types_a1111_writes(base, tmp_path):
    _, method = _trained(base, "<sks>", 2)
    meta = {"ss_sd_model_name": "v1-5-pruned-emaonly.safetensors"}
    path = method.save(tmp_path, "mine", "a1111", meta)
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert list(data) == [
        "string_to_token",
        "string_to_param",
        "name",
        "step",
        "sd_checkpoint",
        "sd_checkpoint_name",
    ]
    assert data["string_to_token"] == {"*": 265} and type(data["string_to_token"]["*"]) is int
    assert list(data["string_to_param"]) == ["*"]
    vec = data["string_to_param"]["*"]
    assert type(vec) is torch.Tensor and vec.dtype == torch.float32 and not vec.requires_grad
    assert torch.equal(vec, method.vectors()) and vec.shape == (2, DIM)
    assert data["name"] == "mine" and type(data["step"]) is int and data["step"] == 3
    assert data["sd_checkpoint"] is None
    assert data["sd_checkpoint_name"] == "v1-5-pruned-emaonly"
    # how A1111's EmbeddingDatabase.load_from_file sizes it: vectors, then width
    assert (vec.shape[0], vec.shape[-1]) == (2, DIM)
    # after a resume the method has seen fewer steps than the run: the loop's count wins
    resumed = method.save(tmp_path, "resumed", "a1111", {**meta, "ss_steps": "10"})
    assert torch.load(resumed, weights_only=True)["step"] == 10


@pytest.mark.parametrize("fmt", ["safetensors", "diffusers"])
def test_safetensors_forms_hold_one_tensor_and_string_metadata(base, tmp_path, fmt):
    from safetensors import safe_open

    _, method = _trained(base, "<sks>", 3)
    path = method.save(tmp_path, "mine", fmt, {"ss_steps": "3"})
    with safe_open(str(path), framework="pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys == (["emb_params"] if fmt == "safetensors" else ["<sks>"])
    assert meta["ss_steps"] == "3" and meta["ti_placeholder_token"] == "<sks>"
    assert meta["ti_num_vectors"] == "3"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


ROUND_TRIPS = {
    # format -> (layout read back, suggested token)
    "a1111": ("a1111", "mine"),
    "safetensors": ("safetensors", "mine"),
    "diffusers": ("diffusers", "<sks>"),
}


@pytest.mark.parametrize("vectors", [1, 4])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_reader_round_trips_each_format(tmp_path, fmt, vectors):
    vec = torch.randn(vectors, DIM, generator=torch.Generator().manual_seed(vectors))
    info = EmbeddingInfo(token="<sks>", name="mine", step=7, sd_checkpoint_name="base")
    path = save_embedding(tmp_path, fmt, vec, info)
    found = read_embedding(path)
    layout, token = ROUND_TRIPS[fmt]
    assert (found.layout, found.token, found.num_vectors) == (layout, token, vectors)
    assert torch.equal(found.vectors, vec)
    vectors, suggested = load_embedding(path)
    assert torch.equal(vectors, vec) and suggested == token
    if fmt == "a1111":
        assert (found.name, found.step, found.sd_checkpoint_name) == ("mine", 7, "base")


def test_reader_accepts_sdxl_and_other_writers_layouts(tmp_path):
    gen = torch.Generator().manual_seed(0)
    clip_l, clip_g = torch.randn(2, 768, generator=gen), torch.randn(2, 1280, generator=gen)
    save_file(
        {"clip_l": clip_l, "clip_g": clip_g}, str(tmp_path / "xl.safetensors")
    )  # as kohya writes
    vectors, token = load_embedding(tmp_path / "xl.safetensors")
    assert (
        token == "xl"
        and torch.equal(vectors["clip_l"], clip_l)
        and torch.equal(vectors["clip_g"], clip_g)
    )
    ours = save_embedding(
        tmp_path, "safetensors", {"clip_l": clip_l, "clip_g": clip_g}, EmbeddingInfo("t", "xl2")
    )
    assert read_embedding(ours).layout == "sdxl"
    with pytest.raises(EmbeddingFileError, match="SDXL clip_l/clip_g"):
        save_embedding(
            tmp_path, "a1111", {"clip_l": clip_l, "clip_g": clip_g}, EmbeddingInfo("t", "x")
        )

    one = torch.randn(DIM, generator=gen)
    torch.save({"<cat-toy>": one}, tmp_path / "learned_embeds.bin")  # diffusers' .bin
    vectors, token = load_embedding(tmp_path / "learned_embeds.bin")
    assert token == "<cat-toy>" and torch.equal(vectors, one.unsqueeze(0))
    torch.save({"emb_params": one.half()}, tmp_path / "kohya.pt")  # kohya's .pt, fp16
    vectors, token = load_embedding(tmp_path / "kohya.pt")
    assert token == "kohya" and vectors.dtype == torch.float32 and vectors.shape == (1, DIM)
    torch.save(one.repeat(3, 1), tmp_path / "bare.pt")
    assert read_embedding(tmp_path / "bare.pt").layout == "tensor"
    trained = torch.randn(2, DIM, generator=gen).requires_grad_(True)  # A1111 saves vec so
    torch.save({"string_to_param": {"*": trained}, "name": "n", "step": 5}, tmp_path / "a.pt")
    found = read_embedding(tmp_path / "a.pt")
    assert torch.equal(found.vectors, trained.detach()) and found.step == 5 and found.token == "a"


class _RunsCode:
    """Unpickling this would create a marker file: the reader must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error must say)."""
    t = torch.ones(2, DIM)
    files: dict[str, tuple[Path, str]] = {}

    def st(name: str, tensors: dict, expected: str) -> None:
        save_file(tensors, str(folder / name))
        files[name] = (folder / name, expected)

    def pt(name: str, obj: object, expected: str) -> None:
        torch.save(obj, folder / name)
        files[name] = (folder / name, expected)

    st(
        "nan.safetensors",
        {"emb_params": torch.tensor([[1.0, float("nan")]])},
        "emb_params: holds non-finite",
    )
    st("inf.safetensors", {"<x>": torch.tensor([[float("inf"), 1.0]])}, "'<x>': holds non-finite")
    st(
        "rank3.safetensors",
        {"<x>": torch.zeros(1, 2, DIM)},
        "shape [n_vectors, dim], got [1, 2, 32]",
    )
    st("empty.safetensors", {"emb_params": torch.zeros(0, DIM)}, "empty embedding")
    st("ints.safetensors", {"emb_params": torch.zeros(2, DIM, dtype=torch.int32)}, "floating-point")
    st("two.safetensors", {"a": t, "b": t.clone()}, "unknown embedding layout with keys ['a', 'b']")
    st(
        "xl.safetensors",
        {"clip_l": t.clone(), "clip_g": torch.ones(3, 64)},
        "differ in vector count",
    )
    pt("multi.pt", {"string_to_param": {"*": t, "+": t.clone()}}, "exactly one entry")
    pt("list.pt", [t], "a list, not a dict of tensors")
    pt("param_list.pt", {"string_to_param": [t]}, "string_to_param must be a dict")
    (folder / "cut.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    files["cut.safetensors"] = (folder / "cut.safetensors", "not a readable safetensors file")
    (folder / "junk.pt").write_bytes(b"not a pickle at all")
    files["junk.pt"] = (folder / "junk.pt", "not a readable torch file (Unsupported operand")
    return files


def test_reader_refuses_bad_files_naming_file_and_key(tmp_path):
    for name, (path, expected) in _bad_files(tmp_path).items():
        with pytest.raises(EmbeddingFileError) as err:
            read_embedding(path)
        assert not isinstance(err.value, UnsafeEmbeddingError), name
        assert str(path) in str(err.value), name
        assert expected in str(err.value), (name, str(err.value))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_embedding(tmp_path / "missing.pt")


def test_reader_refuses_pickled_code_without_running_it(tmp_path):
    marker = tmp_path / "was-run"
    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.ones(1, DIM)}, "x": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeEmbeddingError, match="refusing to load") as err:
        read_embedding(path)
    assert str(path) in str(err.value) and "GLOBAL" in str(err.value) and "mkdir" in str(err.value)
    assert not marker.exists()


def test_unknown_output_format_is_named(base, tmp_path):
    _, method = _trained(base, "<sks>", 1)
    with pytest.raises(
        EmbeddingFileError, match="'kohya' is not an embedding format; allowed: a1111"
    ):
        method.save(tmp_path, "mine", "kohya", {})
