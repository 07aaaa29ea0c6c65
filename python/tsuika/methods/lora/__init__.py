"""LoRA (with LoCon and DoRA): wrap layers, train the low-rank update, write kohya/diffusers files."""

from .apply import apply_lora_file, read_lora_file
from .config import UNET_TARGET_GROUPS, LoraConfig
from .inject import TEXT_ENCODER_TARGETS, UNET_TARGETS, lora_layers, remove
from .layers import LoraConv2d, LoraLayer, LoraLinear
from .method import SAVERS, LoraMethod

__all__ = [
    "SAVERS",
    "apply_lora_file",
    "read_lora_file",
    "TEXT_ENCODER_TARGETS",
    "UNET_TARGETS",
    "UNET_TARGET_GROUPS",
    "LoraConfig",
    "LoraConv2d",
    "LoraLayer",
    "LoraLinear",
    "LoraMethod",
    "lora_layers",
    "remove",
]
