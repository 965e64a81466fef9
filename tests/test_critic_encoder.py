"""QT's ``train.critic_encoder``: ``shared`` (default: the critic reads the policy's encoder features, detached, so
only the policy loss trains the encoder) or ``separate`` (the critic has its own copy of the encoder, trained by
the critic loss through the critic's optimiser; at acting time the critic scores candidates on its own features).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import qtkit
from qtkit.agents.base import Agent
from qtkit.errors import ConfigError
from tests.conftest import pixel_dataset, pixel_env
from tests.test_contract_agent import check_one_step

SMALL = {"encoder": {"type": "conv", "features": 16, "channels": 8, "augment": 0}, "batch_size": 4, "context": 3,
         "backbone": {"width": 16, "depth": 1, "heads": 1, "mlp_dim": 32}, "critic": {"hidden": [16, 16]},
         "warmup_steps": 0, "ema_start": 0}


def build(critic_encoder: str, **overrides: Any) -> tuple[Agent, Any]:
    data = pixel_dataset(episodes=4, length=8)
    agent = qtkit.build("qt-gpt-nstep", dataset=data, seed=0, critic_encoder=critic_encoder, **{**SMALL, **overrides})
    return agent, data


def test_separate_critic_encoder_trains_with_the_critic_only(one_thread: None) -> None:
    agent, data = build("separate")
    assert agent.critic_encoder is not None and agent.critic_encoder is not agent.encoder
    assert "critic_encoder" in agent.modules()
    check_one_step(agent, data)  # every parameter, the critic's encoder included, gets a gradient and changes
    # the critic's optimiser owns the critic's encoder, the policy's does not (and vice versa)
    critic_params = {id(p) for g in agent.critic_optimizer.param_groups for p in g["params"]}
    policy_params = {id(p) for g in agent.policy_optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in agent.critic_encoder.parameters()} <= critic_params
    assert not {id(p) for p in agent.critic_encoder.parameters()} & policy_params
    assert not {id(p) for p in agent.encoder.parameters()} & critic_params
    # with eta = 0 the policy's loss does not read the critic: the critic's encoder still learns, from the critic
    agent, data = build("separate", eta=0.0)
    agent.prepare(data)
    agent.make_optimizers(5)
    agent.train_mode()
    before = [p.detach().clone() for p in agent.critic_encoder.parameters()]
    agent.train_step(data.sample_windows(4, 3, generator=0, rtg_scale=agent.train_config.rtg_scale))
    assert all(not torch.equal(a, p) for a, p in zip(before, agent.critic_encoder.parameters(), strict=True))


def test_shared_encoder_gets_no_gradient_from_the_critic(one_thread: None) -> None:
    """Shared: the critic's loss never reaches the encoder (its features are detached for the critic)."""
    agent, data = build("shared")
    assert agent.critic_encoder is None and "critic_encoder" not in agent.modules()
    agent.prepare(data)
    agent.make_optimizers(5)
    agent.train_mode()
    batch = data.sample_windows(4, 3, generator=0, rtg_scale=agent.train_config.rtg_scale)
    seen: dict[str, float] = {}
    original = agent.step_optimizer

    def spy(optimizer: Any, scheduler: Any, loss: torch.Tensor, parameters: Any, clip: Any, what: str) -> None:
        if what == "critic":
            grads = torch.autograd.grad(loss, list(agent.encoder.parameters()), allow_unused=True)
            seen["critic"] = sum(float(g.abs().sum()) for g in grads if g is not None)
        original(optimizer, scheduler, loss, parameters, clip, what)

    agent.step_optimizer = spy  # type: ignore[method-assign]
    agent.train_step(batch)
    assert seen == {"critic": 0.0}


def test_the_critic_scores_candidates_on_its_own_features(one_thread: None) -> None:
    agent, data = build("separate")
    agent.fit(data, steps=2, progress=False)
    with torch.no_grad():  # make the two encoders differ for sure
        for p in agent.critic_encoder.parameters():
            p.add_(0.5)
    rollout = agent.rollout(num_envs=2, seed=0)
    scored: list[torch.Tensor] = []
    score = agent.critic.score

    def spy(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        scored.append(states.clone())
        return score(states, actions)

    agent.critic.score = spy  # type: ignore[method-assign]
    obs = np.stack([pixel_env(4).reset(seed=s)[0] for s in range(2)])
    rollout.act(obs)
    with torch.no_grad():
        mine = agent.critic_encoder.eval()(torch.as_tensor(obs))
        policy_features = agent.encoder.eval()(torch.as_tensor(obs))
    torch.testing.assert_close(rollout.ctx.critic_states[:, -1], mine)
    torch.testing.assert_close(rollout.ctx.states[:, -1], policy_features)
    torch.testing.assert_close(scored[0][:, 0], mine)  # the sampler's states are the critic's features
    rollout.observe([0.0, 0.0], [True, False])
    assert (rollout.ctx.critic_states[0] == 0).all() and (rollout.ctx.critic_states[1, -1] != 0).any()


def test_round_trip_and_resume_keep_the_critic_encoder(tmp_path: Path, one_thread: None) -> None:
    agent, data = build("separate")
    agent.fit(data, steps=3, progress=False)
    loaded = qtkit.load(agent.save(tmp_path / "run"))
    assert loaded.critic_encoder is not None
    for key, value in agent.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert any(k.startswith("critic_encoder.") for k in agent.state_dict())
    obs = np.stack([pixel_env(4).reset(seed=s)[0] for s in range(2)])
    np.testing.assert_array_equal(agent.rollout(2, seed=1).act(obs), loaded.rollout(2, seed=1).act(obs))


def test_separate_needs_a_critic_and_an_encoder_with_weights() -> None:
    data = pixel_dataset(episodes=2, length=4)
    with pytest.raises(ConfigError, match="critic_encoder='separate'.*has no critic"):
        qtkit.build("dt-gpt", dataset=data, critic_encoder="separate", **{k: v for k, v in SMALL.items()
                                                                           if k not in ("critic", "ema_start")})
    vectors = qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=1)
    with pytest.raises(ConfigError, match="encoder without weights \\(FlatEncoder\\)"):
        qtkit.build(vectors.config, critic_encoder="separate")
