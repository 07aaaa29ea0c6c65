"""Caption processing: pure functions, deterministic for a given (seed, epoch, index).

The operations follow kohya-ss/sd-scripts' ``process_caption`` (tag shuffle
keeping the first ``keep_tokens`` tags, per-tag dropout, whole-caption
dropout), with two tsuika choices, documented here:

- ``prefix`` and ``suffix`` are fixed tags joined with ``", "`` outside the
  shuffled part (kohya joins them with a space onto the first/last tag);
  they are never shuffled or dropped, except by whole-caption dropout.
- Whole-caption dropout returns the empty string (the unconditional
  caption), prefix and suffix included, as kohya does.

Order of operations: caption dropout, then tag dropout (kept tags are never
dropped), then shuffle (kept tags stay in front), then prefix/suffix. With
neither shuffle nor tag dropout the caption text is used as written.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

TAG_SEPARATOR = ","


@dataclass(frozen=True)
class CaptionOptions:
    """How one caption is transformed before tokenisation."""

    prefix: str = ""
    suffix: str = ""
    shuffle: bool = False
    keep_tokens: int = 0
    tag_dropout: float = 0.0
    caption_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.keep_tokens < 0:
            raise ValueError(f"keep_tokens must be >= 0, got {self.keep_tokens}")
        for key in ("tag_dropout", "caption_dropout"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {value}")

    @classmethod
    def from_config(cls, data: object) -> CaptionOptions:
        """From the [data] keys shuffle_caption, keep_tokens, caption_dropout,
        caption_tag_dropout, caption_prefix, caption_suffix (missing ones keep defaults)."""
        names = {
            "caption_prefix": "prefix",
            "caption_suffix": "suffix",
            "shuffle_caption": "shuffle",
            "keep_tokens": "keep_tokens",
            "caption_tag_dropout": "tag_dropout",
            "caption_dropout": "caption_dropout",
        }
        return cls(
            **{ours: getattr(data, key) for key, ours in names.items() if hasattr(data, key)}
        )


def caption_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A private RNG for one (seed, epoch, index), stable across runs and platforms."""
    digest = hashlib.blake2b(f"caption:{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def split_tags(caption: str) -> list[str]:
    """Comma-separated tags, stripped, empty ones removed."""
    return [tag.strip() for tag in caption.split(TAG_SEPARATOR) if tag.strip()]


def join_tags(tags: list[str]) -> str:
    return ", ".join(tags)


def shuffle_tags(tags: list[str], keep_tokens: int, rng: random.Random) -> list[str]:
    """The first ``keep_tokens`` tags in place, the rest shuffled."""
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(rest)
    return kept + rest


def drop_tags(tags: list[str], rate: float, keep_tokens: int, rng: random.Random) -> list[str]:
    """Each tag after the first ``keep_tokens`` is dropped with probability ``rate``."""
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    return kept + [tag for tag in rest if rng.random() >= rate]


def process_caption(
    caption: str, options: CaptionOptions, *, seed: int, epoch: int, index: int
) -> str:
    """Apply ``options`` to ``caption`` with the draws of (seed, epoch, index)."""
    rng = caption_rng(seed, epoch, index)
    if options.caption_dropout > 0 and rng.random() < options.caption_dropout:
        return ""
    body = caption.strip()
    if options.tag_dropout > 0 or options.shuffle:
        tags = split_tags(body)
        if options.tag_dropout > 0:
            tags = drop_tags(tags, options.tag_dropout, options.keep_tokens, rng)
        if options.shuffle:
            tags = shuffle_tags(tags, options.keep_tokens, rng)
        body = join_tags(tags)
    parts = (options.prefix.strip(), body, options.suffix.strip())
    return ", ".join(part for part in parts if part)
