"""The Textual Inversion method on a tiny model: tokens, initial vectors, and that only
the new rows of the embedding table ever change."""

from __future__ import annotations

import copy
import random
import re

import pytest
import torch
from tsuika.methods.textual_inversion import PlaceholderError, build
from tsuika.models.tiny import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return build_tiny_model(seed=0)


def _prepared(base, **options):
    model = copy.deepcopy(base)
    method = build({"placeholder_token": "<sks>", "initializer_token": "dog", **options})
    method.prepare(model)
    return model, method


def _table(model) -> torch.Tensor:
    return model.text_encoder.get_input_embeddings().weight


BAD_PLACEHOLDERS = {
    "special token": ("<|endoftext|>", "already in the tokenizer's vocabulary"),
    "existing word piece": ("dog", "'dog' already in the tokenizer's vocabulary"),
    "existing word": ("sks", "already the word 'sks</w>'"),
    "existing word, other case": ("Sks", "already the word 'sks</w>'"),
}


@pytest.mark.parametrize("case", list(BAD_PLACEHOLDERS))
def test_placeholder_the_tokenizer_knows_is_refused(base, case):
    placeholder, expected = BAD_PLACEHOLDERS[case]
    model = copy.deepcopy(base)
    method = build({"placeholder_token": placeholder, "initializer_token": "dog"})
    with pytest.raises(PlaceholderError, match=re.escape(expected)) as err:
        method.prepare(model)
    assert "method.placeholder_token" in str(err.value)
    assert len(model.tokenizer) == len(base.tokenizer)  # the tokenizer is left unchanged
    assert _table(model).shape == _table(base).shape


def test_placeholder_added_before_is_refused(base):
    model, _ = _prepared(base, num_vectors=2)
    again = build({"placeholder_token": "<SKS>", "initializer_token": "cat"})
    with pytest.raises(PlaceholderError, match=re.escape("already the word '<sks>'")):
        again.prepare(model)  # CLIP lowercases: <SKS> would read as the added <sks>
    other = build({"placeholder_token": "<sks>", "initializer_token": "cat", "num_vectors": 2})
    with pytest.raises(PlaceholderError, match=re.escape("'<sks>', '<sks>_1'")):
        other.prepare(model)


INITIALIZERS = [
    # initializer, vectors, the initializer tokens each vector starts from
    ("dog", 1, ["dog</w>"]),
    ("dog", 3, ["dog</w>"] * 3),
    ("golden retriever", 3, ["golden</w>", "retriever</w>", "golden</w>"]),
    ("a red circle", 2, ["a</w>", "red</w>"]),
    ("a red circle", 5, ["a</w>", "red</w>", "circle</w>", "a</w>", "red</w>"]),
]


@pytest.mark.parametrize(("initializer", "vectors", "sources"), INITIALIZERS)
def test_new_rows_start_from_the_initializer_cyclically(base, initializer, vectors, sources):
    model, method = _prepared(base, initializer_token=initializer, num_vectors=vectors)
    tok = model.tokenizer
    assert method.token_ids == list(range(len(base.tokenizer), len(base.tokenizer) + vectors))
    assert tok.convert_ids_to_tokens(method.token_ids) == method.config.tokens
    expected = _table(base)[tok.convert_tokens_to_ids(sources)]
    assert torch.equal(method.vectors(), expected.detach())
    assert _table(model).shape[0] == len(base.tokenizer) + vectors
    # the caption the loop encodes reaches every new token, in order
    caption = method.transform_caption("a dog", "dog", random.Random(1))
    ids = tok(caption, add_special_tokens=False).input_ids
    start = ids.index(method.token_ids[0])
    assert ids[start : start + vectors] == method.token_ids


