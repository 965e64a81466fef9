"""LR schedules of the training config: warm-up, constant (the DT reference), cosine, none."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from qtkit.agents.base import TrainConfig, make_lr_scheduler


def lrs(scheduler: str, warmup: int, total: int, lr: float = 1e-3, min_lr: float = 0.0) -> list[float]:
    """The optimiser's LR at each of ``total`` steps, stepping the scheduler as the agents do."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    config = TrainConfig(scheduler=scheduler, warmup_steps=warmup, min_lr=min_lr, lr=lr)
    sched = make_lr_scheduler(optimizer, config, total, lr)
    out = []
    for step in range(total):
        if sched is not None:
            sched.step_update(step)
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_constant_warms_up_linearly_then_stays_at_lr() -> None:
    got = lrs("constant", warmup=10, total=100)
    assert got[0] == pytest.approx(1e-5)  # lr / 100
    assert all(a < b for a, b in itertools.pairwise(got[:11]))  # rising through the warm-up
    assert got[5] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 5 / 10)
    assert got[10:] == pytest.approx([1e-3] * 90)


def test_cosine_decays_to_min_lr_after_the_warm_up() -> None:
    got = lrs("cosine", warmup=10, total=110, min_lr=1e-5)
    assert got[10] == pytest.approx(1e-3)
    t = 60 - 10  # half-way through the 100 decay steps
    assert got[60] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * t / 100)))
    assert got[-1] < 2e-5 and all(a >= b for a, b in itertools.pairwise(got[10:]))


def test_none_keeps_the_optimiser_lr() -> None:
    assert lrs("none", warmup=10, total=20) == pytest.approx([1e-3] * 20)


def test_each_optimiser_uses_its_own_base_lr() -> None:
    # the critic's schedule is built with critic_lr: constant must stay at that rate, not the policy's
    got = lrs("constant", warmup=0, total=5, lr=3e-4)
    assert got == pytest.approx([3e-4] * 5)
