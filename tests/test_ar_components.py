"""The ``ar-argmax`` policy and the ``ar-greedy`` sampler around an ``ar-q`` critic."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import qtkit
from qtkit.backbones.gpt2 import GPT2Backbone
from qtkit.critics.ar_q import ARQCritic
from qtkit.encoders import FlatEncoder
from qtkit.errors import ConfigError
from qtkit.policies.ar_argmax import ARArgmaxPolicy
from qtkit.samplers.ar_greedy import ARGreedySampler
from qtkit.samplers.base import RolloutContext, candidate_actions
from tests.conftest import CONTEXT, build_component

OBS, ACT = CONTEXT["obs_dim"], CONTEXT["act_dim"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_critic(seed: int = 0, **params: Any) -> ARQCritic:
    torch.manual_seed(seed)
    backbone = GPT2Backbone(width=32, depth=1, heads=2, dropout=0.0)
    params.setdefault("bins", 9)
    critic = ARQCritic(OBS, ACT, CONTEXT["action_low"], CONTEXT["action_high"], 0.9, backbone, floor=0.0, **params)
    with torch.no_grad():  # large random weights: greedy actions then depend on the state and its history
        for name, p in critic.net.named_parameters():
            if "ln" not in name:
                p.normal_(0.0, 0.5)
    critic.update_target(1.0)
    return critic.eval()


def make_context(E: int = 5, K: int = 4, seed: int = 0, padded: int = 0) -> RolloutContext:
    """A left-padded rollout context: the first ``padded`` positions of every env are empty."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(E, K, dtype=torch.bool)
    mask[:, :padded] = False
    states = torch.randn(E, K, OBS, generator=gen) * mask.unsqueeze(-1)
    return RolloutContext(
        states=states, actions=torch.zeros(E, K, ACT), timesteps=torch.arange(K).expand(E, K).clone(), mask=mask,
        rtg=torch.zeros(E, 1, K),
    )


# ----------------------------------------------------------------------------- policy
def test_policy_builds_without_parameters() -> None:
    policy = build_component("policy", "ar-argmax")
    assert isinstance(policy, ARArgmaxPolicy)
    assert list(policy.parameters()) == []
    assert set(policy.state_dict()) == {"action_low", "action_high"}


def test_policy_needs_an_attached_autoregressive_critic() -> None:
    policy = build_component("policy", "ar-argmax")
    ctx = make_context()
    with pytest.raises(ConfigError, match="attach"):
        policy(ctx.states, ctx.actions, ctx.rtg[:, 0], ctx.timesteps, ctx.mask)
    with pytest.raises(ConfigError, match="ar-q"):
        policy.attach(build_component("critic", "twin-mlp"))


def test_attached_critic_is_not_a_submodule() -> None:
    critic = make_critic()
    policy = build_component("policy", "ar-argmax").attach(critic)
    assert policy.critic is critic
    assert list(policy.children()) == [] and set(policy.state_dict()) == {"action_low", "action_high"}


@pytest.mark.parametrize("window", [1, 3])
def test_policy_forward_is_the_greedy_action_per_position(window: int) -> None:
    critic = make_critic(state_window=window)
    policy = build_component("policy", "ar-argmax").attach(critic)
    ctx = make_context(E=3, K=4, padded=1)
    actions, next_state = policy(ctx.states, ctx.actions, ctx.rtg[:, 0], ctx.timesteps, ctx.mask)
    assert next_state is None and actions.shape == (3, 4, ACT)
    low, high = policy.action_low, policy.action_high
    assert ((actions >= low) & (actions <= high)).all()
    assert torch.equal(actions[:, 0], ((low + high) / 2).expand(3, ACT))  # padded position
    for t in range(1, 4):
        start = max(0, t + 1 - window)
        expected = critic.undiscretize(critic.greedy(ctx.states[:, start: t + 1], ctx.mask[:, start: t + 1])[0])
        torch.testing.assert_close(actions[:, t], expected)
    assert len(actions[:, 1:].reshape(-1, ACT).unique(dim=0)) > 3  # the actions depend on the states
    again, _ = policy(ctx.states, ctx.actions, ctx.rtg[:, 0], ctx.timesteps, ctx.mask)
    assert torch.equal(actions, again)  # no randomness
    # generic code paths: candidate_actions runs the policy on the rollout context
    torch.testing.assert_close(candidate_actions(policy, ctx)[:, 0], actions[:, -1])
    torch.testing.assert_close(policy.act(ctx.states[:, -window:], ctx.mask[:, -window:]), actions[:, -1])


