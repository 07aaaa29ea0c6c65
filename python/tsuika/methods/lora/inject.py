"""Wrap target modules in LoRA layers by module path; remove or merge them again.

Targets are regular expressions over ``named_modules()`` paths, grouped by
name (a registry, so a new group is one entry). The groups follow kohya's
``networks/lora.py`` choices for SD 1.x/2.x: the UNet's transformer blocks
(``Transformer2DModel``), and with ``conv_dim`` its ResNet blocks and
down/up-samplers; the text encoder's attention and MLP projections.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import nn

from tsuika.torch_utils import replace_submodule

from .config import LoraConfig
from .layers import LAYER_TYPES, LoraLayer

UNET_TARGETS: dict[str, tuple[str, ...]] = {
    "attention": (r"(.*\.)?transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)",),
    "proj": (r"(.*\.)?attentions\.\d+\.(proj_in|proj_out)",),
    "ff": (r"(.*\.)?transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)",),
    "conv": (
        r"(.*\.)?resnets\.\d+\.(conv1|conv2|conv_shortcut)",
        r"(.*\.)?(downsamplers|upsamplers)\.0\.conv",
    ),
}
TEXT_ENCODER_TARGETS: tuple[str, ...] = (
    r"(.*\.)?layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",
    r"(.*\.)?layers\.\d+\.mlp\.(fc1|fc2)",
)

LayerFactory = Callable[[str, nn.Module], LoraLayer]


def unet_patterns(config: LoraConfig) -> tuple[str, ...]:
    """The UNet patterns ``config`` asks for (``conv`` joins when ``conv_rank > 0``)."""
    groups = list(config.targets) + (["conv"] if config.conv_rank > 0 else [])
    return tuple(p for g in groups for p in UNET_TARGETS[g])


def layer_factory(config: LoraConfig) -> LayerFactory:
    """Build a layer for one module: k x k convs take conv_rank/conv_alpha, others rank/alpha."""

    def make(path: str, module: nn.Module) -> LoraLayer:
        kind = LAYER_TYPES.get(type(module))
        if kind is None:
            allowed = ", ".join(t.__name__ for t in LAYER_TYPES)
            raise TypeError(
                f"cannot wrap {path!r}: {type(module).__name__} is not one of {allowed}"
            )
        spatial = isinstance(module, nn.Conv2d) and tuple(module.kernel_size) != (1, 1)
        rank, alpha = (
            (config.conv_rank, config.conv_alpha) if spatial else (config.rank, config.alpha)
        )
        return kind(
            module,
            rank,
            alpha,
            dropout=config.dropout,
            rank_dropout=config.rank_dropout,
            module_dropout=config.module_dropout,
            dora=config.dora,
        )

    return make


def _inside_lora(path: str, lora_paths: Iterable[str]) -> bool:
    return any(path.startswith(p + ".") for p in lora_paths)


def find_targets(root: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Paths under ``root`` matching any pattern (already-wrapped modules count once)."""
    compiled = [re.compile(p) for p in patterns]
    lora_paths = [n for n, m in root.named_modules() if isinstance(m, LoraLayer)]
    found = []
    for path, _ in root.named_modules():
        if not path or _inside_lora(path, lora_paths):
            continue
        if any(c.fullmatch(path) for c in compiled):
            found.append(path)
    return found


def inject(root: nn.Module, patterns: Iterable[str], make: LayerFactory) -> dict[str, LoraLayer]:
    """Wrap every matching module; idempotent. Returns ``{path: layer}`` for all matches."""
    wrapped: dict[str, LoraLayer] = {}
    for path in find_targets(root, patterns):
        module = root.get_submodule(path)
        if not isinstance(module, LoraLayer):
            module = make(path, module)
            replace_submodule(root, path, module)
        wrapped[path] = module
    return wrapped


def lora_layers(root: nn.Module) -> dict[str, LoraLayer]:
    """Every LoRA layer under ``root`` by module path."""
    return {n: m for n, m in root.named_modules() if isinstance(m, LoraLayer)}


def remove(root: nn.Module) -> list[str]:
    """Unmerge and replace every LoRA layer by its ``base_layer``; returns the paths."""
    paths = list(lora_layers(root))
    for path in paths:
        layer = root.get_submodule(path)
        layer.unmerge()
        replace_submodule(root, path, layer.base_layer)
    return paths


def merge(root: nn.Module) -> None:
    for layer in lora_layers(root).values():
        layer.merge()


def unmerge(root: nn.Module) -> None:
    for layer in lora_layers(root).values():
        layer.unmerge()
