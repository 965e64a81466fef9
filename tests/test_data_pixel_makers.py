"""Pixel makers (``maze2d-*-pixels``, ``hopper-random-pixels``) and their evaluation envs: tiny sizes, real
physics, MuJoCo's renderer (EGL headless). Skipped, with the reason, where offscreen rendering does not work.

The datasets are checked with ``minari.load_dataset`` directly (qtkit's TrajectoryDataset learns uint8 images
elsewhere). The conftest points MINARI_DATASETS_PATH at one temp folder per session; ``exist_ok`` reuses a
dataset between tests.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap

import gymnasium as gym
import minari
import numpy as np
import pytest

from qtkit.data.makers import get_maker, list_makers, make_dataset
from qtkit.data.makers.common import close_env
from qtkit.data.makers.maze2d import target_rewards
from qtkit.data.makers.maze2d_pixels import find_pixel_wrapper
from qtkit.data.makers.pixels import maze2d_pixels_env_id, rendering_unavailable

_WHY = rendering_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"no offscreen rendering here: {_WHY}")

FAST = {"progress": False, "ref_episodes": 3}
STEPS = 650  # umaze: episodes of 300, 300 and 50 steps
FRAME = (64, 64, 3)


def _load(name: str, dataset_id: str, steps: int = STEPS, seed: int = 0, **kwargs: object) -> minari.MinariDataset:
    return minari.load_dataset(make_dataset(name, steps=steps, seed=seed, dataset_id=dataset_id, exist_ok=True,
                                            **{**FAST, **kwargs}))


def _episodes(dataset: minari.MinariDataset) -> list:
    return list(dataset.iterate_episodes())


def test_pixel_makers_are_listed() -> None:
    assert set(list_makers("*-pixels")) == {"maze2d-umaze-pixels", "maze2d-umaze-dense-pixels", "maze2d-medium-pixels",
                                            "maze2d-medium-dense-pixels", "hopper-random-pixels"}
    assert set(list_makers("*-pixels-state")) == {f"{name}-state" for name in list_makers("*-pixels")}
    assert get_maker("maze2d-umaze-pixels").default_steps == 100_000
    assert get_maker("maze2d-umaze-pixels").default_noise == 0.5
    assert {"episode_length", "ref_episodes", "size"} <= set(get_maker("maze2d-umaze-pixels").options())
    assert get_maker("hopper-random-pixels").default_noise is None
    for env_id in ("qtkit/Maze2D-UMaze-Pixels-v0", "qtkit/Maze2D-MediumDense-Pixels-v0", "qtkit/Hopper-Pixels-v0"):
        assert env_id in gym.registry


@pytest.mark.parametrize("reward", ["sparse", "dense"])
def test_maze2d_pixels_is_the_state_dataset_with_frames(reward: str) -> None:
    suffix = "-dense" if reward == "dense" else ""
    pix = _load(f"maze2d-umaze{suffix}-pixels", f"tst/px-umaze{suffix}")
    state = _load(f"maze2d-umaze{suffix}", f"tst/px-state-umaze{suffix}")
    space = pix.observation_space
    assert isinstance(space, gym.spaces.Box) and space.shape == FRAME and space.dtype == np.uint8
    assert pix.storage.metadata["jpeg_encoding"] is False  # raw frames, as the eval env renders them
    pe, se = _episodes(pix), _episodes(state)
    assert [len(e.rewards) for e in pe] == [len(e.rewards) for e in se] == [300, 300, 50]
    target = np.asarray(pix.storage.metadata["qtkit_maker"]["target_xy"])
    for p, s in zip(pe, se, strict=True):
        assert p.observations.shape == (len(p.rewards) + 1, *FRAME) and p.observations.dtype == np.uint8
        np.testing.assert_array_equal(p.actions, s.actions)
        np.testing.assert_array_equal(p.rewards, s.rewards)  # same planner, same physics, same seed
        np.testing.assert_array_equal(p.rewards, target_rewards(s.observations[1:, :2], target, reward))
        np.testing.assert_array_equal(p.truncations, s.truncations)
        assert not p.terminations.any()
        # the agent moves: frames change along the episode, and only where the position changed
        moved = np.abs(np.diff(s.observations[:, :2], axis=0)).max(axis=1) > 0.05
        changed = np.array([not np.array_equal(a, b) for a, b in zip(p.observations[:-1], p.observations[1:])])
        assert changed.any() and changed[moved].mean() > 0.8
    for a, b in itertools.pairwise(pe):  # the continuous run: episode k+1 starts at episode k's last frame
        np.testing.assert_array_equal(a.observations[-1], b.observations[0])
    if reward == "dense":
        assert all(e.rewards.min() > 0 for e in pe)
    mp, ms = pix.storage.metadata, state.storage.metadata
    assert (mp["ref_min_score"], mp["ref_max_score"]) == (ms["ref_min_score"], ms["ref_max_score"])
    assert mp["qtkit_maker"]["env_id"] == maze2d_pixels_env_id("umaze", reward)
    assert mp["qtkit_maker"]["pixels"]["size"] == 64


def test_eval_env_renders_the_dataset_frames_in_a_fresh_process(tmp_path: object) -> None:
    """In a new interpreter: the id makes after qtkit's registration hook, and recover_environment (collection
    and evaluation) works from the stored spec alone; each renders the dataset's frame for the dataset's state."""
    dataset_id = _load("maze2d-umaze-pixels", "tst/px-umaze").spec.dataset_id
    state = _episodes(_load("maze2d-umaze", "tst/px-state-umaze"))[1]
    frames = _episodes(minari.load_dataset(dataset_id))[1].observations
    picks = [0, 77, 150, 299]
    np.save(os.path.join(str(tmp_path), "states.npy"), state.observations[picks])
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, minari, gymnasium as gym
        states = np.load({os.path.join(str(tmp_path), "states.npy")!r})
        out = {{}}
        dataset = minari.load_dataset({dataset_id!r})
        envs = {{"recover": dataset.recover_environment(), "recover_eval": dataset.recover_environment(eval_env=True)}}
        from qtkit.data.loading import register_robotics_envs
        register_robotics_envs()
        envs["by_id"] = gym.make("qtkit/Maze2D-UMaze-Pixels-v0")
        from qtkit.data.makers.maze2d_pixels import find_pixel_wrapper
        for name, env in envs.items():
            obs, _ = env.reset(seed=1)
            assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8, obs.shape
            assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            wrapper = find_pixel_wrapper(env)
            out[name] = [wrapper.frame_of(s[:2], s[2:]).tolist() for s in states]
            out[name + "_horizon"] = env.spec.max_episode_steps
            env.close()
        json.dump(out, sys.stdout)
    """)
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}  # the default backend choice (EGL headless)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    for name in ("recover", "recover_eval", "by_id"):
        np.testing.assert_array_equal(np.asarray(out[name], dtype=np.uint8), frames[picks], err_msg=name)
        assert out[name + "_horizon"] == 300


