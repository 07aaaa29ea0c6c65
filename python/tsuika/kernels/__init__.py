"""Triton kernels for low-rank updates, each with a torch reference.

Importable as ``tsuika.kernels`` (``python/tsuika/kernels`` links here).
"""

from .lora_linear import BACKENDS, lora_linear, lora_linear_reference, triton_available

__all__ = ["BACKENDS", "lora_linear", "lora_linear_reference", "triton_available"]