# ----------------------------------------------------------------------------- sampler
def test_sampler_defaults_and_bad_parameters() -> None:
    sampler = build_component("sampler", "ar-greedy")
    assert isinstance(sampler, ARGreedySampler)
    assert sampler.needs_critic and sampler.num_rows == 1
    assert sampler.epsilon == 0.0 and sampler.temperature == 0.0
    with pytest.raises(ConfigError, match="epsilon"):
        build_component("sampler", {"type": "ar-greedy", "epsilon": 1.5})
    with pytest.raises(ConfigError, match="temperature"):
        build_component("sampler", {"type": "ar-greedy", "temperature": -1.0})
    with pytest.raises(ConfigError, match="critic"):
        sampler.select(None, None, make_context(), torch.Generator())


@pytest.mark.parametrize("window", [1, 2])
def test_greedy_sampler_is_deterministic_and_leaves_the_generator_alone(window: int) -> None:
    critic = make_critic(state_window=window)
    ctx = make_context(E=6, K=4, padded=3)  # only the current step is real: the history is padding
    gen = torch.Generator().manual_seed(123)
    before = gen.get_state()
    sampler = ARGreedySampler()
    actions, rows = sampler.select(None, critic, ctx, gen)
    assert actions.shape == (6, ACT) and rows.dtype == torch.long and torch.equal(rows, torch.zeros(6, dtype=torch.long))
    assert torch.equal(gen.get_state(), before)
    again, _ = sampler.select(None, critic, ctx, gen)
    assert torch.equal(actions, again)
    expected = critic.undiscretize(critic.greedy(ctx.states[:, -window:], ctx.mask[:, -window:])[0])
    assert torch.equal(actions, expected) and len(actions.unique(dim=0)) > 1


def test_sampler_decodes_from_the_last_window_states(monkeypatch: pytest.MonkeyPatch) -> None:
    critic = make_critic(state_window=2)
    ctx = make_context(E=4, K=5, padded=4)
    seen: dict[str, Any] = {}
    decode = critic.decode

    def spy(states: torch.Tensor, mask: torch.Tensor | None = None, choose: Any = None) -> Any:
        seen.update(states=states.clone(), mask=None if mask is None else mask.clone(), choose=choose)
        return decode(states, mask, choose)

    monkeypatch.setattr(critic, "decode", spy)
    ARGreedySampler().select(None, critic, ctx, torch.Generator())
    assert torch.equal(seen["states"], ctx.states[:, -2:]) and torch.equal(seen["mask"], ctx.mask[:, -2:])
    assert seen["choose"] is None  # plain argmax
    ARGreedySampler(temperature=0.5).select(None, critic, ctx, torch.Generator())
    assert callable(seen["choose"])


def bins_of(critic: ARQCritic, actions: torch.Tensor) -> torch.Tensor:
    return critic.discretize(actions)


