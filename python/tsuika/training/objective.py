"""The training objective: encode pixels, condition on text, predict, and the loss.

One object holds the whole "what is the model asked to do" part of a step, so
the loop, validation, ``lr-find`` and ``cv`` run the same code:

* :meth:`DiffusionObjective.encode` -- pixels in [-1, 1] -> VAE latents (the
  distribution's mode times the VAE scaling factor, no gradient);
* :meth:`DiffusionObjective.condition` -- captions -> the UNet's keyword
  arguments (a :class:`Conditioning`, see below);
* :meth:`DiffusionObjective.per_sample_loss` -- DDPM forward noising
  (``sqrt(a_t) x0 + sqrt(1 - a_t) eps``), the UNet's prediction, the target
  (epsilon or v, Salimans & Ho 2022) and the mean squared error per sample.

Where the noise and timesteps come from (random per step in training, fixed
per image in validation) and how per-sample losses are combined (min-SNR,
prior preservation, L1) stay with the caller.

Conditioning is the part that depends on the model family, looked up in
:data:`CONDITIONINGS` by ``BaseModel.kind``. SD1 and SD2 use
:class:`TextConditioning` (one CLIP text encoder, its last hidden state as
``encoder_hidden_states``). SDXL uses :class:`SDXLConditioning` (Podell et
al. 2023, section 2.2; diffusers' ``StableDiffusionXLPipeline.encode_prompt``):
the penultimate hidden states of both encoders concatenated, the second
encoder's pooled projection as ``text_embeds`` and six ``time_ids`` per sample
(original height, width; crop top, left; target height, width) from each
sample's :class:`SampleSize`, which the caller takes from the batch
(:func:`batch_sizes`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tsuika.models.base import BaseModel
from tsuika.models.tokenizer import prompt_ids
from tsuika.training.cache import TextCache
from tsuika.training.losses import per_sample_mse
from tsuika.training.noise import add_noise, compute_snr, min_snr_weights, training_target


@dataclass(frozen=True)
class SampleSize:
    """Where one training picture came from: SDXL's size and crop conditioning.

    ``original`` is the picture's (height, width) before resizing,
    ``crop_top_left`` where the bucket crop fell in the resized picture,
    ``target`` the (height, width) trained at.
    """

    original: tuple[int, int]
    crop_top_left: tuple[int, int]
    target: tuple[int, int]

    @property
    def time_ids(self) -> tuple[int, int, int, int, int, int]:
        """SDXL's ``add_time_ids``: original h, w; crop top, left; target h, w."""
        return (*self.original, *self.crop_top_left, *self.target)

    @classmethod
    def uncropped(cls, height: int, width: int) -> SampleSize:
        """A picture trained at its own size, uncropped (the fallback when nothing is known)."""
        return cls((height, width), (0, 0), (height, width))


def batch_sizes(batch: dict[str, Any]) -> list[SampleSize]:
    """Each sample's :class:`SampleSize` from a batch dict.

    The target is the batch's ``bucket`` (width, height) or, without one, the
    pixels' height and width. ``original_size`` [(h, w)] and ``crop_top_left``
    [(top, left)] come from the data engine when it reports them; otherwise
    the target size and (0, 0) stand in (so do cached latents, which carry none).
    """
    if "bucket" in batch:
        width, height = batch["bucket"]
    else:
        height, width = batch["pixels"].shape[-2:]
    n = len(batch["captions"])
    originals = batch.get("original_size") or [(height, width)] * n
    crops = batch.get("crop_top_left") or [(0, 0)] * n
    return [
        SampleSize((int(o[0]), int(o[1])), (int(c[0]), int(c[1])), (int(height), int(width)))
        for o, c in zip(originals, crops, strict=True)
    ]


