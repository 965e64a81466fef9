"""The Q-Transformer agent end to end: build errors, and recovering a known optimal action from offline data."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import qtkit
from qtkit.data import TrajectoryDataset
from qtkit.errors import ConfigError

TINY = {"backbone": {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "dropout": 0.0},
        "critic": {"bins": 8}, "batch_size": 64, "context": 2, "lr": 3e-3, "tau": 0.05,
        "warmup_steps": 0, "log_every": 1000}


def test_discrete_action_spaces_are_refused_with_what_is_supported() -> None:
    with pytest.raises(ConfigError, match=r"Box\) actions only.*'ar-q' discretises.*Discrete"):
        qtkit.build("qtransformer", env=gym.make("CartPole-v1"))


def test_qtransformer_agent_needs_an_autoregressive_critic() -> None:
    with pytest.raises(ConfigError, match=r"agent 'qtransformer' needs an autoregressive critic.*'ar-q'"):
        qtkit.build("qtransformer", obs_dim=3, act_dim=2, critic="twin-mlp")


def test_ar_q_refuses_unbounded_actions() -> None:
    with pytest.raises(ConfigError, match="finite action bounds"):
        qtkit.build("qtransformer", obs_dim=3, act_dim=2, action_low=-np.inf, action_high=np.inf)


#: The optimal action's bins (of 8 per dimension over [-1, 1]) and its centre.
BEST_BINS = np.array([6, 1, 3])
BEST = -1.0 + (BEST_BINS + 0.5) * (2.0 / 8)


def bandit_dataset(seed: int = 0, episodes: int = 600) -> TrajectoryDataset:
    """One-step episodes (terminal): reward = fraction of dimensions whose bin matches BEST_BINS.

    The behaviour picks each dimension's bin uniformly at random, except that 10% of the episodes
    take the optimal action, so it is in the data among many worse ones.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(episodes):
        bins = BEST_BINS if i % 10 == 0 else rng.integers(0, 8, size=3)
        action = (-1.0 + (bins + rng.uniform(0.05, 0.95, size=3)) * 0.25).astype(np.float32)  # anywhere in the bin
        reward = float((bins == BEST_BINS).mean())
        out.append({"observations": rng.normal(size=(2, 4)).astype(np.float32), "actions": action[None],
                    "rewards": np.array([reward], dtype=np.float32), "terminations": np.array([True])})
    return TrajectoryDataset.from_episodes(out, action_space=spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32),
                                           metadata={"dataset_id": "three-dim-bandit"})


@pytest.mark.slow
def test_qtransformer_recovers_the_optimal_multi_dimensional_action() -> None:
    data = bandit_dataset()
    agent = qtkit.build("qtransformer", dataset=data, seed=0, **TINY)
    agent.fit(data, steps=250, progress=False)
    observations = np.random.default_rng(5).normal(size=(32, 4)).astype(np.float32)
    agent.critic.eval()
    with torch.no_grad():
        bins, q = agent.critic.greedy(agent.standardize(torch.from_numpy(observations)))
    assert (bins.numpy() == BEST_BINS).all(), bins[:4]
    assert q.mean().item() == pytest.approx(1.0, abs=0.25)
    actions = agent.rollout(num_envs=32).act(observations)  # the ar-greedy sampler: bin centres
    np.testing.assert_allclose(actions, np.broadcast_to(BEST, actions.shape), atol=1e-6)


def test_ar_argmax_policy_needs_the_qtransformer_agent() -> None:
    with pytest.raises(ConfigError, match=r"agent 'qt' trains its policy by behaviour cloning.*agent: qtransformer"):
        qtkit.build("qt-gpt-arq", obs_dim=3, act_dim=2, policy="ar-argmax")
