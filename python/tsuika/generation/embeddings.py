"""Textual Inversion embeddings at inference: a word in the prompt becomes the file's vectors.

A1111 triggers an embedding by its name (the file's stem) wherever the name
appears in the prompt as a word, in any case, and puts all of its vectors
there. Here each vector gets an internal token (``<tsuika-emb-{i}-{j}>``)
added to the tokenizer, with its row in the text encoder's embedding table;
:meth:`EmbeddingSet.expand` rewrites the user's word into those tokens
before tokenising. Internal names cannot collide with real text, so the
trigger word is matched as a whole word only (never inside a longer word,
which a token added under the word itself would be).

:meth:`EmbeddingSet.remove` restores the tokenizer and the table. An SDXL
embedding goes into both text encoders (``clip_l`` and ``clip_g``).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from tsuika.formats.embedding import EmbeddingFileError, load_embedding
from tsuika.models.base import BaseModel

# (file key, text encoder, tokenizer) of each table an embedding goes into; SD's one
# tensor has no key, SDXL's file holds clip_l and clip_g
SD_ENCODERS: tuple[tuple[str | None, str, str], ...] = ((None, "text_encoder", "tokenizer"),)
ENCODERS: dict[str, tuple[tuple[str | None, str, str], ...]] = {
    "sdxl": (("clip_l", "text_encoder", "tokenizer"), ("clip_g", "text_encoder_2", "tokenizer_2")),
}


def _encoders(model: BaseModel) -> tuple[tuple[str | None, str, str], ...]:
    return ENCODERS.get(model.kind, SD_ENCODERS)


class EmbeddingSet:
    """Embeddings loaded into a model; ``words`` maps each trigger word to its tokens."""

    def __init__(self, model: BaseModel) -> None:
        self.model = model
        self.words: dict[str, list[str]] = {}
        self.files: dict[str, Path] = {}
        # (encoder attr, tokenizer attr, tokenizer as it was, table rows as they were)
        self._saved = [
            (enc, tok, copy.deepcopy(getattr(model, tok)), _table(model, enc).shape[0])
            for _, enc, tok in _encoders(model)
        ]

    def expand(self, prompt: str) -> str:
        """``prompt`` with each trigger word replaced by its internal tokens."""
        for word, tokens in self.words.items():
            pattern = re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])", re.IGNORECASE)
            prompt = pattern.sub(lambda _, t=tokens: " ".join(t), prompt)
        return prompt

    def remove(self) -> None:
        if not self.words:
            return
        for enc, tok, tokenizer, rows in self._saved:
            setattr(self.model, tok, tokenizer)
            getattr(self.model, enc).resize_token_embeddings(int(rows), mean_resizing=False)
        self.words, self.files = {}, {}


def _table(model: BaseModel, encoder: str) -> torch.Tensor:
    return getattr(model, encoder).get_input_embeddings().weight


def _vectors(path: Path, widths: dict[str | None, int]) -> dict[str | None, torch.Tensor]:
    """The file's vectors per table key, each checked against its table's width."""
    vectors, _ = load_embedding(path)
    if isinstance(vectors, torch.Tensor):
        if None not in widths:
            raise EmbeddingFileError(
                f"{path}: an SD 1.x/2.x embedding (one [n, dim] tensor); this model is SDXL "
                "and needs clip_l + clip_g"
            )
        vectors = {None: vectors}
    elif None in widths:
        raise EmbeddingFileError(
            f"{path}: an SDXL embedding (clip_l + clip_g); this model is SD 1.x/2.x"
        )
    for key, width in widths.items():
        if vectors[key].shape[1] != width:
            raise EmbeddingFileError(
                f"{path}: {key + ' ' if key else ''}vectors of width {vectors[key].shape[1]}, "
                f"the text encoder's is {width} (an embedding for another model family?)"
            )
    return vectors


def load_embeddings(
    model: BaseModel, files: Sequence[tuple[str | os.PathLike, str | None]]
) -> EmbeddingSet:
    """Load embedding files ``[(path, trigger word or None = the file's stem)]`` into ``model``
    (SDXL: ``clip_l`` into text encoder 1, ``clip_g`` into text encoder 2)."""
    loaded = EmbeddingSet(model)
    encoders = _encoders(model)
    widths = {key: int(_table(model, enc).shape[1]) for key, enc, _ in encoders}
    pending: list[tuple[str, Path, dict[str | None, torch.Tensor]]] = []
    for path, word in files:
        path = Path(path)
        word = (word or path.stem).strip()
        if not word or any(c.isspace() for c in word):
            raise EmbeddingFileError(f"{path}: trigger word {word!r} must be one word")
        if word.lower() in (w.lower() for w, _, _ in pending):
            raise EmbeddingFileError(f"{path}: trigger word {word!r} is used by two embeddings")
        pending.append((word, path, _vectors(path, widths)))
    for i, (word, path, vectors) in enumerate(pending):
        count = next(iter(vectors.values())).shape[0]
        tokens = [f"<tsuika-emb-{i}-{j}>" for j in range(count)]
        for _, _, tok in encoders:
            getattr(model, tok).add_tokens(tokens)
        loaded.words[word], loaded.files[word] = tokens, path
    if not pending:
        return loaded
    for key, enc, tok in encoders:
        tokenizer, encoder = getattr(model, tok), getattr(model, enc)
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        weight = _table(model, enc)
        with torch.no_grad():
            for word, _, vectors in pending:
                ids = tokenizer.convert_tokens_to_ids(loaded.words[word])
                weight[ids] = vectors[key].to(weight.device, weight.dtype)
    return loaded
