"""The CLIP tokenizer built from open-clip-torch's merges equals OpenCLIP's tokenizer."""

from __future__ import annotations

import json

import pytest
from open_clip.tokenizer import SimpleTokenizer
from tsuika.models import load_clip_tokenizer
from tsuika.models import tokenizer as tok

PROMPTS = [
    "a photo of sks dog",
    "A RED circle, on a white background!!",
    "masterpiece, (best quality:1.2), 1girl, looking at viewer",
    "naïve café 123 — éè ümlaut",
    "  spaces   and\ttabs\nnewline  ",
    "don't can't we'll it's",
]


@pytest.fixture(scope="module")
def openclip() -> SimpleTokenizer:
    return SimpleTokenizer()


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_open_clip(kind: str, prompt: str, openclip: SimpleTokenizer) -> None:
    ours = load_clip_tokenizer(kind)(prompt).input_ids
    assert ours == [49406, *openclip.encode(prompt), 49407]


@pytest.mark.parametrize(("kind", "pad_id"), [("sd1", 49407), ("sd2", 0)])
def test_padding_token(kind: str, pad_id: int) -> None:
    t = load_clip_tokenizer(kind)
    ids = t("a dog", padding="max_length", max_length=t.model_max_length).input_ids
    assert len(t) == 49408 and t.model_max_length == 77
    assert ids[:4] == [49406, 320, 1929, 49407]
    assert ids[4:] == [pad_id] * 73


def test_vocabulary_layout() -> None:
    vocab = tok.build_vocab(tok.read_merges(tok.bpe_path()))
    assert len(vocab) == 49408
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab[tok.BOS] == 49406 and vocab[tok.EOS] == 49407


def test_cache_is_built_atomically_in_the_user_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tok.tokenizer_folder.cache_clear()
    try:
        folder = tok.tokenizer_folder(tok.EOS)
        assert folder.parent == tmp_path / "tsuika" / "tokenizer"
        assert sorted(p.name for p in folder.iterdir()) == sorted(tok.TOKENIZER_FILES)
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(".build-")]
        assert json.loads((folder / "special_tokens_map.json").read_text())["pad_token"] == tok.EOS
    finally:
        tok.tokenizer_folder.cache_clear()


def test_unwritable_cache_falls_back_to_a_temp_dir(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    tok.tokenizer_folder.cache_clear()
    try:
        folder = tok.tokenizer_folder(tok.EOS)
        assert not str(folder).startswith(str(blocker))
        assert (folder / "vocab.json").is_file()
    finally:
        tok.tokenizer_folder.cache_clear()
