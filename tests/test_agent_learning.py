"""Learning test: the Q term (eta > 0) moves the policy to better actions than behaviour cloning.

A two-step task built so that return conditioning is misled by luck (the stochastic trap of
"You Can't Count on Luck", Paster et al. 2022). The action a in [-1, 1] earns
``m(a) = 1 - 0.8 (a + 0.5)²`` on average (best at a = -0.5), plus noise of standard deviation
``3 max(a, 0)``: actions on the right are worse on average but the only ones that ever reach a
high return. The behaviour policy is uniform. Decision Transformer (eta = 0), asked for the best
return in the data, imitates the lucky right-hand actions; QT's critic learns ``Q = m(a) + ...``
and the eta term pulls the policy towards a = -0.5. Both agents are the same preset, seed and
data; only eta differs. Checked on two seeds, each with a wide margin (measured after 400 steps: values
0.21 / -0.03 for eta = 0 against 0.92 / 0.91 for eta = 2, of a best possible 1.0; seed 3: 0.03 / 0.98).
QT must beat 0.85: imitating the behaviour's mean action (a = 0) is already worth 0.8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

import qtkit
from qtkit.data import TrajectoryDataset

SMALL = {
    "backbone": {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "dropout": 0.0},
    "policy": {"embed_dropout": 0.0, "predict_next_state": False},
    "critic": {"hidden": [64, 64]},
    "backup": {"type": "n-step", "n": 2},
    "batch_size": 64,
    "context": 4,
    "lr": 3e-3,
    "critic_lr": 3e-3,
    "warmup_steps": 0,
    "ema_start": 0,
    "ema_every": 1,
    "ema_decay": 0.9,
    "tau": 0.05,
    "gamma": 0.5,
    "rtg_scale": 10.0,
    "log_every": 1000,
}


def mean_reward(actions: np.ndarray) -> np.ndarray:
    """Expected reward of actions [..., 1]: 1 at a = -0.5, lower elsewhere."""
    return 1.0 - 0.8 * (actions[..., 0] + 0.5) ** 2


def stochastic_trap_dataset(seed: int, episodes: int = 300, length: int = 2) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        actions = rng.uniform(-1, 1, size=(length, 1)).astype(np.float32)
        rewards = mean_reward(actions) + 3.0 * np.maximum(actions[:, 0], 0.0) * rng.normal(size=length)
        observations = rng.normal(size=(length + 1, 3)).astype(np.float32)  # uninformative states
        out.append({"observations": observations, "actions": actions, "rewards": rewards.astype(np.float32),
                    "terminations": np.eye(length, dtype=bool)[-1]})
    return TrajectoryDataset.from_episodes(out, action_space=spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32),
                                           metadata={"dataset_id": "stochastic-trap"})


def chosen_actions(agent: object, data: TrajectoryDataset) -> np.ndarray:
    """The policy's action at the last valid step of 256 dataset windows, asked for the best return seen."""
    batch = data.sample_windows(256, SMALL["context"], torch.Generator().manual_seed(123), rtg_scale=SMALL["rtg_scale"])
    agent.policy.eval()
    with torch.no_grad():
        rtg = torch.full_like(batch.rtg, max(agent.return_targets) / SMALL["rtg_scale"])
        predicted, _ = agent.policy(agent.standardize(batch.observations), batch.actions, rtg, batch.timesteps, batch.mask)
    last = batch.mask.shape[1] - 1 - batch.mask.flip(1).int().argmax(1)  # last valid step of each window
    return predicted[torch.arange(len(last)), last].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_eta_selects_higher_value_actions_than_behaviour_cloning(seed: int) -> None:
    data = stochastic_trap_dataset(seed)
    value = {}
    for eta in (0.0, 2.0):
        agent = qtkit.build("qt-gpt-nstep", dataset=data, eta=eta, seed=seed, **SMALL)
        agent.fit(data, steps=400, progress=False)
        value[eta] = float(mean_reward(chosen_actions(agent, data)).mean())
    print(f"seed {seed}: value of the chosen actions, eta=0 {value[0.0]:.3f}, eta=2 {value[2.0]:.3f} (best 1.0)")
    assert value[0.0] < 0.5, value  # DT follows the lucky, worse actions
    assert value[2.0] > 0.85, value  # QT gets close to the best action, past the behaviour's mean (0.8)
    assert value[2.0] > value[0.0] + 0.4, value
