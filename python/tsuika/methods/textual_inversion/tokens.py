"""Adding a placeholder word to the CLIP tokenizer and text encoder.

Pure helpers over a ``transformers`` CLIP tokenizer and text model; the
method (method.py) calls them from ``prepare``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from tsuika.errors import TsuikaError


class PlaceholderError(TsuikaError, ValueError):
    """The placeholder or initializer token does not fit the tokenizer; names the field."""


def check_new_tokens(tokenizer: Any, placeholder: str, tokens: list[str]) -> None:
    """Refuse a placeholder the tokenizer already knows.

    A token already in the vocabulary (``<|endoftext|>``, an added token) would be
    overwritten, and a placeholder that the tokenizer reads as one existing word
    (``dog`` -> ``dog</w>``) would be shadowed by the new token, changing that
    word in every prompt. diffusers' ``load_textual_inversion`` refuses the
    first case too.
    """
    vocab = tokenizer.get_vocab()
    taken = [t for t in tokens if t in vocab]
    if taken:
        raise PlaceholderError(
            f"method.placeholder_token: {', '.join(map(repr, taken))} already in the "
            "tokenizer's vocabulary; choose a new word such as '<my-concept>'"
        )
    pieces = tokenizer.tokenize(placeholder)
    if len(pieces) == 1 and pieces[0] in vocab:
        raise PlaceholderError(
            f"method.placeholder_token: {placeholder!r} is already the word {pieces[0]!r} "
            f"(id {vocab[pieces[0]]}) of the tokenizer and would change it; choose a new "
            f"word such as '<{placeholder}>'"
        )


def initializer_ids(tokenizer: Any, initializer: str) -> list[int]:
    """The token ids of the initializer word(s), without start/end tokens."""
    ids = tokenizer(initializer, add_special_tokens=False).input_ids
    if not ids:
        raise PlaceholderError(
            f"method.initializer_token: {initializer!r} gives no tokens; use a word such as 'dog'"
        )
    return list(ids)


def _added_ids(tokenizer: Any, tokens: list[str]) -> list[int]:
    """Add ``tokens`` to ``tokenizer``; their ids, after checking that text reaches them."""
    tokenizer.add_tokens(tokens)
    ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in tokens]
    read = tokenizer(" ".join(tokens), add_special_tokens=False).input_ids
    if list(read) != ids:
        pieces = tokenizer.convert_ids_to_tokens(read)
        raise PlaceholderError(
            f"method.placeholder_token: the tokenizer reads {' '.join(tokens)!r} as {pieces}, "
            f"not as the new token(s) {tokens}; choose a word the tokenizer keeps whole, "
            "such as '<my-concept>'"
        )
    return ids


def add_placeholder_tokens(tokenizer: Any, placeholder: str, tokens: list[str]) -> list[int]:
    """Check ``tokens`` on a copy of ``tokenizer``, then add them to it; their ids.

    A failing check leaves ``tokenizer`` unchanged.
    """
    check_new_tokens(tokenizer, placeholder, tokens)
    _added_ids(copy.deepcopy(tokenizer), tokens)
    return _added_ids(tokenizer, tokens)


def spread_initializer(count: int, init_ids: list[int]) -> list[int]:
    """Which initializer token each of ``count`` vectors starts from: cyclically,
    vector ``i`` from ``init_ids[i % len(init_ids)]``."""
    return [init_ids[i % len(init_ids)] for i in range(count)]


@torch.no_grad()
def grow_embedding(
    text_encoder: Any, new_ids: list[int], init_ids: list[int]
) -> torch.nn.Embedding:
    """Make room for ``new_ids`` in the input embedding table and fill each new row
    from its initializer row (see :func:`spread_initializer`); the table."""
    table = text_encoder.get_input_embeddings()
    rows = max(int(table.weight.shape[0]), max(new_ids) + 1)
    if rows != table.weight.shape[0]:
        # the new rows are written below, so skip transformers' mean/covariance init
        text_encoder.resize_token_embeddings(rows, mean_resizing=False)
        table = text_encoder.get_input_embeddings()
    weight = table.weight
    for new, source in zip(new_ids, spread_initializer(len(new_ids), init_ids), strict=True):
        weight[new] = weight[source]
    return table
