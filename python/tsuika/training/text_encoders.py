"""Where the frozen text encoders live once their outputs are cached.

With the text cache on (no text encoder trains), every caption a run encodes
is known before the first step unless something draws captions anew: each
picture's caption through the method's caption hook, the validation captions
and prior preservation's class prompts. Those are encoded once into the cache
(kohya-ss/sd-scripts' ``cache_text_encoder_outputs``), the cache takes no
other caption, and the encoders move to the CPU, which frees their device
memory for the UNet (SDXL's two encoders hold about 1.6 GB in fp16). Training
and validation never call them again; sample pictures bring them back to the
device for the time they take.

The encoders stay on the device, encoding each caption on first use, when a
text encoder trains (there is no cache), when ``data.shuffle_caption``,
``data.caption_tag_dropout`` or ``data.caption_dropout`` draw new captions
every epoch, or when the method draws its captions
(:attr:`tsuika.methods.base.Method.caption_draws`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tsuika.data.scan import DatasetIndex
from tsuika.methods.base import Method

CPU = torch.device("cpu")

KEPT_TRAINS = "a text encoder trains (no text cache)"
KEPT_DRAWN = (
    "data.shuffle_caption, data.caption_tag_dropout or data.caption_dropout draw new "
    "captions every epoch"
)


def run_captions(
    fixed: list[str] | None,
    index: DatasetIndex,
    method: Method,
    caption_for: Callable[[str, str, random.Random], str],
    validation: Sequence[str] = (),
) -> tuple[list[str] | None, str]:
    """Every caption a run will encode (training, validation, class prompts), or None and
    the reason why they are not known before the run.

    ``fixed``: each picture's caption as every epoch gives it
    (``BatchLoader.fixed_captions``; None when drawn anew per epoch).
    """
    if fixed is None:
        return None, KEPT_DRAWN
    if method.caption_draws:
        return None, f"method {method.name!r} draws its captions at every step"
    rng = random.Random(0)  # the hook does not draw (caption_draws is False)
    train = [caption_for(c, index[i].class_tokens, rng) for i, c in enumerate(fixed)]
    captions = list(dict.fromkeys([*train, *validation, *method.class_captions()]))
    return captions, f"{len(captions)} captions encoded into the text cache before the first step"


@dataclass
class TextEncoderPlacement:
    """The frozen text encoders of a run: on the device, or on the CPU once cached."""

    encoders: list[torch.nn.Module]
    device: torch.device
    offloaded: bool = False
    reason: str = ""
    cached_captions: int = 0

    def offload(self) -> None:
        """Move the encoders to the CPU (where the device is the CPU: nothing moves)."""
        self._move(CPU)
        self.offloaded = True

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        """The encoders on the run's device for a while (sample pictures), then back."""
        if not self.offloaded:
            yield
            return
        self._move(self.device)
        try:
            yield
        finally:
            self._move(CPU)

    def _move(self, device: torch.device) -> None:
        for encoder in self.encoders:
            encoder.to(device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def summary(self) -> dict[str, Any]:
        """For ``summary.json``: where the encoders trained from, and why."""
        return {
            "device": "cpu" if self.offloaded else str(self.device),
            "offloaded": self.offloaded,
            "reason": self.reason,
            "cached_captions": self.cached_captions,
        }
