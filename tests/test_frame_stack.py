"""Frame stacking (image encoders' ``frame_stack`` F): windows give each position its last F frames, oldest first,
the episode's first frame repeated before its start; rollouts keep the same history per environment; an agent
whose encoder stacks frames trains, acts, saves and loads.

Frames here carry their own coordinates (pixel [0, 0] holds the step t, pixel [0, 1] the episode e), so every
stacked frame can be checked against the rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import qtkit
from qtkit.data import TrajectoryDataset, load_dataset
from tests.conftest import pixel_dataset, pixel_env

SHAPE = (8, 8, 3)


def coordinate_dataset(lengths: tuple[int, ...] = (5, 2, 7)) -> TrajectoryDataset:
    """Episodes whose frame t of episode e has pixel [0, 0, 0] = t + 1 and pixel [0, 0, 1] = e + 1 (0: padding)."""
    episodes = []
    for e, T in enumerate(lengths):
        frames = np.zeros((T + 1, *SHAPE), np.uint8)
        frames[:, 0, 0, 0] = np.arange(T + 1) + 1
        frames[:, 0, 0, 1] = e + 1
        episodes.append({"observations": frames, "actions": np.zeros((T, 1), np.float32),
                         "rewards": np.ones(T, np.float32)})
    return TrajectoryDataset.from_episodes(episodes)


def stacked_coordinates(x: torch.Tensor) -> np.ndarray:
    """``[B, K, F, H, W, C]`` -> ``[B, K, F, 2]``: the (t + 1, e + 1) each stacked frame carries."""
    return x[..., 0, 0, :2].numpy().astype(int)


@pytest.mark.parametrize("F", [2, 3])
@pytest.mark.parametrize("scheme", ["uniform", "reference"])
def test_windows_stack_the_last_frames_of_each_position(F: int, scheme: str) -> None:
    data = coordinate_dataset()
    batch = data.sample_windows(64, 4, generator=0, scheme=scheme, frame_stack=F)
    assert batch.observations.shape == (64, 4, F, *SHAPE) and batch.observations.dtype == torch.uint8
    obs, nxt = stacked_coordinates(batch.observations), stacked_coordinates(batch.next_observations)
    mask, steps = batch.mask.numpy(), batch.timesteps.numpy()
    for b in range(64):
        for k in range(4):
            if not mask[b, k]:
                assert (obs[b, k] == 0).all() and (nxt[b, k] == 0).all()  # padding: zeros
                continue
            t = steps[b, k]
            episode = obs[b, k, -1, 1]
            # slot j holds frame max(t - (F - 1 - j), 0): the episode's first frame fills in before its start
            expected = [max(t - (F - 1 - j), 0) + 1 for j in range(F)]
            assert list(obs[b, k, :, 0]) == expected, (t, obs[b, k])
            assert list(nxt[b, k, :, 0]) == [max(t + 1 - (F - 1 - j), 0) + 1 for j in range(F)]
            assert (obs[b, k, :, 1] == episode).all() and (nxt[b, k, :, 1] == episode).all()  # never crosses
    # F = 1 is the plain layout, and the newest frame of a stack is the plain observation
    plain = data.sample_windows(64, 4, generator=0, scheme=scheme)
    assert plain.observations.shape == (64, 4, *SHAPE)
    assert torch.equal(batch.observations[:, :, -1], plain.observations)
    assert torch.equal(batch.next_observations[:, :, -1], plain.next_observations)


def test_lazy_frames_stack_like_frames_in_memory(tmp_path: Path) -> None:
    data = coordinate_dataset()
    path = data.to_npz(tmp_path / "coords.npz")
    lazy = load_dataset(path, lazy=True)
    assert lazy.is_lazy
    a = data.sample_windows(32, 3, generator=5, frame_stack=3)
    b = lazy.sample_windows(32, 3, generator=5, frame_stack=3)
    for name, value in a.as_dict().items():
        assert torch.equal(value, b.as_dict()[name]), name


def test_frame_stack_is_checked() -> None:
    data = coordinate_dataset()
    with pytest.raises(ValueError, match="frame_stack must be an int >= 1"):
        data.sample_windows(4, 2, generator=0, frame_stack=0)
    vectors = TrajectoryDataset.from_episodes([{"observations": np.zeros((3, 2)), "actions": np.zeros((2, 1)),
                                                "rewards": np.zeros(2)}])
    with pytest.raises(ValueError, match="stacks image frames.*vector observations"):
        vectors.sample_windows(4, 2, generator=0, frame_stack=2)


CONV_STACK = {"type": "conv", "features": 16, "channels": 8, "augment": 0, "frame_stack": 3}


def test_rollout_keeps_the_last_frames_per_env_and_restarts_them(one_thread: None) -> None:
    data = pixel_dataset(episodes=3, length=6)
    agent = qtkit.build("qtransformer", dataset=data, seed=0, encoder=CONV_STACK, batch_size=4, context=2,
                        critic={"bins": 8}, backbone={"width": 16, "depth": 1, "heads": 1, "mlp_dim": 32})
    agent.fit(data, steps=2, progress=False)
    rollout = agent.rollout(num_envs=2, seed=0)
    frames = [np.full((2, *data.obs_shape), v, np.uint8) for v in (10, 20, 30, 40)]
    rollout.act(frames[0])
    assert rollout.frames is not None and rollout.frames.shape == (2, 3, data.obs_dim)
    assert (rollout.frames == 10).all()  # the first frame fills the stack
    rollout.observe([0.0, 0.0], [False, False])
    rollout.act(frames[1])
    assert rollout.frames[:, :, 0].tolist() == [[10, 10, 20]] * 2
    rollout.observe([0.0, 0.0], [False, True])  # env 1's episode ends
    rollout.act(frames[2])
    assert rollout.frames[0, :, 0].tolist() == [10, 20, 30]
    assert rollout.frames[1, :, 0].tolist() == [30, 30, 30]  # a new episode starts a new stack


def test_a_stacking_agent_trains_evaluates_and_round_trips(tmp_path: Path, one_thread: None) -> None:
    data = pixel_dataset(episodes=4, length=8)
    for preset in ("qt-gpt-nstep", "qtransformer"):
        extra = {"critic": {"bins": 8}} if preset == "qtransformer" else {"critic": {"hidden": [16, 16]}}
        agent = qtkit.build(preset, dataset=data, seed=0, encoder=CONV_STACK, batch_size=4, context=3,
                            backbone={"width": 16, "depth": 1, "heads": 1, "mlp_dim": 32}, warmup_steps=0, **extra)
        assert agent.encoder.frame_stack == 3 and agent.encoder.input_shape == (3, *data.obs_shape)
        result = agent.fit(data, steps=3, eval_env=lambda: pixel_env(4), eval_episodes=2, progress=False)
        assert result["final"] is not None and np.isfinite(result["final"]["mean_return"])
        agent.save(tmp_path / preset)
        loaded = qtkit.load(tmp_path / preset)
        assert loaded.encoder.frame_stack == 3
        obs = np.stack([pixel_env(4).reset(seed=s)[0] for s in range(2)])
        np.testing.assert_array_equal(loaded.act(obs), agent.act(obs))
