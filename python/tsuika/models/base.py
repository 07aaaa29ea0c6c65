"""The loaded base model that every method trains on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BaseModel:
    """A Stable Diffusion model, loaded offline, as torch modules.

    ``kind`` is one of ``"sd1"``, ``"sd2"``, ``"sdxl"`` (``prediction_type`` says
    whether the model is ``"epsilon"`` or ``"v_prediction"``). ``source`` is the
    local path it came from (a diffusers folder or a single file).

    SDXL models carry a second text encoder (``text_encoder_2``, a
    ``transformers.CLIPTextModelWithProjection``: OpenCLIP ViT-bigG) and its
    tokenizer (``tokenizer_2``); both are ``None`` for SD 1.x / 2.x.
    """

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler: Any  # diffusers.DDPMScheduler (training noise schedule)
    kind: str = "sd1"
    prediction_type: str = "epsilon"
    source: Path | None = None
    vae_source: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    text_encoder_2: Any = None  # transformers.CLIPTextModelWithProjection (SDXL only)
    tokenizer_2: Any = None  # transformers.CLIPTokenizer padding with "!" (SDXL only)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD; test models may differ)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)
