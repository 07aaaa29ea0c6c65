"""Generation machinery behind :func:`tsuika.generate`: samplers, the denoising loop,
adapter attachment (stacked LoRAs, embeddings, hypernetworks), VAE decode and the
A1111 ``parameters`` text."""

from .adapters import Adapters, AdapterSpecError, attach, parse_embedding, parse_weighted
from .infotext import format_infotext, parse_infotext
from .run import Picture, generate
from .samplers import SAMPLERS, SamplerError, build_scheduler, sampler_key

__all__ = [
    "SAMPLERS",
    "AdapterSpecError",
    "Picture",
    "Adapters",
    "SamplerError",
    "attach",
    "build_scheduler",
    "format_infotext",
    "generate",
    "parse_embedding",
    "parse_infotext",
    "parse_weighted",
    "sampler_key",
]
