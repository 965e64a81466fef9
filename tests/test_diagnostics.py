"""Value diagnostics (qtkit/agents/diagnostics.py): Q vs Monte-Carlo returns, L_Q's gradient vs L_DT's."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import qtkit
from qtkit.agents.diagnostics import gradient_balance, value_diagnostics
from tests.conftest import TINY, pendulum_dataset


def test_value_diagnostics_on_known_numbers_ignore_padding() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    q = 2.0 * returns + 1.0
    q[~mask] = float("nan")  # padding garbage must not count
    out = value_diagnostics(torch.stack((q, q + 2.0)), returns, mask)  # two members: mean is 2G + 2
    assert float(out["mc_return"]) == pytest.approx(3.0)
    assert float(out["q_data"]) == pytest.approx(8.0)
    assert float(out["q_bias"]) == pytest.approx(5.0)
    assert float(out["q_mc_corr"]) == pytest.approx(1.0)
    anti = value_diagnostics(-returns, returns, mask)
    assert float(anti["q_mc_corr"]) == pytest.approx(-1.0)


def test_gradient_balance_measures_ratio_and_direction() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    bc = (w**2).sum()  # grad 2w
    agreeing = gradient_balance(bc, 3.0 * bc, [w])
    assert float(agreeing["lq_grad_ratio"]) == pytest.approx(3.0)
    assert float(agreeing["lq_grad_cos"]) == pytest.approx(1.0)
    opposing = gradient_balance(bc, -0.5 * bc, [w])
    assert float(opposing["lq_grad_ratio"]) == pytest.approx(0.5)
    assert float(opposing["lq_grad_cos"]) == pytest.approx(-1.0)
    (bc + 0.0).backward()  # the graphs are kept for the caller's backward
    torch.testing.assert_close(w.grad, 2 * w.detach())


@pytest.mark.parametrize("preset", ["qt-gpt-nstep", "qtransformer"])
def test_fit_logs_the_diagnostics_every_log_every_steps(preset: str, tmp_path: Path) -> None:
    data = pendulum_dataset(episodes=4, length=12)
    kwargs = {k: v for k, v in TINY.items() if k in qtkit.build(preset, obs_dim=1, act_dim=1).config["train"]}
    kwargs["backbone"] = TINY["backbone"]
    if preset == "qtransformer":
        kwargs["critic"] = {"bins": 16}
    else:
        kwargs["critic"] = TINY["critic"]
    agent = qtkit.build(preset, dataset=data, **kwargs)
    agent.fit(data, steps=4, log_dir=tmp_path, progress=False)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4]
    wanted = ["q_data", "mc_return", "q_bias", "q_mc_corr", "target_valid_frac"]
    if preset == "qt-gpt-nstep":
        wanted += ["lq_grad_ratio", "lq_grad_cos"]
    for row in rows:
        for key in wanted:
            assert row.get(key) not in (None, ""), key
        assert float(row["q_bias"]) == pytest.approx(float(row["q_data"]) - float(row["mc_return"]), rel=1e-4, abs=1e-5)
    assert (tmp_path / "tensorboard").is_dir()


@pytest.mark.parametrize("preset", ["qt-gpt-nstep", "qtransformer"])
def test_diagnostics_do_not_change_training(preset: str) -> None:
    """The same seed gives bit-identical weights whether or not a step computes diagnostics."""
    data = pendulum_dataset(episodes=4, length=12)
    critic = {"bins": 16} if preset == "qtransformer" else TINY["critic"]
    weights = []
    for diagnose in (False, True):
        agent = qtkit.build(preset, dataset=data, backbone={**TINY["backbone"], "dropout": 0.1}, critic=critic,
                            batch_size=8, context=4)
        agent.fit(data, steps=1, progress=False)  # makes the optimizers
        for _ in range(3):
            batch = data.sample_windows(8, 4, agent.generator, rtg_scale=agent.train_config.rtg_scale)
            agent.train_step(batch, diagnose=diagnose)
        weights.append(agent.state_dict())
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def test_q_at_data_draws_no_randomness_and_restores_the_mode() -> None:
    """The diagnostic pass runs in eval mode: no dropout masks drawn from the global RNG (which would shift
    every later training step's dropout), deterministic values, and the critic's train mode restored."""
    from qtkit.agents.diagnostics import q_at_data

    data = pendulum_dataset(episodes=4, length=12)
    agent = qtkit.build("qtransformer", dataset=data, backbone={**TINY["backbone"], "dropout": 0.5},
                        critic={"bins": 16}, batch_size=8, context=4)
    agent.critic.train()
    batch = data.sample_windows(8, 4, agent.generator, rtg_scale=1.0)
    states = agent.standardize(batch.observations)
    before = torch.get_rng_state()
    first = q_at_data(agent.critic, states, batch.actions)
    assert torch.equal(before, torch.get_rng_state())
    torch.testing.assert_close(first, q_at_data(agent.critic, states, batch.actions), rtol=0, atol=0)
    assert agent.critic.training
