"""Hooking a hypernetwork into a diffusers UNet: wrap each attention's processor.

A1111 applies the hypernetwork to the context that feeds K and V of every
attention whose context width has a module (``apply_hypernetworks``):
``k = to_k(hyper_k(context))``, ``v = to_v(hyper_v(context))``, the query
untouched. The context is the text encoder's states for cross-attention
(``attn2``) and the hidden states themselves for self-attention (``attn1``),
so the width is the one ``to_k`` reads.

:class:`HypernetworkProcessor` wraps the attention's existing processor and
hands it a view of the attention whose ``to_k`` / ``to_v`` read their input
through the hypernetwork; nothing of the model is patched, and
:meth:`HypernetworkHook.remove` puts the original processors back. The
processor is an ``nn.Module`` (as diffusers' IP-Adapter processors are), so
the modules it holds move, cast and switch train/eval mode with the UNet.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .modules import Hypernetwork, HypernetworkModule


def _through(module: HypernetworkModule, context: torch.Tensor) -> torch.Tensor:
    """``module(context)``: the MLP runs in the module's dtype (A1111's ``cond_cast_float``),
    the residual sum in the context's, so strength 0 gives the context back exactly."""
    dtype = module.linear[0].weight.dtype
    return context + module.delta(context.to(dtype)).to(context.dtype)


class _ThroughLinear:
    """``linear(hyper(x))``; every other attribute is the linear's."""

    def __init__(self, hyper: HypernetworkModule, linear: nn.Module) -> None:
        self.hyper = hyper
        self.linear = linear

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.linear(_through(self.hyper, x), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "linear":
            raise AttributeError(name)
        return getattr(self.linear, name)


class _AttentionView:
    """The attention as the wrapped processor sees it: ``to_k`` / ``to_v`` replaced."""

    def __init__(self, attn: nn.Module, hyper_k: HypernetworkModule, hyper_v: HypernetworkModule):
        self._attn = attn
        self.to_k = _ThroughLinear(hyper_k, attn.to_k)
        self.to_v = _ThroughLinear(hyper_v, attn.to_v)

    def __getattr__(self, name: str) -> Any:
        if name == "_attn":
            raise AttributeError(name)
        return getattr(self._attn, name)


class HypernetworkProcessor(nn.Module):
    """An attention processor: ``inner`` (the one it wraps) with K and V read through
    ``hyper_k`` / ``hyper_v``."""

    def __init__(self, inner: Any, hyper_k: HypernetworkModule, hyper_v: HypernetworkModule):
        super().__init__()
        self.inner = inner
        self.hyper_k = hyper_k
        self.hyper_v = hyper_v

    def set_inner(self, inner: Any) -> None:
        del self.inner  # a module child or a plain attribute, whichever it was
        self.inner = inner

    def __call__(  # the signature diffusers' Attention filters cross_attention_kwargs by
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if temb is not None:
            kwargs["temb"] = temb
        view = _AttentionView(attn, self.hyper_k, self.hyper_v)
        return self.inner(
            view,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            **kwargs,
        )


def attention_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """``{module path: attention}`` for every diffusers ``Attention`` in ``unet``."""
    from diffusers.models.attention_processor import Attention

    return {name: m for name, m in unet.named_modules() if isinstance(m, Attention)}


def context_width(attn: nn.Module) -> int:
    """The width of the context that feeds K and V: what ``to_k`` reads."""
    return int(attn.to_k.in_features)


def context_widths(unet: nn.Module) -> set[int]:
    return {context_width(a) for a in attention_modules(unet).values()}


class HypernetworkHook:
    """A hypernetwork installed in a UNet; :meth:`remove` undoes it."""

    def __init__(self, unet: nn.Module, hypernetwork: Hypernetwork) -> None:
        self.unet = unet
        self.hypernetwork = hypernetwork
        self.processors: dict[str, HypernetworkProcessor] = {}
        for path, attn in attention_modules(unet).items():
            width = context_width(attn)
            if width not in hypernetwork.dims:
                continue
            if getattr(attn, "fused_projections", False):
                raise RuntimeError(
                    f"{path}: fused QKV projections are on; unfuse them before hooking a "
                    "hypernetwork (it needs K and V separately)"
                )
            processor = HypernetworkProcessor(attn.processor, *hypernetwork.pair(width))
            attn.set_processor(processor)
            self.processors[path] = processor

    @property
    def hooked(self) -> dict[str, int]:
        """``{attention path: context width}`` of every wrapped attention."""
        return {path: p.hyper_k.dim for path, p in self.processors.items()}

    @property
    def strength(self) -> float:
        return self.hypernetwork.strength

    @strength.setter
    def strength(self, value: float) -> None:
        self.hypernetwork.strength = value

    def remove(self) -> None:
        """Take the wrappers out (also from under later wrappers); idempotent."""
        for path, ours in self.processors.items():
            attn = self.unet.get_submodule(path)
            current = attn.processor
            if current is ours:
                attn.set_processor(ours.inner)
                continue
            while isinstance(current, HypernetworkProcessor):
                if current.inner is ours:
                    current.set_inner(ours.inner)
                    break
                current = current.inner
        self.processors = {}


def install(unet: nn.Module, hypernetwork: Hypernetwork) -> HypernetworkHook:
    """Wrap every attention of ``unet`` whose context width is one of the hypernetwork's."""
    return HypernetworkHook(unet, hypernetwork)
