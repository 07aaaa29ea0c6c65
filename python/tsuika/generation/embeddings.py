"""Textual Inversion embeddings at inference: a word in the prompt becomes the file's vectors.

A1111 triggers an embedding by its name (the file's stem) wherever the name
appears in the prompt as a word, in any case, and puts all of its vectors
there. Here each vector gets an internal token (``<tsuika-emb-{i}-{j}>``)
added to the tokenizer, with its row in the text encoder's embedding table;
:meth:`EmbeddingSet.expand` rewrites the user's word into those tokens
before tokenising. Internal names cannot collide with real text, so the
trigger word is matched as a whole word only (never inside a longer word,
which a token added under the word itself would be).

:meth:`EmbeddingSet.remove` restores the tokenizer and the table.
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


class EmbeddingSet:
    """Embeddings loaded into a model; ``words`` maps each trigger word to its tokens."""

    def __init__(self, model: BaseModel) -> None:
        self.model = model
        self.words: dict[str, list[str]] = {}
        self.files: dict[str, Path] = {}
        self._tokenizer = copy.deepcopy(model.tokenizer)
        self._rows = int(model.text_encoder.get_input_embeddings().weight.shape[0])

    def expand(self, prompt: str) -> str:
        """``prompt`` with each trigger word replaced by its internal tokens."""
        for word, tokens in self.words.items():
            pattern = re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])", re.IGNORECASE)
            prompt = pattern.sub(lambda _, t=tokens: " ".join(t), prompt)
        return prompt

    def remove(self) -> None:
        if not self.words:
            return
        self.model.tokenizer = self._tokenizer
        self.model.text_encoder.resize_token_embeddings(self._rows, mean_resizing=False)
        self.words, self.files = {}, {}


def _vectors(path: Path, width: int) -> torch.Tensor:
    vectors, _ = load_embedding(path)
    if not isinstance(vectors, torch.Tensor):
        raise EmbeddingFileError(
            f"{path}: an SDXL embedding (clip_l + clip_g); this model is SD 1.x/2.x"
        )
    if vectors.shape[1] != width:
        raise EmbeddingFileError(
            f"{path}: vectors of width {vectors.shape[1]}, the text encoder's is {width} "
            "(an embedding for another model family?)"
        )
    return vectors


def load_embeddings(
    model: BaseModel, files: Sequence[tuple[str | os.PathLike, str | None]]
) -> EmbeddingSet:
    """Load embedding files ``[(path, trigger word or None = the file's stem)]`` into ``model``."""
    loaded = EmbeddingSet(model)
    table = model.text_encoder.get_input_embeddings()
    width = int(table.weight.shape[1])
    pending: list[tuple[str, Path, torch.Tensor]] = []
    for path, word in files:
        path = Path(path)
        word = (word or path.stem).strip()
        if not word or any(c.isspace() for c in word):
            raise EmbeddingFileError(f"{path}: trigger word {word!r} must be one word")
        if word.lower() in (w.lower() for w, _, _ in pending):
            raise EmbeddingFileError(f"{path}: trigger word {word!r} is used by two embeddings")
        pending.append((word, path, _vectors(path, width)))
    for i, (word, path, vectors) in enumerate(pending):
        tokens = [f"<tsuika-emb-{i}-{j}>" for j in range(vectors.shape[0])]
        model.tokenizer.add_tokens(tokens)
        loaded.words[word], loaded.files[word] = tokens, path
    if not pending:
        return loaded
    model.text_encoder.resize_token_embeddings(len(model.tokenizer), mean_resizing=False)
    weight = model.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for word, _, vectors in pending:
            ids = model.tokenizer.convert_tokens_to_ids(loaded.words[word])
            weight[ids] = vectors.to(weight.device, weight.dtype)
    return loaded
