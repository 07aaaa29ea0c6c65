"""Caption processing: deterministic per (seed, epoch, index), keep_tokens honoured."""

from __future__ import annotations

import pytest
from tsuika.data.captions import CaptionOptions, process_caption, split_tags

CAPTION = "sks dog, red collar, sitting, grass, sunny day, smiling, outdoors, photo"
TAGS = split_tags(CAPTION)


def run(options: CaptionOptions, seed: int = 0, epoch: int = 0, index: int = 0) -> str:
    return process_caption(CAPTION, options, seed=seed, epoch=epoch, index=index)


def test_no_options_keep_the_text_as_written() -> None:
    text = "a photo of sks dog,in the snow "
    assert process_caption(text, CaptionOptions(), seed=3, epoch=1, index=2) == text.strip()


@pytest.mark.parametrize("keep", [0, 1, 3])
def test_shuffle_keeps_first_tokens_and_the_multiset(keep: int) -> None:
    options = CaptionOptions(shuffle=True, keep_tokens=keep)
    outputs = {run(options, index=i) for i in range(40)}
    assert len(outputs) > 10  # it does shuffle
    for out in outputs:
        tags = split_tags(out)
        assert tags[:keep] == TAGS[:keep]
        assert sorted(tags) == sorted(TAGS)


def test_draws_are_deterministic_and_depend_on_seed_epoch_index() -> None:
    options = CaptionOptions(shuffle=True, tag_dropout=0.3)
    assert run(options, 1, 2, 3) == run(options, 1, 2, 3)
    base = run(options, 1, 2, 3)
    assert run(options, 2, 2, 3) != base or run(options, 2, 2, 4) != base
    assert len({run(options, 1, epoch, 3) for epoch in range(10)}) > 5


def test_tag_dropout_rate_and_kept_tokens() -> None:
    options = CaptionOptions(tag_dropout=0.25, keep_tokens=2)
    kept = dropped = 0
    for i in range(2000):
        tags = split_tags(run(options, index=i))
        assert tags[:2] == TAGS[:2]
        assert all(t in TAGS for t in tags)
        assert tags == [t for t in TAGS if t in tags]  # order kept without shuffle
        kept += len(tags) - 2
        dropped += len(TAGS) - len(tags)
    rate = dropped / (kept + dropped)
    assert 0.22 < rate < 0.28


def test_caption_dropout_rate_gives_empty_captions() -> None:
    options = CaptionOptions(caption_dropout=0.1, prefix="pre")
    outs = [run(options, index=i) for i in range(3000)]
    empty = sum(out == "" for out in outs) / len(outs)
    assert 0.08 < empty < 0.12
    assert all(out == "" or out.startswith("pre, sks dog") for out in outs)


def test_prefix_and_suffix_stay_outside_the_shuffle() -> None:
    options = CaptionOptions(prefix="masterpiece", suffix="by tsuika", shuffle=True)
    for i in range(20):
        tags = split_tags(run(options, index=i))
        assert tags[0] == "masterpiece" and tags[-1] == "by tsuika"
        assert sorted(tags[1:-1]) == sorted(TAGS)


@pytest.mark.parametrize(
    "kwargs", [{"keep_tokens": -1}, {"tag_dropout": 1.5}, {"caption_dropout": -0.1}]
)
def test_invalid_options_name_the_field(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CaptionOptions(**kwargs)


def test_from_config_maps_data_keys() -> None:
    class Data:
        shuffle_caption = True
        keep_tokens = 2
        caption_dropout = 0.05

    assert CaptionOptions.from_config(Data()) == CaptionOptions(
        shuffle=True, keep_tokens=2, caption_dropout=0.05
    )
