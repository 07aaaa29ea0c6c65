"""Textual Inversion settings: one dataclass, validated when built, errors naming the field."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from tsuika.checks import Rule
from tsuika.methods.options import check_options, reject_unknown
from tsuika.methods.options import option_error as _fail

# How training captions are made (see templates.py): pick a template for an
# object or a style, or keep the dataset's captions with the placeholder put in.
CAPTION_MODES = ("object", "style", "captions")
# A CLIP prompt holds 75 tokens between its start and end tokens.
MAX_VECTORS = 75
# The learning rate Textual Inversion usually trains at (AUTOMATIC1111's default
# embedding learning rate is 0.005); ``[training] learning_rate`` is often set for LoRA.
RECOMMENDED_LEARNING_RATE = 5e-3


RULES = {
    "placeholder_token": Rule(str, nonempty=True),
    "initializer_token": Rule(str, nonempty=True),
    "num_vectors": Rule(int, low=1, high=MAX_VECTORS),
    "template": Rule(str, choices=CAPTION_MODES),
    "embedding_lr": Rule(float | None, low=0.0, open_low=True, finite=True),
}


@dataclass
class TextualInversionConfig:
    """What a Textual Inversion embedding learns and how.

    * ``placeholder_token``: the new word the embedding is trained for
      (``"<sks>"``, ``"sks-style"``). With ``num_vectors`` = n the tokenizer
      gains n tokens ``tok``, ``tok_1``, ..., ``tok_{n-1}`` (diffusers'
      naming for multi-vector embeddings); it must be a new word, not one
      the tokenizer already has.
    * ``initializer_token``: a word (or a few) whose embedding the new
      vectors start from; several tokens are spread cyclically over the
      vectors (vector i starts from token ``i mod k``).
    * ``num_vectors``: vectors per token (1 .. 75).
    * ``template``: ``"object"`` / ``"style"`` train on prompt templates
      ("a photo of a {}", "a painting in the style of {}"); ``"captions"``
      trains on the dataset's captions with the placeholder put in for the
      class word (or in front of the caption).
    * ``embedding_lr``: learning rate of the embedding (``None``:
      ``[training] learning_rate``); :data:`RECOMMENDED_LEARNING_RATE` is
      the usual value.
    """

    placeholder_token: str
    initializer_token: str
    num_vectors: int = 1
    template: str = "object"
    embedding_lr: float | None = None

    def __post_init__(self) -> None:
        check_options(self, RULES)
        token = self.placeholder_token
        if token != token.strip() or any(ch.isspace() for ch in token):
            raise _fail("placeholder_token", f"must be one word without spaces, got {token!r}")

    @property
    def tokens(self) -> list[str]:
        """The tokens added to the tokenizer: ``tok``, ``tok_1``, ..., ``tok_{n-1}``."""
        return placeholder_tokens(self.placeholder_token, self.num_vectors)

    @property
    def placeholder_text(self) -> str:
        """What stands for the concept in a training caption: the tokens, space-separated."""
        return " ".join(self.tokens)

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> TextualInversionConfig:
        """Build from a ``[method]`` table without ``name``; unknown or missing keys are errors."""
        reject_unknown("textual_inversion", table, [f.name for f in fields(cls)])
        for required, example in (("placeholder_token", "<sks>"), ("initializer_token", "dog")):
            if required not in table:
                raise _fail(required, f"is required for textual_inversion (e.g. {example!r})")
        return cls(**table)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def placeholder_tokens(placeholder: str, num_vectors: int) -> list[str]:
    """``[tok, tok_1, ..., tok_{n-1}]``: how diffusers' ``load_textual_inversion`` names the
    tokens of a multi-vector embedding (``_extend_tokens_and_embeddings``)."""
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)]
