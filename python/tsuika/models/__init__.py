"""tsuika.models: load Stable Diffusion models offline, write them back, build tiny ones."""

from .base import BaseModel
from .derive import ArchitectureError
from .diffusers_folder import save_diffusers
from .ldm_names import unet_key_to_original, unet_module_to_original
from .loading import FAMILIES, ModelLoadError, load_base_model, load_vae
from .original_layout import LayoutError
from .single_file import (
    CheckpointError,
    ModelFileError,
    UnsafeCheckpointError,
    read_checkpoint,
    save_single_file,
    to_original_state_dict,
)
from .tiny import build_tiny_model
from .tiny_sdxl import build_tiny_sdxl_model
from .tokenizer import load_clip_tokenizer

__all__ = [
    "FAMILIES",
    "ArchitectureError",
    "BaseModel",
    "CheckpointError",
    "LayoutError",
    "ModelFileError",
    "ModelLoadError",
    "UnsafeCheckpointError",
    "build_tiny_model",
    "build_tiny_sdxl_model",
    "load_base_model",
    "load_clip_tokenizer",
    "load_vae",
    "read_checkpoint",
    "save_diffusers",
    "save_single_file",
    "to_original_state_dict",
    "unet_key_to_original",
    "unet_module_to_original",
]
