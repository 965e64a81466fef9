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
    """The critic's schedule is built with critic_lr while ``config.lr`` is the policy's: a schedule follows the
    ``lr`` it is given (warm-up from lr / 100, then lr or a decay from it), never ``config.lr``. The config here
    has ANOTHER lr than the one passed, so a scheduler that reads ``config.lr`` fails."""
    own, policy_lr, warmup, total = 3e-4, 5e-3, 4, 24
    for scheduler in ("constant", "cosine"):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=own)  # built with its own lr
        config = TrainConfig(scheduler=scheduler, warmup_steps=warmup, min_lr=0.0, lr=policy_lr)
        sched = make_lr_scheduler(optimizer, config, total, own)
        got = []
        for step in range(total):
            sched.step_update(step)
            got.append(optimizer.param_groups[0]["lr"])
        assert got[0] == pytest.approx(own / 100), scheduler  # the warm-up starts from this optimiser's lr / 100
        assert got[warmup] == pytest.approx(own), scheduler
        assert max(got) == pytest.approx(own), scheduler  # never the policy's rate
        if scheduler == "constant":
            assert got[warmup:] == pytest.approx([own] * (total - warmup))
        else:
            assert got[-1] < own / 10 and all(a >= b for a, b in itertools.pairwise(got[warmup:]))
