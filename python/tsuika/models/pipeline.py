"""A diffusers pipeline over a loaded :class:`BaseModel`, sharing its modules.

The sampler path of in-training sample grids and DreamBooth's class pictures
(DDIM); ``tsuika generate`` has its own float32 loop, see
:mod:`tsuika.generation.denoise` for why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tsuika.models.base import BaseModel


def _sd_pipeline(model: BaseModel, scheduler: Any) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl_pipeline(model: BaseModel, scheduler: Any) -> Any:
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        text_encoder_2=model.text_encoder_2,
        tokenizer=model.tokenizer,
        tokenizer_2=model.tokenizer_2,
        unet=model.unet,
        scheduler=scheduler,
    )


# BaseModel.kind -> the diffusers pipeline class over its modules (SD 1.x/2.x by default)
PIPELINES: dict[str, Callable[[BaseModel, Any], Any]] = {"sdxl": _sdxl_pipeline}


def ddim_pipeline(model: BaseModel) -> Any:
    """A ``StableDiffusionPipeline`` (``StableDiffusionXLPipeline`` for SDXL) on
    ``model``'s own modules (adapters included), DDIM with the model's noise
    schedule, no safety checker, no progress bar."""
    from diffusers import DDIMScheduler

    build = PIPELINES.get(model.kind, _sd_pipeline)
    pipe = build(model, DDIMScheduler.from_config(model.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe
