"""DreamBooth: fine-tune the whole model (or LoRA modules) on a subject, with prior preservation."""

from .class_images import ClassImages, ensure_class_images, generate_pictures, list_pictures
from .config import LORA_KEYS, DreamBoothConfig
from .method import DEFAULT_FORMAT, FULL_FORMATS, DreamBoothMethod


def build(table: dict) -> DreamBoothMethod:
    """The registry factory: a ``[method]`` table (without ``name``) -> the method."""
    return DreamBoothMethod(DreamBoothConfig.from_dict(table))


__all__ = [
    "DEFAULT_FORMAT",
    "FULL_FORMATS",
    "LORA_KEYS",
    "ClassImages",
    "DreamBoothConfig",
    "DreamBoothMethod",
    "build",
    "ensure_class_images",
    "generate_pictures",
    "list_pictures",
]
