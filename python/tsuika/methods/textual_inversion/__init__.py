"""Textual Inversion: learn a new word's embedding vectors; nothing else in the model changes."""

from .config import (
    CAPTION_MODES,
    RECOMMENDED_LEARNING_RATE,
    TextualInversionConfig,
    placeholder_tokens,
)
from .method import TextualInversionMethod
from .templates import OBJECT_TEMPLATES, STYLE_TEMPLATES, TEMPLATES, caption_with_placeholder
from .tokens import PlaceholderError


def build(table: dict) -> TextualInversionMethod:
    """The registry factory: a ``[method]`` table (without ``name``) -> the method."""
    return TextualInversionMethod(TextualInversionConfig.from_dict(table))


__all__ = [
    "CAPTION_MODES",
    "OBJECT_TEMPLATES",
    "RECOMMENDED_LEARNING_RATE",
    "STYLE_TEMPLATES",
    "TEMPLATES",
    "PlaceholderError",
    "TextualInversionConfig",
    "TextualInversionMethod",
    "build",
    "caption_with_placeholder",
    "placeholder_tokens",
]
