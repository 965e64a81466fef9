"""The contract every registered agent family passes (kind ``agent``; d3rlpy's shared algorithm test is the model).

For each family, on a tiny preset of its own: the ``train`` section builds its ``TrainConfig``; one
``train_step`` advances ``step`` by exactly one, returns finite float metrics, gives every trainable parameter
of the agent's modules a finite gradient and changes it, and leaves the critic's target copies without
gradient; acting is deterministic for a seed; ``save`` + ``qtkit.load`` round-trip weights and actions.
``test_a_broken_family_fails_the_contract`` shows the step check failing on a family that forgets to step
its critic's optimiser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import qtkit
from qtkit.agents.base import Agent
from qtkit.config import load_preset, resolve_config
from qtkit.data import TrajectoryDataset
from qtkit.registry import get_component, register, unregister
from tests.conftest import tiny

FAMILIES = qtkit.list_components("agent")


def preset_of(family: str) -> str:
    """The first built-in preset of ``family``, one with a critic where the family has one (every family has
    a preset: checked below)."""
    configs = [resolve_config(load_preset(name)) for name in qtkit.list_presets()]
    mine = sorted((c["critic"] is None, c["name"]) for c in configs if c["agent"] == family)
    assert mine, f"agent family {family!r} has no preset in registry.yaml"
    return mine[0][1]


@pytest.fixture(scope="module")
def data() -> TrajectoryDataset:
    """Random episodes with 2-D actions (an autoregressive critic's later dimensions then have inputs)."""
    rng = np.random.default_rng(0)
    episodes = [{"observations": rng.normal(size=(13, 3)), "actions": rng.uniform(-1, 1, size=(12, 2)),
                 "rewards": rng.normal(size=12), "terminations": np.arange(12) == 11 if i % 2 else np.zeros(12, bool),
                 "truncations": np.zeros(12, bool)} for i in range(4)]
    return TrajectoryDataset.from_episodes(episodes)


def build(family: str, data: TrajectoryDataset, **overrides: Any) -> Agent:
    preset = preset_of(family)
    return qtkit.build(preset, dataset=data, **{**tiny(preset), "seed": 0, **overrides})


def target_parameters(agent: Agent) -> list[torch.nn.Parameter]:
    """Parameters of the critic's target copy (those the critic's ``target_parameters`` or the names say)."""
    if agent.critic is None:
        return []
    return [p for n, p in agent.critic.named_parameters() if "target" in n]


def check_one_step(agent: Agent, data: TrajectoryDataset) -> None:
    """The training-step contract on one batch (raises AssertionError naming what broke)."""
    agent.prepare(data)
    agent.make_optimizers(10)
    agent.train_mode()
    targets = {id(p) for p in target_parameters(agent)}
    trainable = {f"{m}.{n}": p for m, module in agent.modules().items() for n, p in module.named_parameters()
                 if p.requires_grad and id(p) not in targets}
    assert trainable, "the agent has no trainable parameters"
    before = {k: p.detach().clone() for k, p in trainable.items()}
    grads: dict[str, torch.Tensor | None] = {}
    hooks = [p.register_post_accumulate_grad_hook(lambda p, k=k: grads.__setitem__(k, p.grad.detach().clone()))
             for k, p in trainable.items()]
    batch = data.sample_windows(8, agent.train_config.context, generator=0, rtg_scale=agent.train_config.rtg_scale)
    step = agent.step
    metrics = agent.train_step(batch)
    for hook in hooks:
        hook.remove()
    assert agent.step == step + 1, f"train_step moved step from {step} to {agent.step}"
    assert metrics and all(isinstance(v, float) and np.isfinite(v) for v in metrics.values()), metrics
    no_grad = sorted(k for k in trainable if k not in grads)
    assert not no_grad, f"no gradient reached {no_grad}"
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    unchanged = sorted(k for k, p in trainable.items() if torch.equal(p.detach(), before[k]))
    assert not unchanged, f"one step left these parameters unchanged: {unchanged}"
    frozen = target_parameters(agent)
    assert all(p.grad is None and not p.requires_grad for p in frozen), "a target copy can receive gradients"


def test_every_family_has_a_preset() -> None:
    assert set(FAMILIES) == {"qt", "qtransformer"}
    for family in FAMILIES:
        preset_of(family)


@pytest.mark.parametrize("family", FAMILIES)
class TestAgentContract:
    def test_train_section_builds_the_familys_train_config(self, family: str, data: TrajectoryDataset) -> None:
        agent = build(family, data)
        cls = get_component("agent", family).target.TrainConfig
        assert type(agent.train_config) is cls
        assert agent.train_config_dict() == agent.config["train"]

    def test_one_step_trains_every_parameter_and_no_target(self, family: str, data: TrajectoryDataset) -> None:
        check_one_step(build(family, data), data)

    def test_acting_is_deterministic_for_a_seed(self, family: str, data: TrajectoryDataset) -> None:
        agent = build(family, data)
        agent.prepare(data)
        obs = np.random.default_rng(0).normal(size=(3, data.obs_dim)).astype(np.float32)
        first = agent.rollout(num_envs=3, seed=5).act(obs)
        again = agent.rollout(num_envs=3, seed=5).act(obs)
        np.testing.assert_array_equal(first, again)
        assert first.shape == (3, data.act_dim) and first.dtype == np.float32

    def test_save_and_load_round_trip(self, family: str, data: TrajectoryDataset, tmp_path: Path) -> None:
        agent = build(family, data)
        agent.fit(data, steps=2, progress=False)
        loaded = qtkit.load(agent.save(tmp_path / "saved"))
        assert loaded.config == agent.config and type(loaded) is type(agent)
        for key, value in agent.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
        obs = np.zeros((2, data.obs_dim), dtype=np.float32)
        np.testing.assert_array_equal(agent.rollout(num_envs=2, seed=1).act(obs), loaded.rollout(num_envs=2, seed=1).act(obs))


def test_a_broken_family_fails_the_contract(data: TrajectoryDataset) -> None:
    """A QT family whose step never updates its critic (the optimiser step forgotten) is caught."""
    qt = get_component("agent", "qt").target

    @register("agent", "test-broken-qt")
    class BrokenQT(qt):  # type: ignore[misc, valid-type]
        def make_optimizers(self, total_steps: int) -> None:
            super().make_optimizers(total_steps)
            self.critic_optimizer.step = lambda *a, **k: None  # type: ignore[method-assign]

    try:
        config = build("qt", data).config
        broken = qtkit.build({**config, "agent": "test-broken-qt"})
        with pytest.raises(AssertionError, match="unchanged: .*critic"):
            check_one_step(broken, data)
    finally:
        unregister("agent", "test-broken-qt")
