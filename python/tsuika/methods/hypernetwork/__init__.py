"""Hypernetworks (AUTOMATIC1111's kind): per context width, a (K, V) pair of small MLPs
that rewrite what feeds K and V of every attention of that width."""

from .config import HypernetworkConfig
from .hook import (
    HypernetworkHook,
    HypernetworkProcessor,
    attention_modules,
    context_width,
    context_widths,
    install,
)
from .method import HypernetworkMethod, apply_hypernetwork_file
from .modules import ACTIVATIONS, INITIALIZATIONS, Hypernetwork, HypernetworkModule

__all__ = [
    "ACTIVATIONS",
    "INITIALIZATIONS",
    "Hypernetwork",
    "HypernetworkConfig",
    "HypernetworkHook",
    "HypernetworkMethod",
    "HypernetworkModule",
    "HypernetworkProcessor",
    "apply_hypernetwork_file",
    "attention_modules",
    "context_width",
    "context_widths",
    "install",
]