def test_epsilon_one_is_uniform_and_seeded() -> None:
    critic = make_critic(bins=4)
    ctx = make_context(E=2000, K=1)
    sampler = ARGreedySampler(epsilon=1.0)
    a, _ = sampler.select(None, critic, ctx, torch.Generator().manual_seed(0))
    b, _ = sampler.select(None, critic, ctx, torch.Generator().manual_seed(0))
    c, _ = sampler.select(None, critic, ctx, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    counts = torch.bincount(bins_of(critic, a).flatten(), minlength=4).float()
    assert ((counts / counts.sum() - 0.25).abs() < 0.03).all()  # 6000 draws: sd ~0.006


def test_small_epsilon_mostly_greedy() -> None:
    critic = make_critic(bins=16)
    ctx = make_context(E=1000, K=1)
    greedy, _ = ARGreedySampler().select(None, critic, ctx, torch.Generator())
    noisy, _ = ARGreedySampler(epsilon=0.1).select(None, critic, ctx, torch.Generator().manual_seed(0))
    changed = (greedy != noisy).any(-1).float().mean()
    assert 0.1 < changed < 0.4  # each of 3 dims re-drawn w.p. 0.1 (then 15/16 differ, and later dims may follow)


def test_temperature_sampling() -> None:
    critic = make_critic(bins=4)
    ctx = make_context(E=2000, K=1)
    greedy, _ = ARGreedySampler().select(None, critic, ctx, torch.Generator())
    cold, _ = ARGreedySampler(temperature=1e-6).select(None, critic, ctx, torch.Generator().manual_seed(0))
    assert torch.equal(cold, greedy)
    hot = ARGreedySampler(temperature=1e6)
    a, _ = hot.select(None, critic, ctx, torch.Generator().manual_seed(3))
    b, _ = hot.select(None, critic, ctx, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    counts = torch.bincount(bins_of(critic, a).flatten(), minlength=4).float()
    assert ((counts / counts.sum() - 0.25).abs() < 0.03).all()


def test_rollout_acts_through_the_sampler() -> None:
    """The evaluation loop's path (``Rollout.act``: no_grad, autocast, select) with the ar components."""
    from qtkit.agents.evaluation import Rollout

    critic = make_critic(state_window=2)
    policy = build_component("policy", "ar-argmax").attach(critic)
    agent = SimpleNamespace(
        name="test", return_targets=[1.0], train_config=SimpleNamespace(context=3, rtg_scale=1.0),
        shapes={"obs_dim": OBS, "act_dim": ACT}, device=torch.device("cpu"), sampler=ARGreedySampler(),
        policy=policy, critic=critic, encoder=FlatEncoder((OBS,), OBS), critic_encoder=None,
        encode=lambda x, proprio=None, encoder=None: x,
        autocast=lambda: torch.autocast("cpu", enabled=False),
    )
    rollout = Rollout(agent, num_envs=2, seed=0)
    rng = np.random.default_rng(0)
    observations = [rng.normal(size=(2, OBS)).astype(np.float32) for _ in range(3)]
    for i, obs in enumerate(observations):
        action = rollout.act(obs)
        assert action.shape == (2, ACT)
        hist = torch.as_tensor(np.stack(observations[max(0, i - 1): i + 1], axis=1))
        np.testing.assert_allclose(action, policy.act(hist).numpy(), atol=1e-6)
        rollout.observe(np.zeros(2), np.zeros(2, dtype=bool))


def test_builds_into_an_agent_from_a_config() -> None:
    config = {
        "agent": "qtransformer",
        "backbone": {"type": "gpt2", "width": 32, "depth": 1, "heads": 2, "dropout": 0.0},
        "policy": "ar-argmax",
        "critic": {"type": "ar-q", "bins": 8},
        "backup": {"type": "nstep-mc-max", "n": 3},
        "sampler": "ar-greedy",
        "train": {"context": 4},
    }
    agent = qtkit.build(config, obs_dim=OBS, act_dim=ACT)
    assert isinstance(agent.critic, ARQCritic) and isinstance(agent.policy, ARArgmaxPolicy)
    assert agent.critic.net.backbone.width == 32
    assert agent.policy.critic is agent.critic  # the agent attaches its critic
    weights = agent.state_dict()
    assert not any(k.startswith("policy.net") for k in weights) and "critic.floor_value" in weights
    agent.return_targets = [1.0]
    assert agent.act(np.zeros(OBS, dtype=np.float32)).shape == (ACT,)
