"""Textual Inversion settings and training captions (no model needed)."""

from __future__ import annotations

import random
import re

import pytest
from tsuika.methods.textual_inversion import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    TextualInversionConfig,
    TextualInversionMethod,
    build,
)
from tsuika.methods.textual_inversion.templates import fill

BASE = {"placeholder_token": "<sks>", "initializer_token": "dog"}

BAD_TABLES = {
    "missing placeholder": ({"initializer_token": "dog"}, "method.placeholder_token"),
    "missing initializer": ({"placeholder_token": "<sks>"}, "method.initializer_token"),
    "unknown key": ({**BASE, "rank": 4}, "rank"),
    "empty placeholder": ({**BASE, "placeholder_token": " "}, "method.placeholder_token"),
    "placeholder with space": ({**BASE, "placeholder_token": "my dog"}, "one word"),
    "placeholder not a string": ({**BASE, "placeholder_token": 3}, "method.placeholder_token"),
    "empty initializer": ({**BASE, "initializer_token": ""}, "method.initializer_token"),
    "zero vectors": ({**BASE, "num_vectors": 0}, "method.num_vectors"),
    "too many vectors": ({**BASE, "num_vectors": 76}, "method.num_vectors"),
    "vectors as text": ({**BASE, "num_vectors": "2"}, "method.num_vectors"),
    "vectors as bool": ({**BASE, "num_vectors": True}, "method.num_vectors"),
    "unknown template": ({**BASE, "template": "person"}, "'object', 'style', 'captions'"),
    "negative lr": ({**BASE, "embedding_lr": -1.0}, "method.embedding_lr"),
    "nan lr": ({**BASE, "embedding_lr": float("nan")}, "method.embedding_lr"),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_tables_name_the_field(case):
    table, expected = BAD_TABLES[case]
    with pytest.raises(ValueError, match=re.escape(expected)):
        TextualInversionConfig.from_dict(table)


def test_defaults_and_tokens():
    cfg = TextualInversionConfig.from_dict({**BASE, "num_vectors": 3})
    assert (cfg.template, cfg.embedding_lr) == ("object", None)
    assert cfg.tokens == ["<sks>", "<sks>_1", "<sks>_2"]
    assert cfg.placeholder_text == "<sks> <sks>_1 <sks>_2"
    assert TextualInversionConfig.from_dict(cfg.to_dict()) == cfg
    method = build(cfg.to_dict())
    assert isinstance(method, TextualInversionMethod) and method.name == "textual_inversion"


def _method(**options) -> TextualInversionMethod:
    return build({**BASE, **options})


@pytest.mark.parametrize(
    ("mode", "templates"), [("object", OBJECT_TEMPLATES), ("style", STYLE_TEMPLATES)]
)
@pytest.mark.parametrize("vectors", [1, 3])
def test_templates_substitute_the_placeholder(mode, templates, vectors):
    method = _method(template=mode, num_vectors=vectors)
    text = method.config.placeholder_text
    allowed = {fill(t, text) for t in templates}
    rng = random.Random(0)
    seen = [method.transform_caption("a red circle", "shape", rng) for _ in range(200)]
    assert set(seen) <= allowed
    assert len(set(seen)) > len(templates) // 2  # the choice varies with the rng
    assert all(text in s and "{}" not in s and "red circle" not in s for s in seen)
    again = [method.transform_caption("", "", random.Random(0)) for _ in range(3)]
    assert again == [again[0]] * 3  # same rng state, same template
    if mode == "style":
        assert all("style of " + text in s for s in seen)


CAPTION_CASES = [
    # caption, class tokens, vectors, expected
    ("a photo of a dog", "dog", 1, "a photo of a <sks>"),
    ("A Dog on the grass, dog toy", "dog", 1, "A <sks> on the grass, <sks> toy"),
    ("a photo of sks dog", "sks dog", 2, "a photo of <sks> <sks>_1"),
    ("a hotdog stand", "dog", 1, "<sks>, a hotdog stand"),
    ("a red circle", "", 1, "<sks>, a red circle"),
    ("", "dog", 2, "<sks> <sks>_1"),
    ("a <sks> on the grass, dog", "dog", 2, "a <sks> <sks>_1 on the grass, dog"),
    ("  a dog  ", "dog", 1, "a <sks>"),
]


@pytest.mark.parametrize(("caption", "cls", "vectors", "expected"), CAPTION_CASES)
def test_captions_mode_puts_the_placeholder_in(caption, cls, vectors, expected):
    method = _method(template="captions", num_vectors=vectors)
    assert method.transform_caption(caption, cls, random.Random(0)) == expected