def test_eval_env_reward_is_the_state_env_reward() -> None:
    """The pixel eval env is the state eval env with other observations: same seed, same actions, same rewards."""
    pix, st = gym.make("qtkit/Maze2D-UMazeDense-Pixels-v0"), gym.make("qtkit/Maze2D-UMazeDense-v0")
    try:
        frame, _ = pix.reset(seed=5)
        obs, _ = st.reset(seed=5)
        wrapper = find_pixel_wrapper(pix)
        np.testing.assert_array_equal(wrapper.frame_of(obs[:2], obs[2:]), frame)
        rng = np.random.default_rng(0)
        for _ in range(40):
            a = rng.uniform(-1, 1, 2).astype(np.float32)
            f, rp, tp, up, _ = pix.step(a)
            _, rs, ts, us, _ = st.step(a)
            assert (rp, tp, up) == (rs, ts, us)
        assert not np.array_equal(f, frame)
    finally:
        close_env(pix)
        close_env(st)


def test_hopper_random_pixels_is_hopper_random_with_frames() -> None:
    pix = _load("hopper-random-pixels", "tst/px-hopper", steps=120)
    state = _load("hopper-random", "tst/px-state-hopper", steps=120)
    assert pix.observation_space == gym.spaces.Box(0, 255, FRAME, np.uint8)
    pe, se = _episodes(pix), _episodes(state)
    assert len(pe) == len(se) > 1 and sum(len(e.rewards) for e in pe) == 120
    for p, s in zip(pe, se, strict=True):
        assert p.observations.shape == (len(p.rewards) + 1, *FRAME) and p.observations.dtype == np.uint8
        np.testing.assert_array_equal(p.actions, s.actions)
        np.testing.assert_array_equal(p.rewards, s.rewards)
        np.testing.assert_array_equal(p.terminations, s.terminations)
        assert not np.array_equal(p.observations[0], p.observations[-1])
    mp, ms = pix.storage.metadata, state.storage.metadata
    assert (mp["ref_min_score"], mp["ref_max_score"]) == (ms["ref_min_score"], ms["ref_max_score"])
    env = pix.recover_environment(eval_env=True)
    try:
        assert env.spec.id == "qtkit/Hopper-Pixels-v0" and env.spec.max_episode_steps == 1000
        obs, _ = env.reset(seed=0)
        assert obs.shape == FRAME and obs.dtype == np.uint8
    finally:
        close_env(env)


