"""A diffusers pipeline over a loaded :class:`BaseModel`, sharing its modules."""

from __future__ import annotations

from typing import Any

from tsuika.models.base import BaseModel


def ddim_pipeline(model: BaseModel) -> Any:
    """A ``StableDiffusionPipeline`` on ``model``'s own modules (adapters included),
    DDIM with the model's noise schedule, no safety checker, no progress bar."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=DDIMScheduler.from_config(model.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
