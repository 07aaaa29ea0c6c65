"""``tsuika.kernels.lora_linear``: the Triton kernel against its torch reference.

The Triton kernel runs on the CPU under ``TRITON_INTERPRET=1``, which must be
set before ``triton`` is imported, so those cases run in one subprocess (this
file executed as a script) and report max errors as JSON. The interpreter
has no bf16, so fp32 and fp16 are tested. Shapes are small (the interpreter
is slow) but cross the block edges: several M/N tiles, several K steps, a
rank that is not a power of two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import tsuika
from tsuika.kernels import BACKENDS, lora_linear, lora_linear_reference, triton_available

# name -> (dtype, leading shape of x, in, out, rank, bias, dropout)
CASES = {
    "fp32-3d-bias": ("float32", (2, 5), 24, 40, 3, True, 0.0),
    "fp32-dropout-nobias": ("float32", (7,), 33, 17, 5, False, 0.3),
    "fp32-multi-tile": ("float32", (65,), 70, 70, 8, True, 0.0),
    "fp16-3d-bias": ("float16", (3, 4), 32, 24, 4, True, 0.0),
    "fp16-dropout-wide": ("float16", (9,), 20, 70, 16, True, 0.2),
}
TOLERANCE = {"float32": 1e-5, "float16": 4e-3}  # relative to the largest magnitude


def _operands(dtype, lead, k, n, r, bias):
    gen = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)

    def make(*shape):
        return (torch.randn(*shape, generator=gen) * 0.5).to(dt).requires_grad_(True)

    return make(*lead, k), make(n, k), make(n) if bias else None, make(r, k), make(n, r)


def _run_case(name: str, backend: str) -> list[torch.Tensor]:
    dtype, lead, k, n, r, bias, dropout = CASES[name]
    x, w, b, a, bb = _operands(dtype, lead, k, n, r, bias)
    torch.manual_seed(1)  # the same dropout mask for both backends
    y = lora_linear(x, w, b, a, bb, 0.75, dropout=dropout, backend=backend)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    (y.float() * weights).sum().backward()
    grads = [t.grad for t in (x, w, b, a, bb) if t is not None]
    return [y.detach(), *grads]


def _run_layer(backend: str) -> list[torch.Tensor]:
    """A DoRA ``LoraLinear`` in training mode (dropout on): output and LoRA gradients."""
    from tsuika.methods.lora import LoraLinear

    torch.manual_seed(0)
    layer = LoraLinear(torch.nn.Linear(24, 40), 4, 2.0, dropout=0.1, dora=True)
    torch.nn.init.normal_(layer.lora_up.weight)
    layer.backend = backend
    layer.train()
    x = torch.randn(3, 5, 24)
    torch.manual_seed(1)
    y = layer(x)
    y.square().sum().backward()
    return [
        y.detach(),
        layer.lora_down.weight.grad,
        layer.lora_up.weight.grad,
        layer.dora_scale.grad,
    ]


def _interpreter_main() -> None:
    """Run every case with both backends; print ``{case: [relative errors]}`` as JSON."""
    result = {}
    runs = {name: (lambda be, name=name: _run_case(name, be)) for name in CASES}
    runs["layer"] = _run_layer
    for name, run in runs.items():
        ref, got = run("torch"), run("triton")
        result[name] = [
            float((g.float() - e.float()).abs().max() / e.float().abs().max().clamp_min(1e-6))
            for g, e in zip(got, ref, strict=True)
        ]
    print(json.dumps(result))


@pytest.fixture(scope="module")
def interpreted():
    if not triton_available():
        pytest.fail("triton is not importable; the kernel cannot be tested")
    package_root = str(Path(tsuika.__file__).resolve().parents[1])
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_triton_kernel_matches_reference_under_interpreter(interpreted, case):
    errors = interpreted[case]
    has_bias = CASES[case][5]
    assert len(errors) == (6 if has_bias else 5)  # output + grads of x, W, (b,) A, B
    tolerance = TOLERANCE[CASES[case][0]]
    names = ["out", "x", "W"] + (["b"] if has_bias else []) + ["A", "B"]
    for name, err in zip(names, errors, strict=True):
        assert err <= tolerance, f"{case}: {name} relative error {err:.2e} > {tolerance:.0e}"


def test_lora_linear_layer_runs_the_kernel(interpreted):
    errors = interpreted["layer"]
    assert len(errors) == 4 and 0 < errors[0]  # a different summation order: the kernel ran
    assert max(errors) <= TOLERANCE["float32"], errors


def test_auto_on_cpu_is_the_reference():
    x, w, b, a, bb = _operands("float32", (3,), 8, 6, 2, True)
    expected = lora_linear_reference(x, x, w, b, a, bb, 0.5)
    assert torch.equal(lora_linear(x, w, b, a, bb, 0.5), expected)
    manual = x @ w.t() + b + 0.5 * (x @ a.t()) @ bb.t()
    torch.testing.assert_close(expected, manual)


def test_dropout_drops_the_low_rank_input_only():
    x, w, b, a, bb = _operands("float32", (4,), 8, 6, 2, True)
    torch.manual_seed(3)
    y = lora_linear(x, w, b, a, bb, 1.0, dropout=0.5, backend="torch")
    torch.manual_seed(3)
    xd = torch.nn.functional.dropout(x, 0.5, training=True)
    torch.testing.assert_close(y, x @ w.t() + b + (xd @ a.t()) @ bb.t())
    assert not torch.allclose(y, lora_linear(x, w, b, a, bb, 1.0))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backend": "cuda"}, "unknown backend 'cuda'; allowed: auto, torch, triton"),
        ({"dropout": 1.0}, "dropout must be in \\[0, 1\\)"),
        ({"lora_a": torch.zeros(2, 7)}, "lora_a has shape \\(2, 7\\), expected \\(2, 8\\)"),
        ({"lora_b": torch.zeros(6, 3)}, "lora_b has shape \\(6, 3\\), expected \\(6, 2\\)"),
        ({"x": torch.zeros(3, 9)}, "x has 9 features but weight expects 8"),
    ],
)
def test_bad_arguments_are_named(change, message):
    x, w, b, a, bb = _operands("float32", (3,), 8, 6, 2, True)
    args = {"x": x, "weight": w, "bias": b, "lora_a": a, "lora_b": bb, "scale": 1.0}
    options = {k: change.pop(k) for k in ("backend", "dropout") if k in change}
    args.update(change)
    with pytest.raises(ValueError, match=message):
        lora_linear(**args, **options)


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert set(BACKENDS) == {"torch", "triton"}
    x, w, b, a, bb = _operands("float32", (3,), 8, 6, 2, True)
    with pytest.raises(RuntimeError, match="needs a CUDA tensor \\(or TRITON_INTERPRET=1"):
        lora_linear(x, w, b, a, bb, 1.0, backend="triton")


if __name__ == "__main__":
    _interpreter_main()
