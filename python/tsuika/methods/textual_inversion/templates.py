"""Training captions for Textual Inversion.

The method of Gal et al. 2022 ("An Image is Worth One Word", section 4)
trains on neutral prompt templates around the new word, so the embedding
takes up what the pictures share rather than what their captions say. The
lists here are our own phrasings of that idea: an object seen in different
photos, and a style seen in different pictures. ``"captions"`` mode keeps
the dataset's captions instead and puts the placeholder in for the class word.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a close-up photo of a {}",
    "a photo of the {}",
    "a cropped photo of a {}",
    "a bright photo of a {}",
    "a dark photo of the {}",
    "a good photo of a {}",
    "a blurry photo of the {}",
    "a photo of a small {}",
    "a photo of a large {}",
    "a clean photo of the {}",
    "a picture of a {}",
    "an image of the {}",
    "a snapshot of a {}",
    "a detailed photo of a {}",
)

STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a picture in the style of {}",
    "an illustration in the style of {}",
    "a drawing in the style of {}",
    "artwork in the style of {}",
    "a rendering in the style of {}",
    "a small painting in the style of {}",
    "a large picture in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a dark picture in the style of {}",
    "a detailed illustration in the style of {}",
    "a scene in the style of {}",
    "a landscape in the style of {}",
    "a portrait in the style of {}",
    "an image in the style of {}",
)

TEMPLATES: dict[str, tuple[str, ...]] = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}


def fill(template: str, placeholder_text: str) -> str:
    """``template`` with its ``{}`` replaced (plain replacement: braces in the text stay)."""
    return template.replace("{}", placeholder_text)


def _word(text: str, flags: int = 0) -> re.Pattern[str]:
    """``text`` as a whole word (not inside a longer word or ``tok_1``-style name)."""
    body = r"\s+".join(re.escape(part) for part in text.split())
    return re.compile(rf"(?<![\w-]){body}(?![\w-])", flags)


def caption_with_placeholder(
    caption: str, class_tokens: str, placeholder: str, placeholder_text: str
) -> str:
    """The dataset caption with the concept's placeholder in it.

    * A caption that already names ``placeholder`` keeps its wording; each
      occurrence becomes ``placeholder_text`` (all vectors of the embedding).
    * Otherwise the class word(s) (``class_tokens``, whole words, any case)
      are replaced by ``placeholder_text``.
    * Otherwise ``placeholder_text`` goes in front: ``"<tok>, caption"``.
    """
    caption = caption.strip()
    own = _word(placeholder)
    if own.search(caption):
        return own.sub(lambda _: placeholder_text, caption)
    if class_tokens.strip():
        cls = _word(class_tokens.strip(), re.IGNORECASE)
        if cls.search(caption):
            return cls.sub(lambda _: placeholder_text, caption)
    return f"{placeholder_text}, {caption}" if caption else placeholder_text


CaptionBuilder = Callable[[str, str, str, str, random.Random], str]


def _from_templates(mode: str) -> CaptionBuilder:
    def build(caption: str, class_tokens: str, ph: str, text: str, rng: random.Random) -> str:
        return fill(rng.choice(TEMPLATES[mode]), text)

    return build


def _from_caption(caption: str, class_tokens: str, ph: str, text: str, rng: random.Random) -> str:
    return caption_with_placeholder(caption, class_tokens, ph, text)


# template mode (config.CAPTION_MODES) -> how a training caption is made
CAPTION_BUILDERS: dict[str, CaptionBuilder] = {
    "object": _from_templates("object"),
    "style": _from_templates("style"),
    "captions": _from_caption,
}