@pytest.mark.parametrize(("name", "state_name", "steps"), [("maze2d-umaze-pixels-state", "maze2d-umaze-pixels", 340),
                                                          ("hopper-random-pixels-state", "hopper-random", 60)])
def test_pixels_state_makers_give_frames_and_the_state_vector(name: str, state_name: str, steps: int) -> None:
    """``-pixels-state``: ``{"pixels", "state"}`` observations: the ``-pixels`` maker's frames (maze) or the state
    maker's steps (hopper) with the state env's observation next to them; qtkit loads the frames and the state as
    its proprioceptive vector; the evaluation env gives the same kind of observations, split the same way."""
    from qtkit.data import load_dataset
    from qtkit.data.spaces import flatten_observation, split_flat_observation

    dataset_id = f"tst/{name}"
    mixed = _load(name, dataset_id, steps=steps)
    other = _load(state_name, f"tst/for-{name}", steps=steps)
    space = mixed.observation_space
    assert isinstance(space, gym.spaces.Dict) and set(space.spaces) == {"pixels", "state"}
    assert space["pixels"] == gym.spaces.Box(0, 255, FRAME, np.uint8)
    for m, o in zip(_episodes(mixed), _episodes(other), strict=True):
        np.testing.assert_array_equal(m.actions, o.actions)
        np.testing.assert_array_equal(m.rewards, o.rewards)
        if state_name.endswith("-pixels"):
            np.testing.assert_array_equal(m.observations["pixels"], o.observations)
        else:
            np.testing.assert_array_equal(m.observations["state"], o.observations)
    ds = load_dataset(f"minari:{dataset_id}")
    width = int(np.prod(FRAME))
    assert ds.is_image and ds.proprio_dim == space["state"].shape[0]
    assert ds.observation_parts == [["pixels", width, "image"], ["state", ds.proprio_dim, "proprio"]]
    np.testing.assert_array_equal(ds.proprio[0], _episodes(mixed)[0].observations["state"][0].astype(np.float32))
    env = mixed.recover_environment(eval_env=True)
    try:
        assert env.spec.id.endswith("-PixelsState-v0") and env.observation_space == space
        obs, _ = env.reset(seed=0)
        frames, proprio = split_flat_observation(flatten_observation(space, obs), ds.observation_parts)
        np.testing.assert_array_equal(frames.reshape(FRAME), obs["pixels"])
        np.testing.assert_array_equal(proprio, obs["state"].astype(np.float32))
    finally:
        close_env(env)


def test_size_option_reaches_the_eval_env() -> None:
    dataset = _load("maze2d-umaze-pixels", "tst/px-umaze-48", steps=40, size=48)
    assert dataset.observation_space.shape == (48, 48, 3)
    assert _episodes(dataset)[0].observations.shape == (41, 48, 48, 3)
    env = dataset.recover_environment(eval_env=True)
    try:
        assert env.reset(seed=0)[0].shape == (48, 48, 3)
    finally:
        close_env(env)


def test_cli_make_shows_progress_with_rate_and_eta() -> None:
    from tests.conftest import run_qtkit

    result = run_qtkit("data", "make", "maze2d-umaze-pixels", "--steps", "300", "--opt", "ref_episodes=2",
                       "--id", "tst/px-cli")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rendering" in result.stderr and "step/s" in result.stderr
    assert "<" in result.stderr  # tqdm's elapsed<remaining
    assert minari.load_dataset("tst/px-cli-v0").total_steps == 300
