"""LoRA layers that wrap a base ``nn.Linear`` / ``nn.Conv2d`` and keep it as ``base_layer``.

``forward`` is ``base_layer(x) + multiplier * scale * up(down(dropout(x)))``
with ``scale = alpha / rank`` (Hu et al. 2021; kohya ``networks/lora.py``):

* ``down`` -- Linear ``in -> r``, or a k x k Conv2d ``in -> r`` with the base
  layer's stride, padding and dilation (LoCon); kaiming-uniform init
  (``a = sqrt(5)``, as kohya). ``up`` -- Linear ``r -> out`` or a 1x1 Conv2d;
  zero init, so a fresh layer returns exactly the base output.
* ``dropout`` on the input of ``down`` (peft's ``lora_dropout``; kohya drops
  the output of ``down`` instead). ``rank_dropout`` / ``module_dropout``
  follow kohya: a per-sample mask over the rank channels with the update
  rescaled by ``1 / (1 - p)``, or the whole update skipped with probability
  ``p``. All three act in training mode only.
* DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation",
  eq. 5): ``W' = m * (W + dW) / ||W + dW||_c``. The norm is taken per input
  column of the PyTorch ``[out, in, ...]`` weight (over the output axis and
  the kernel), the layout AUTOMATIC1111 (``network.py``
  ``apply_weight_decompose``), ComfyUI (``weight_decompose``) and LyCORIS
  read from ``dora_scale`` (shape ``[1, in]`` / ``[1, in, 1, 1]``); ``m``
  starts at the base weight's column norms, so a fresh layer is the base
  layer. As in the paper (sec. 4.3) and peft, the norm is detached in the
  backward pass. Because the scale is per input channel, it is applied to
  the input: ``W' x = (W + dW)(g * x)`` with ``g = m / ||W + dW||_c``.
  (peft's ``lora_magnitude_vector`` is per *output* row; the two differ.)

``merge()`` writes ``W'`` into the base weight (keeping a copy),
``unmerge()`` restores it bit for bit; removal lives in ``inject.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tsuika.formats.kohya_lora import LoraWeights
from tsuika.kernels import lora_linear


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least fp32 (fp16/bf16 weights are merged and normalised in fp32)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each input column of ``[out, in, *k]``, shaped ``[1, in, 1...]``."""
    w = _wide(weight).transpose(0, 1).reshape(weight.shape[1], -1)
    norm = w.norm(dim=1)
    return norm.reshape(1, weight.shape[1], *([1] * (weight.dim() - 2)))