def test_everything_but_the_table_is_frozen(base):
    model, method = _prepared(base, num_vectors=2)
    trainable = [
        (part, name)
        for part in ("unet", "vae", "text_encoder")
        for name, p in getattr(model, part).named_parameters()
        if p.requires_grad
    ]
    assert len(trainable) == 1 and trainable[0][0] == "text_encoder"
    groups = method.param_groups(1e-3)
    assert [g["params"] for g in groups] == [[_table(model)]] and groups[0]["lr"] == 1e-3
    _, fast = _prepared(base, embedding_lr=5e-3)
    assert fast.param_groups(1e-4)[0]["lr"] == 5e-3


def _loss(model, method) -> torch.Tensor:
    captions = [method.transform_caption("", "", random.Random(i)) for i in range(2)]
    captions.append("a photo of a dog and a cat")  # old rows in the graph too
    tok = model.tokenizer
    ids = tok(captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    hidden = model.text_encoder(ids.input_ids)[0]
    return (hidden - 0.5).pow(2).mean()


OPTIMIZERS = {
    "adamw+decay": lambda p: torch.optim.AdamW(p, lr=5e-2, weight_decay=0.1),
    "adam+l2": lambda p: torch.optim.Adam(p, lr=5e-2, weight_decay=0.1),
    "sgd+momentum+decay": lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, weight_decay=0.1),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("vectors", [1, 3])
def test_only_the_new_rows_change_across_steps(base, opt, vectors):
    model, method = _prepared(base, num_vectors=vectors)
    before = _table(model).detach().clone()
    optimizer = OPTIMIZERS[opt](method.param_groups(1.0)[0]["params"])
    new = torch.zeros(before.shape[0], dtype=torch.bool)
    new[method.token_ids] = True
    for step in range(4):
        _loss(model, method).backward()
        grad = _table(model).grad
        assert grad[~new].abs().max() == 0 and grad[new].abs().max() > 0
        optimizer.step()
        optimizer.zero_grad()
        method.after_step()
        after = _table(model).detach()
        assert torch.equal(after[~new], before[~new]), f"frozen rows moved at step {step}"
    assert method.steps == 4
    moved = (_table(model).detach() != before).any(dim=1)
    assert moved[new].all()  # every new vector learned
    assert torch.equal(_table(model).detach()[: len(base.tokenizer)], _table(base).detach())


def test_decay_would_move_frozen_rows_without_after_step(base):
    """The restore in after_step is what keeps the rows: decoupled decay moves them."""
    model, method = _prepared(base)
    before = _table(model).detach().clone()
    optimizer = torch.optim.AdamW([_table(model)], lr=5e-2, weight_decay=0.1)
    _loss(model, method).backward()
    optimizer.step()
    changed = (_table(model).detach() != before).any(dim=1)
    assert changed[: len(base.tokenizer)].sum() > 1000
    method.after_step()
    assert torch.equal(_table(model).detach()[: len(base.tokenizer)], before[: len(base.tokenizer)])


def test_adapter_state_round_trip(base):
    model, method = _prepared(base, num_vectors=2)
    trained = torch.randn(2, _table(model).shape[1], generator=torch.Generator().manual_seed(5))
    method.load_vectors(trained)
    state = method.adapter_state()
    assert list(state) == ["emb_params"] and torch.equal(state["emb_params"], trained)
    other_model, other = _prepared(base, num_vectors=2)
    other.load_adapter_state(state)
    assert torch.equal(_table(other_model)[other.token_ids].detach(), trained)
    with pytest.raises(ValueError, match=r"shape \[3, 32\], expected \[2, 32\]"):
        other.load_adapter_state({"emb_params": torch.zeros(3, 32)})
    with pytest.raises(ValueError, match="expects the one key 'emb_params'"):
        other.load_adapter_state({"weight": trained})
    with pytest.raises(ValueError, match="non-finite"):
        other.load_vectors(torch.full((2, 32), float("nan")))


def test_prepare_twice_is_a_no_op_and_unprepared_use_fails(base):
    model, method = _prepared(base)
    size = len(model.tokenizer)
    method.prepare(model)
    assert len(model.tokenizer) == size
    fresh = build({"placeholder_token": "<sks>", "initializer_token": "dog"})
    with pytest.raises(RuntimeError, match="prepare"):
        fresh.vectors()
