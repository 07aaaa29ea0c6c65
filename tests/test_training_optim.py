"""Optimizer and LR-schedule registries."""

from __future__ import annotations

import math

import pytest
import torch
from tsuika.training import optim
from tsuika.training.optim import build_optimizer, build_scheduler, lr_multiplier


@pytest.mark.parametrize(
    ("name", "step", "expected"),
    [
        ("constant", 0, 1 / 5),  # warmup: (step + 1) / (warmup + 1)
        ("constant", 3, 4 / 5),
        ("constant", 50, 1.0),
        ("linear", 4, 1.0),
        ("linear", 54, 0.5),  # halfway through the 100 steps after warmup
        ("linear", 104, 0.0),
        ("cosine", 54, 0.5),
        ("cosine", 29, 0.5 * (1 + math.cos(math.pi * 0.25))),
        ("polynomial", 54, 0.5**2),  # power 2
        ("cosine_with_restarts", 54, 1.0),  # cycles 2: restart at the midpoint
        ("cosine_with_restarts", 29, 0.5),
    ],
)
def test_schedule_values(name: str, step: int, expected: float) -> None:
    cycles = 2.0 if name == "cosine_with_restarts" else 1.0
    got = lr_multiplier(name, step, total=104, warmup=4, cycles=cycles, power=2.0)
    assert got == pytest.approx(expected)


def test_scheduler_state_round_trips() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler("cosine", opt, total_steps=10, warmup_steps=2)
    for _ in range(4):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([p], lr=1.0)
    sched2 = build_scheduler("cosine", opt2, total_steps=10, warmup_steps=2)
    sched2.load_state_dict(sched.state_dict())
    for _ in range(3):
        opt.step(), sched.step(), opt2.step(), sched2.step()
    assert sched.get_last_lr() == sched2.get_last_lr()
    assert sched.get_last_lr()[0] == pytest.approx(lr_multiplier("cosine", 7, 10, 2))


def test_adamw_carries_weight_decay_and_groups() -> None:
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    opt = build_optimizer(
        "adamw",
        [{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}, {"params": [frozen]}],
        1e-3,
        0.05,
    )
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    assert all(g["weight_decay"] == 0.05 for g in opt.param_groups)


def test_missing_optimizer_package_names_pip_package(monkeypatch) -> None:
    monkeypatch.setitem(
        optim.OPTIMIZERS, "fake", optim.OptimizerSpec("tsuika_no_such_module", "X", "no-such-pkg")
    )
    with pytest.raises(ImportError, match="pip install no-such-pkg"):
        optim.optimizer_class("fake")
    with pytest.raises(ValueError, match="'adamw'"):
        optim.optimizer_class("sgdd")


def test_no_trainable_parameters_is_an_error() -> None:
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer("adamw", [{"params": [frozen]}], 1e-3, 0.0)