class Conditioning(Protocol):
    """Captions (and each sample's size, for SDXL) -> the UNet's conditioning keyword
    arguments (tensors on the device). ``encode`` runs the text encoders on captions
    (without the cache), ``cache`` holds their outputs while they are frozen."""

    cache: TextCache | None

    def encode(self, captions: list[str]) -> Any: ...

    def __call__(
        self, captions: Sequence[str], sizes: Sequence[SampleSize] | None = None
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TextConditioning:
    """SD1/SD2 conditioning: one text encoder's last hidden state.

    ``text_encoder`` is the module to call (the accelerate-wrapped one when it
    trains). With a ``cache`` (the encoder is frozen) each caption is encoded
    once, without gradient, and reused.
    """

    tokenizer: Any
    text_encoder: Any
    device: torch.device
    cache: TextCache | None = None

    def encode(self, captions: list[str]) -> torch.Tensor:
        ids = prompt_ids(self.tokenizer, captions).to(self.device)
        return self.text_encoder(ids)[0]

    def hidden_states(self, captions: Sequence[str]) -> torch.Tensor:
        return _encode_cached(self.cache, captions, self.encode)

    def __call__(
        self, captions: Sequence[str], sizes: Sequence[SampleSize] | None = None
    ) -> dict[str, Any]:
        return {"encoder_hidden_states": self.hidden_states(captions)}


@dataclass(frozen=True)
class SDXLConditioning:
    """SDXL conditioning: both encoders' penultimate states, the pooled embedding, time ids.

    ``text_encoders`` are the modules to call (accelerate-wrapped ones when
    they train), encoder 2 a ``CLIPTextModelWithProjection``. With a ``cache``
    each caption's (states, pooled) pair is encoded once, without gradient.
    """

    tokenizers: tuple[Any, Any]
    text_encoders: tuple[Any, Any]
    device: torch.device
    cache: TextCache | None = None

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, T, D1 + D2], [B, P])``: concatenated penultimate states, pooled projection."""
        states = []
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            ids = prompt_ids(tokenizer, captions).to(self.device)
            out = encoder(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
        return torch.cat(states, dim=-1), out.text_embeds

    def text_states(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return _encode_cached(self.cache, captions, self.encode)

    def __call__(
        self, captions: Sequence[str], sizes: Sequence[SampleSize] | None = None
    ) -> dict[str, Any]:
        if sizes is None or len(sizes) != len(captions):
            raise ValueError(
                "SDXL conditioning needs each sample's original size, crop and target size "
                f"({len(captions)} captions, {'no' if sizes is None else len(sizes)} sizes)"
            )
        hidden, pooled = self.text_states(captions)
        time_ids = torch.tensor([s.time_ids for s in sizes], dtype=torch.float32)
        return {
            "encoder_hidden_states": hidden,
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.to(self.device)},
        }


def _encode_cached(cache: TextCache | None, captions: Sequence[str], encode: Callable) -> Any:
    """``encode(captions)``, through ``cache`` without gradient when there is one (frozen
    text encoders: each caption is encoded once)."""
    if cache is None:
        return encode(list(captions))
    with torch.no_grad():
        return cache.get(captions, encode)


def text_conditioning(
    model: BaseModel,
    text_encoders: Sequence[Any],
    device: torch.device,
    cache: TextCache | None,
) -> Conditioning:
    return TextConditioning(model.tokenizer, text_encoders[0], device, cache)


def sdxl_conditioning(
    model: BaseModel,
    text_encoders: Sequence[Any],
    device: torch.device,
    cache: TextCache | None,
) -> Conditioning:
    if len(text_encoders) != 2 or model.tokenizer_2 is None:
        raise ValueError("an SDXL model needs two text encoders and two tokenizers")
    first, second = text_encoders
    return SDXLConditioning((model.tokenizer, model.tokenizer_2), (first, second), device, cache)


# (model, the text encoders to call, device, text cache) -> the conditioning
ConditioningFactory = Callable[
    [BaseModel, Sequence[Any], torch.device, "TextCache | None"], Conditioning
]
# BaseModel.kind -> how captions become UNet arguments.
CONDITIONINGS: dict[str, ConditioningFactory] = {
    "sd1": text_conditioning,
    "sd2": text_conditioning,
    "sdxl": sdxl_conditioning,
}
# Families whose VAE overflows in float16 (NaN latents): encoded in float32 unless
# the user names an fp16-safe VAE (``model.vae_fp16_safe``).
VAE_FP16_OVERFLOWS = frozenset({"sdxl"})


def vae_dtype(kind: str, weight_dtype: torch.dtype, fp16_safe: bool = False) -> torch.dtype:
    """The dtype the frozen VAE runs in: float32 where ``kind``'s VAE overflows in fp16."""
    if weight_dtype == torch.float16 and kind in VAE_FP16_OVERFLOWS and not fp16_safe:
        return torch.float32
    return weight_dtype


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors (also inside dicts, e.g. ``added_cond_kwargs``) to ``dtype``."""
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


@dataclass(frozen=True)
class DiffusionObjective:
    """Encode, condition, predict and the per-sample loss of one model (see the module doc).

    ``unet`` is the module to call: the accelerate-wrapped one in training, the
    plain one in validation (:meth:`with_unet`). ``autocast`` is the mixed
    precision context (accelerate's), ``weight_dtype`` the dtype the UNet's
    frozen weights are in.
    """

    vae: Any
    unet: Any
    conditioning: Conditioning
    scaling_factor: float
    prediction_type: str
    alphas_cumprod: torch.Tensor  # float32, on the CPU
    device: torch.device
    weight_dtype: torch.dtype = torch.float32
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def with_unet(self, unet: Any) -> DiffusionObjective:
        """The same objective calling another UNet module (e.g. unwrapped)."""
        return dataclasses.replace(self, unet=unet)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[n, 3, h, w]`` in [-1, 1] -> float32 latents, scaled, no gradient."""
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
            return dist.mode().float() * self.scaling_factor

    def condition(
        self, captions: Sequence[str], sizes: Sequence[SampleSize] | None = None
    ) -> dict[str, Any]:
        """The UNet's conditioning arguments for ``captions`` (``sizes``: one per caption,
        needed by SDXL; see :func:`batch_sizes`)."""
        return self.conditioning(captions, sizes)

    def predict(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, conditions: dict[str, Any]
    ) -> torch.Tensor:
        """The UNet's output for noisy latents at ``timesteps``, in the weight dtype."""
        with self.autocast():
            return self.unet(
                noisy.to(self.weight_dtype),
                timesteps.to(self.device),
                **_cast(conditions, self.weight_dtype),
            ).sample

    def per_sample_loss(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        conditions: dict[str, Any],
    ) -> torch.Tensor:
        """Noise ``latents`` at ``timesteps``, predict, and the MSE to the target: ``[n]``."""
        noisy = add_noise(latents, noise, timesteps, self.alphas_cumprod)
        pred = self.predict(noisy, timesteps, conditions)
        target = training_target(
            self.prediction_type, latents, noise, timesteps, self.alphas_cumprod
        )
        return per_sample_mse(pred, target)

    def fill_text_cache(self, captions: Sequence[str]) -> None:
        """Encode ``captions`` into the text cache, which then takes no others
        (:meth:`TextCache.fill`): the text encoders are not called again."""
        cache = self.conditioning.cache
        if cache is None:
            raise ValueError("the objective has no text cache: a text encoder trains")
        with torch.no_grad():
            cache.fill(captions, self.conditioning.encode)

    def min_snr_weights(self, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma weights of each sample's timestep (see ``noise.min_snr_weights``)."""
        snr = compute_snr(timesteps, self.alphas_cumprod)
        return min_snr_weights(snr, gamma, self.prediction_type)


def build_objective(
    model: BaseModel,
    *,
    unet: Any,
    text_encoder: Any,
    device: torch.device,
    weight_dtype: torch.dtype = torch.float32,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    text_cache: TextCache | None = None,
    text_encoder_2: Any = None,
) -> DiffusionObjective:
    """The objective of ``model``, calling ``unet`` and ``text_encoder`` (maybe wrapped);
    ``text_encoder_2`` (SDXL) defaults to the model's own."""
    try:
        factory = CONDITIONINGS[model.kind]
    except KeyError:
        raise ValueError(
            f"model kind {model.kind!r} has no training conditioning; "
            f"known: {', '.join(sorted(CONDITIONINGS))}"
        ) from None
    second = text_encoder_2 if text_encoder_2 is not None else model.text_encoder_2
    encoders = (text_encoder,) if second is None else (text_encoder, second)
    return DiffusionObjective(
        vae=model.vae,
        unet=unet,
        conditioning=factory(model, encoders, device, text_cache),
        scaling_factor=model.scaling_factor,
        prediction_type=model.prediction_type,
        alphas_cumprod=model.scheduler.alphas_cumprod.float().cpu(),
        device=device,
        weight_dtype=weight_dtype,
        autocast=autocast,
    )
