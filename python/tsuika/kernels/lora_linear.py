"""A linear layer with a low-rank (LoRA) update: one Triton kernel and its torch reference.

``lora_linear(x, W, b, A, B, scale)`` computes::

    x @ W^T + b + scale * (dropout(x) @ A^T) @ B^T        A: [r, in], B: [out, r]

which is the forward of a LoRA-wrapped ``nn.Linear`` (Hu et al. 2021,
"LoRA: Low-Rank Adaptation of Large Language Models", eq. 3; dropout on the
input of the down projection as in peft's ``lora_dropout``).

Backends (a registry, :data:`BACKENDS`):

* ``"torch"`` -- the reference, three ``F.linear`` calls. Runs everywhere.
* ``"triton"`` -- one fused kernel: each program computes a tile of the base
  GEMM ``x @ W^T`` and, in the same K loop, the tile's low-rank projection
  ``x @ A^T`` (rank padded to a power of two >= 16), then adds
  ``scale * (x A^T) @ B^T`` and the bias before the single store. The
  backward pass uses torch ops (:class:`_LoraLinearFunction`). Needs a CUDA
  tensor, or ``TRITON_INTERPRET=1`` set before ``triton`` is imported (the
  interpreter runs on the CPU in fp32 / fp16; it has no bf16).
* ``"auto"`` -- ``"triton"`` for CUDA tensors when ``triton`` imports,
  ``"torch"`` otherwise.

Dropout is drawn with ``torch.nn.functional.dropout`` outside the kernel, so
both backends consume the same random stream (seed torch to get the same
mask). All operands are cast to ``x.dtype``; the kernel accumulates in fp32.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

try:  # triton is optional: the torch path runs on machines without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

__all__ = ["BACKENDS", "lora_linear", "lora_linear_reference", "triton_available"]


def triton_available() -> bool:
    """Whether the Triton backend can be imported."""
    return triton is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def lora_linear_reference(x, xd, weight, bias, lora_a, lora_b, scale: float) -> torch.Tensor:
    """The torch reference: ``x W^T + b + scale (xd A^T) B^T`` (``xd`` = dropped-out ``x``)."""
    return F.linear(x, weight, bias) + scale * F.linear(F.linear(xd, lora_a), lora_b)


if triton is not None:

    @triton.jit
    def _lora_linear_fwd_kernel(
        x_ptr,
        xd_ptr,
        w_ptr,
        bias_ptr,
        a_ptr,
        b_ptr,
        out_ptr,
        M,
        N,
        K,
        R,
        scale,
        stride_xm,
        stride_xk,
        stride_dm,
        stride_dk,
        stride_wn,
        stride_wk,
        stride_ar,
        stride_ak,
        stride_bn,
        stride_br,
        stride_om,
        stride_on,
        HAS_BIAS: tl.constexpr,
        HAS_DROPOUT: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rr = tl.arange(0, BLOCK_R)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        low = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            x_mask = (rm[:, None] < M) & (rk[None, :] < K)
            x = tl.load(
                x_ptr + rm[:, None] * stride_xm + rk[None, :] * stride_xk, mask=x_mask, other=0.0
            )
            w_mask = (rk[:, None] < K) & (rn[None, :] < N)
            w = tl.load(
                w_ptr + rn[None, :] * stride_wn + rk[:, None] * stride_wk, mask=w_mask, other=0.0
            )
            acc += tl.dot(x, w, input_precision=PRECISION)
            if HAS_DROPOUT:
                x = tl.load(
                    xd_ptr + rm[:, None] * stride_dm + rk[None, :] * stride_dk,
                    mask=x_mask,
                    other=0.0,
                )
            a_mask = (rk[:, None] < K) & (rr[None, :] < R)
            a = tl.load(
                a_ptr + rr[None, :] * stride_ar + rk[:, None] * stride_ak, mask=a_mask, other=0.0
            )
            low += tl.dot(x, a, input_precision=PRECISION)
        b_mask = (rr[:, None] < R) & (rn[None, :] < N)
        b = tl.load(
            b_ptr + rn[None, :] * stride_bn + rr[:, None] * stride_br, mask=b_mask, other=0.0
        )
        # Round the rank-r projection to the input dtype, as the reference's two GEMMs do.
        acc += scale * tl.dot(low.to(b.dtype), b, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        out_mask = (rm[:, None] < M) & (rn[None, :] < N)
        out_ptrs = out_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def _triton_forward(x2, xd2, weight, bias, lora_a, lora_b, scale: float) -> torch.Tensor:
    m, k = x2.shape
    n, r = weight.shape[0], lora_a.shape[0]
    out = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    block_m, block_n, block_k = 64, 64, 32
    block_r = max(16, triton.next_power_of_2(r))
    fp32_precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 and x2.is_cuda else "ieee"
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    has_dropout = xd2 is not None
    xd2 = x2 if xd2 is None else xd2
    _lora_linear_fwd_kernel[grid](
        x2,
        xd2,
        weight,
        bias if bias is not None else weight,
        lora_a,
        lora_b,
        out,
        m,
        n,
        k,
        r,
        float(scale),
        x2.stride(0),
        x2.stride(1),
        xd2.stride(0),
        xd2.stride(1),
        weight.stride(0),
        weight.stride(1),
        lora_a.stride(0),
        lora_a.stride(1),
        lora_b.stride(0),
        lora_b.stride(1),
        out.stride(0),
        out.stride(1),
        HAS_BIAS=bias is not None,
        HAS_DROPOUT=has_dropout,
        PRECISION=fp32_precision if x2.dtype == torch.float32 else "tf32",  # unused for 16-bit
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_R=block_r,
    )
    return out


class _LoraLinearFunction(torch.autograd.Function):
    """Triton forward, torch backward. ``xd`` is ``None`` when there is no dropout."""

    @staticmethod
    def forward(ctx, x2, xd2, weight, bias, lora_a, lora_b, scale):
        ctx.save_for_backward(x2, xd2, weight, lora_a, lora_b)
        ctx.scale = scale
        ctx.has_bias = bias is not None
        return _triton_forward(x2, xd2, weight, bias, lora_a, lora_b, scale)

    @staticmethod
    def backward(ctx, grad_out):
        x2, xd2, weight, lora_a, lora_b = ctx.saved_tensors
        scale = ctx.scale
        src = x2 if xd2 is None else xd2
        g_low = grad_out @ lora_b  # [M, r]
        grad_low_in = (scale * g_low) @ lora_a  # gradient reaching the dropped-out input
        need = ctx.needs_input_grad
        grad_x = grad_xd = grad_w = grad_b = grad_a = grad_bb = None
        if need[0]:
            grad_x = grad_out @ weight
            if xd2 is None:
                grad_x = grad_x + grad_low_in
        if xd2 is not None and need[1]:
            grad_xd = grad_low_in
        if need[2]:
            grad_w = grad_out.t() @ x2
        if ctx.has_bias and need[3]:
            grad_b = grad_out.sum(0)
        if need[4]:
            grad_a = (scale * g_low).t() @ src
        if need[5]:
            grad_bb = scale * (grad_out.t() @ (src @ lora_a.t()))
        return grad_x, grad_xd, grad_w, grad_b, grad_a, grad_bb, None


def _torch_backend(x, xd, weight, bias, lora_a, lora_b, scale):
    return lora_linear_reference(x, xd, weight, bias, lora_a, lora_b, scale)


def _triton_backend(x, xd, weight, bias, lora_a, lora_b, scale):
    if triton is None:
        raise RuntimeError("lora_linear backend 'triton' needs the triton package; use 'torch'")
    if not x.is_cuda and not _interpreting():
        raise RuntimeError(
            "lora_linear backend 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1 set "
            f"before triton is imported); got a tensor on {x.device}"
        )
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    xd2 = None if xd is x else xd.reshape(-1, xd.shape[-1])
    out = _LoraLinearFunction.apply(x2, xd2, weight, bias, lora_a, lora_b, float(scale))
    return out.reshape(*lead, weight.shape[0])


BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "torch": _torch_backend,
    "triton": _triton_backend,
}


def _resolve(backend: str, x: torch.Tensor) -> str:
    if backend == "auto":
        return "triton" if (triton is not None and x.is_cuda) else "torch"
    if backend not in BACKENDS:
        allowed = ", ".join(["auto", *BACKENDS])
        raise ValueError(f"lora_linear: unknown backend {backend!r}; allowed: {allowed}")
    return backend


def _check_shapes(x, weight, bias, lora_a, lora_b) -> None:
    n, k = weight.shape
    r = lora_a.shape[0]
    problems = []
    if x.shape[-1] != k:
        problems.append(f"x has {x.shape[-1]} features but weight expects {k}")
    if lora_a.shape != (r, k):
        problems.append(f"lora_a has shape {tuple(lora_a.shape)}, expected ({r}, {k})")
    if lora_b.shape != (n, r):
        problems.append(f"lora_b has shape {tuple(lora_b.shape)}, expected ({n}, {r})")
    if bias is not None and bias.shape != (n,):
        problems.append(f"bias has shape {tuple(bias.shape)}, expected ({n},)")
    if problems:
        raise ValueError("lora_linear: " + "; ".join(problems))


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    *,
    dropout: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """``x @ W^T + b + scale * (dropout(x) @ A^T) @ B^T`` with A ``[r, in]``, B ``[out, r]``.

    ``x`` may have any number of leading dimensions. ``dropout`` is applied
    whenever it is > 0 (pass 0 in evaluation). ``backend``: ``"auto"``,
    ``"torch"`` or ``"triton"`` (see the module docstring).
    """
    _check_shapes(x, weight, bias, lora_a, lora_b)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora_linear: dropout must be in [0, 1), got {dropout}")
    name = _resolve(backend, x)
    dtype = x.dtype
    weight, lora_a, lora_b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    xd = F.dropout(x, dropout, training=True) if dropout > 0 else x
    return BACKENDS[name](x, xd, weight, bias, lora_a, lora_b, scale)