class LoraLayer(nn.Module):
    """Shared machinery of :class:`LoraLinear` and :class:`LoraConv2d`."""

    def __init__(
        self,
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        *,
        dropout: float = 0.0,
        rank_dropout: float = 0.0,
        module_dropout: float = 0.0,
        dora: bool = False,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.rank_dropout = float(rank_dropout)
        self.module_dropout = float(module_dropout)
        self.multiplier = 1.0
        self.enabled = True
        self.merged = False
        self.backend = "auto"
        weight = base_layer.weight
        # Trainable tensors stay in at least fp32 over a half-precision base, as kohya's network.
        dtype = torch.promote_types(weight.dtype, torch.float32)
        self.lora_down, self.lora_up = self._make_projections()
        self.lora_down.to(device=weight.device, dtype=dtype)
        self.lora_up.to(device=weight.device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        if dora:
            self.dora_scale = nn.Parameter(column_norm(weight.detach()).to(dtype))
        else:
            self.register_parameter("dora_scale", None)
        self.train(base_layer.training)

    def _make_projections(self) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    # The base layer's tensors, for code that reads ``layer.weight`` (attention processors).
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta_weight(self) -> torch.Tensor:
        """The full update ``dW = up . down . scale`` in the base weight's shape."""
        up = self.lora_up.weight.flatten(1)
        down = self.lora_down.weight.flatten(1)
        return (up @ down).reshape(self.base_layer.weight.shape) * self.scale

    def merged_weight(self) -> torch.Tensor:
        """The weight that :meth:`merge` writes: ``W + m dW`` (DoRA: renormalised)."""
        base = self.base_layer.weight
        w = _wide(base) + self.multiplier * _wide(self.delta_weight())
        if self.dora_scale is not None:
            w = w * (_wide(self.dora_scale) / column_norm(w).clamp_min(1e-12))
        return w.to(base.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base_layer.weight``; forward then runs the base layer only."""
        if self.merged:
            return
        weight = self.base_layer.weight
        self.register_buffer("_original_weight", weight.detach().clone(), persistent=False)
        weight.copy_(self.merged_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight exactly as it was before :meth:`merge`."""
        if not self.merged:
            return
        self.base_layer.weight.copy_(self._original_weight)
        del self._original_weight
        self.merged = False

    def weights(self) -> LoraWeights:
        """The trained tensors (detached clones) in kohya's shapes."""
        return LoraWeights(
            down=self.lora_down.weight.detach().clone(),
            up=self.lora_up.weight.detach().clone(),
            alpha=self.alpha,
            dora_scale=None if self.dora_scale is None else self.dora_scale.detach().clone(),
        )

    @torch.no_grad()
    def load_weights(self, weights: LoraWeights, name: str = "") -> None:
        """Copy ``weights`` in, checking shapes; ``name`` is used in errors."""
        pairs = [("lora_down.weight", self.lora_down.weight, weights.down)]
        pairs.append(("lora_up.weight", self.lora_up.weight, weights.up))
        if (weights.dora_scale is None) != (self.dora_scale is None):
            have = "has" if weights.dora_scale is not None else "lacks"
            raise ValueError(
                f"{name}: the file {have} dora_scale but the layer's dora setting differs"
            )
        if self.dora_scale is not None:
            pairs.append(("dora_scale", self.dora_scale, weights.dora_scale))
        for suffix, param, value in pairs:
            if tuple(param.shape) != tuple(value.shape):
                raise ValueError(
                    f"{name}.{suffix}: shape {tuple(value.shape)} does not fit the layer "
                    f"({tuple(param.shape)})"
                )
        for _, param, value in pairs:
            param.copy_(value.to(param.dtype))
        self.alpha = float(weights.alpha)

    def _dora_gain(self) -> torch.Tensor:
        w = _wide(self.base_layer.weight) + self.multiplier * _wide(self.delta_weight())
        return self.dora_scale / column_norm(w).detach().clamp_min(1e-12).to(self.dora_scale.dtype)

    def _low_rank(self, x: torch.Tensor) -> torch.Tensor:
        """``multiplier * scale * up(down(dropout(x)))`` with kohya's rank dropout (torch path)."""
        if self.training and self.dropout > 0:
            x = F.dropout(x, self.dropout, training=True)
        out_dtype = x.dtype
        h = self.lora_down(x.to(self.lora_down.weight.dtype))
        scale = self.scale * self.multiplier
        if self.training and self.rank_dropout > 0:
            mask = torch.rand(h.shape[0], self.rank, device=h.device) > self.rank_dropout
            h = h * self._rank_mask_view(mask, h).to(h.dtype)
            scale = scale / (1.0 - self.rank_dropout)
        return (self.lora_up(h) * scale).to(out_dtype)

    def _rank_mask_view(self, mask: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _skip_update(self) -> bool:
        if self.merged or not self.enabled:
            return True
        if self.training and self.module_dropout > 0:
            return bool(torch.rand(()) < self.module_dropout)
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._skip_update():
            return self.base_layer(x)
        if self.dora_scale is not None:
            x = x * self._dora_gain_for_input(x)
        return self._base_plus_delta(x)

    def _dora_gain_for_input(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _base_plus_delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self._low_rank(x)

    def extra_repr(self) -> str:
        extra = ", dora" if self.dora_scale is not None else ""
        return f"rank={self.rank}, alpha={self.alpha}{extra}, merged={self.merged}"


class LoraLinear(LoraLayer):
    """LoRA around an ``nn.Linear``; the forward goes through :func:`tsuika.kernels.lora_linear`."""

    def _make_projections(self) -> tuple[nn.Module, nn.Module]:
        base = self.base_layer
        return (
            nn.Linear(base.in_features, self.rank, bias=False),
            nn.Linear(self.rank, base.out_features, bias=False),
        )

    def _rank_mask_view(self, mask: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return mask.view(mask.shape[0], *([1] * (h.dim() - 2)), self.rank)

    def _dora_gain_for_input(self, x: torch.Tensor) -> torch.Tensor:
        return self._dora_gain().reshape(-1).to(x.dtype)

    def _base_plus_delta(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.rank_dropout > 0:
            return super()._base_plus_delta(x)  # per-sample rank masks: torch path
        base = self.base_layer
        return lora_linear(
            x,
            base.weight,
            base.bias,
            self.lora_down.weight,
            self.lora_up.weight,
            self.scale * self.multiplier,
            dropout=self.dropout if self.training else 0.0,
            backend=self.backend,
        )


class LoraConv2d(LoraLayer):
    """LoRA / LoCon around an ``nn.Conv2d``: k x k down with the base geometry, 1x1 up."""

    def _make_projections(self) -> tuple[nn.Module, nn.Module]:
        base = self.base_layer
        if base.groups != 1:
            raise ValueError(
                f"LoRA on grouped convolutions is not supported (groups={base.groups})"
            )
        if base.padding_mode != "zeros":
            raise ValueError(f"LoRA needs zero padding, got padding_mode={base.padding_mode!r}")
        down = nn.Conv2d(
            base.in_channels,
            self.rank,
            base.kernel_size,
            stride=base.stride,
            padding=base.padding,
            dilation=base.dilation,
            bias=False,
        )
        return down, nn.Conv2d(self.rank, base.out_channels, 1, bias=False)

    def _rank_mask_view(self, mask: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return mask.view(mask.shape[0], self.rank, *([1] * (h.dim() - 2)))

    def _dora_gain_for_input(self, x: torch.Tensor) -> torch.Tensor:
        # Zero padding stays zero under a per-channel scale, so scaling the input is exact.
        return self._dora_gain().to(x.dtype)


LAYER_TYPES: dict[type[nn.Module], type[LoraLayer]] = {
    nn.Linear: LoraLinear,
    nn.Conv2d: LoraConv2d,
}
