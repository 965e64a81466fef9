"""D4RL maze2d makers (``maze2d-*``) and their evaluation env ``qtkit/Maze2D-*-v0``: tiny budgets, real physics.

The conftest points MINARI_DATASETS_PATH at one temp folder for the session (monkeypatched per test), so
every test writes under its own dataset id (namespace ``tst``); ``exist_ok`` reuses a dataset between tests.
"""

from __future__ import annotations

import os
import subprocess
import sys

import gymnasium as gym
import minari
import numpy as np
import pytest

from qtkit.data.makers import default_dataset_id, get_maker, list_makers, make_dataset
from qtkit.data.makers.common import close_env
from qtkit.data.makers.maze2d import (
    MAZES,
    Maze2DEnv,
    maze2d_env_id,
    planner_policy,
    register_maze2d_envs,
    target_rewards,
)
from qtkit.data.makers.pointmaze import WaypointExpert, _collect

FAST = {"progress": False, "ref_episodes": 3}
STEPS = 3000  # 10 umaze episodes of 300 steps


def _make(name: str, dataset_id: str, steps: int = STEPS, seed: int = 0, **kwargs: object) -> minari.MinariDataset:
    options = {**FAST, **kwargs}
    return minari.load_dataset(make_dataset(name, steps=steps, seed=seed, dataset_id=dataset_id, exist_ok=True,
                                            **options))


def _target(maze: str) -> np.ndarray:
    env = gym.make(maze2d_env_id(maze, "sparse"))
    try:
        return env.unwrapped.target.copy()
    finally:
        close_env(env)


# --- makers and targets -----------------------------------------------------------------------------------


def test_makers_are_listed_with_d4rl_sizes_and_ids() -> None:
    names = [n for n in list_makers("maze2d-*") if "-pixels" not in n]  # pixel makers: test_data_pixel_makers
    assert set(names) == {f"maze2d-{m}{s}" for m in ("open", "umaze", "medium", "large") for s in ("", "-dense")}
    sizes = {m: get_maker(f"maze2d-{m}").default_steps for m in MAZES}
    assert sizes == {"open": 1_000_000, "umaze": 1_000_000, "medium": 2_000_000, "large": 4_000_000}
    assert get_maker("maze2d-medium-dense").default_noise == 0.5
    assert default_dataset_id("maze2d-umaze") == "qtkit/maze2d-umaze-v0"
    assert {"episode_length", "ref_episodes"} <= set(get_maker("maze2d-umaze").options())


def test_targets_are_d4rl_goal_cells() -> None:
    from gymnasium_robotics.envs.maze import maps

    # the G cells of D4RL's maze strings (d4rl/pointmaze/maze_model.py), same (row, col) in the same layouts
    assert {m: s.target for m, s in MAZES.items()} == {"open": (2, 3), "umaze": (1, 1), "medium": (6, 6),
                                                       "large": (7, 9)}
    open_arena = [[1] * 7, *[[1, 0, 0, 0, 0, 0, 1]] * 3, [1] * 7]
    assert open_arena == maps.OPEN
    for maze, spec in MAZES.items():
        i, j = spec.target
        assert getattr(maps, spec.map_name)[i][j] == 0
        env = gym.make(maze2d_env_id(maze, "dense"))
        try:
            base = env.unwrapped
            assert isinstance(base, Maze2DEnv) and env.spec.max_episode_steps == spec.horizon
            assert np.array_equal(base.target, base.maze.cell_rowcol_to_xy(np.array(spec.target)))  # exact centre
        finally:
            close_env(env)
    assert np.array_equal(_target("umaze"), [-1.0, 1.0])  # top-left cell of the U


# --- the made data ----------------------------------------------------------------------------------------


def test_sparse_data_fixed_target_rewards_truncated_episodes() -> None:
    dataset = _make("maze2d-umaze", "tst/m2d-umaze")
    episodes = list(dataset)
    assert dataset.spec.env_spec.id == dataset._eval_env_spec.id == "qtkit/Maze2D-UMaze-v0"
    assert [len(ep.rewards) for ep in episodes] == [300] * 10  # D4RL's umaze timeout
    target = _target("umaze")
    for k, ep in enumerate(episodes):
        assert ep.observations.shape == (301, 4) and ep.actions.shape == (300, 2)
        assert np.all(np.abs(ep.actions) <= 1)
        assert not ep.terminations.any() and ep.truncations[-1] and not ep.truncations[:-1].any()
        dist = np.linalg.norm(ep.observations[1:, :2] - target, axis=1)
        assert np.array_equal(ep.rewards, (dist <= 0.5).astype(np.float64))  # on the observation after the step
        if k:
            assert np.array_equal(ep.observations[0], episodes[k - 1].observations[-1])  # one continuous run

    # the same run rewarded by PointMaze itself (the planner's moving goals) is different data
    env = gym.make("PointMaze_UMaze-v3", continuing_task=True, reset_target=True, max_episode_steps=300)
    try:
        obs, _, moving_goal_rewards = _collect(env, WaypointExpert.from_env(env), steps=STEPS, seed=0, noise=0.5,
                                               progress=False, desc="")
    finally:
        close_env(env)
    stored = np.concatenate([episodes[0].observations[:1], *[ep.observations[1:] for ep in episodes]])
    assert np.array_equal(stored, obs["observation"])
    rewards = np.concatenate([ep.rewards for ep in episodes])
    assert moving_goal_rewards.sum() > 0
    assert np.any((moving_goal_rewards == 1) & (rewards == 0))  # goals reached away from the target: no reward
    assert rewards.sum() > moving_goal_rewards.sum()  # staying near the target earns reward on every step


def test_dense_data_and_episode_length_option() -> None:
    sparse = _make("maze2d-umaze", "tst/m2d-umaze")
    dense = _make("maze2d-umaze-dense", "tst/m2d-umaze-dense")
    target = _target("umaze")
    for ep_s, ep_d in zip(sparse, dense, strict=True):
        assert np.array_equal(ep_s.observations, ep_d.observations)  # same run, other reward
        dist = np.linalg.norm(ep_d.observations[1:, :2] - target, axis=1)
        np.testing.assert_allclose(ep_d.rewards, np.exp(-dist), rtol=1e-12, atol=0)
        assert np.all((ep_d.rewards > 0) & (ep_d.rewards <= 1))
    assert dense.storage.metadata["qtkit_maker"]["reward"] == "dense"

    cut = _make("maze2d-medium", "tst/m2d-medium-cut", steps=1000, episode_length=400)
    assert [len(ep.rewards) for ep in cut] == [400, 400, 200]
    assert all(ep.truncations[-1] and not ep.terminations.any() for ep in cut)
    assert [len(ep.rewards) for ep in _make("maze2d-open", "tst/m2d-open", steps=400)] == [150, 150, 100]


def test_same_seed_same_arrays() -> None:
    def arrays(ds: minari.MinariDataset) -> list[np.ndarray]:
        return [a for ep in ds for a in (ep.observations, ep.actions, ep.rewards, ep.truncations)]

    a = arrays(_make("maze2d-medium", "tst/m2d-seed-a", steps=700, seed=3))
    b = arrays(_make("maze2d-medium", "tst/m2d-seed-b", steps=700, seed=3))
    c = arrays(_make("maze2d-medium", "tst/m2d-seed-c", steps=700, seed=4))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_stitching_some_episodes_pass_the_target_some_do_not() -> None:
    returns = np.array([ep.rewards.sum() for ep in _make("maze2d-umaze", "tst/m2d-umaze")])
    assert np.any(returns == 0) and np.any(returns > 0), returns


def test_reference_scores_are_measured() -> None:
    meta = _make("maze2d-umaze", "tst/m2d-umaze").storage.metadata
    assert 0 <= meta["ref_min_score"] < meta["ref_max_score"] <= 300
    info = meta["qtkit_maker"]
    assert "measured" in info["ref_min_source"] and "uniform-random" in info["ref_min_source"]
    assert "noise-free" in info["ref_max_source"] and "qtkit/Maze2D-UMaze-v0" in info["ref_max_source"]
    assert info["target_cell"] == [1, 1] and info["episode_length"] == 300 and info["noise"] == 0.5
    assert "fixed target" in meta["description"]


# --- the evaluation env -----------------------------------------------------------------------------------


def test_dataset_evaluates_through_its_own_env() -> None:
    from qtkit.data import load_dataset

    _make("maze2d-umaze-dense", "tst/m2d-umaze-dense")
    dataset = load_dataset("minari:tst/m2d-umaze-dense-v0")
    env = dataset.make_env()
    try:
        assert env.observation_space.shape == (4,) and env.action_space.shape == (2,)
        target = env.unwrapped.target
        rng = np.random.default_rng(0)
        obs, info = env.reset(seed=0)
        assert obs.shape == (4,)
        starts, steps = {info["reset_cell"]}, 0
        while True:
            obs, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
            steps += 1
            assert obs.shape == (4,) and not terminated
            assert reward == pytest.approx(np.exp(-np.linalg.norm(obs[:2] - target)), rel=1e-12)
            if truncated:
                break
        assert steps == 300
        for seed in range(1, 10):
            obs, info = env.reset(seed=seed)
            cell = env.unwrapped.maze.cell_xy_to_rowcol(obs[:2])
            assert tuple(cell) == info["reset_cell"]
            assert np.all(np.abs(obs[:2] - env.unwrapped.maze.cell_rowcol_to_xy(cell)) <= 0.1)
            starts.add(info["reset_cell"])
        assert len(starts) > 2  # uniformly random free start cells
    finally:
        close_env(env)

    mds = minari.load_dataset("tst/m2d-umaze-dense-v0")
    for eval_env in (False, True):
        env = mds.recover_environment(eval_env=eval_env)
        try:
            assert env.spec.id == "qtkit/Maze2D-UMazeDense-v0" and env.observation_space.shape == (4,)
            env.reset(seed=0)
            env.step(env.action_space.sample())
        finally:
            close_env(env)


def test_recover_environment_in_a_fresh_process() -> None:
    _make("maze2d-umaze", "tst/m2d-umaze")
    code = (
        "import minari\n"
        "from qtkit.data import load_dataset\n"
        "ds = minari.load_dataset('tst/m2d-umaze-v0')\n"
        "for env in (ds.recover_environment(), ds.recover_environment(eval_env=True),\n"
        "            load_dataset('minari:tst/m2d-umaze-v0').make_env()):\n"
        "    obs, _ = env.reset(seed=0); obs, r, term, trunc, _ = env.step(env.action_space.sample())\n"
        "    assert obs.shape == (4,) and not term and env.spec.max_episode_steps == 300, env.spec\n"
        "    env.close()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize(("maze", "episodes"), [("open", 10), ("umaze", 10), ("medium", 8), ("large", 5)])
def test_noise_free_planner_reaches_the_target_from_random_starts(maze: str, episodes: int) -> None:
    register_maze2d_envs()
    env = gym.make(maze2d_env_id(maze, "sparse"))
    try:
        base = env.unwrapped
        policy = planner_policy(WaypointExpert(base.maze), base.target)
        reached, obs = 0, env.reset(seed=0)[0]
        for _ in range(episodes):
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy(obs))
                total += reward
                done = terminated or truncated
            reached += total > 0
            obs, _ = env.reset()
    finally:
        close_env(env)
    assert reached / episodes >= 0.8, f"{maze}: the planner reached the target in {reached}/{episodes} episodes"


def test_reward_helper_and_bad_reset_cell() -> None:
    xy = np.array([[-1.0, 1.0], [-1.0, 1.5], [-1.0, 1.5000001], [0.0, 1.0]])
    assert target_rewards(xy, [-1.0, 1.0], "sparse").tolist() == [1.0, 1.0, 0.0, 0.0]
    np.testing.assert_allclose(target_rewards(xy, [-1.0, 1.0], "dense"), np.exp(-np.array([0, 0.5, 0.5000001, 1])))
    env = Maze2DEnv("umaze")
    try:
        obs, info = env.reset(seed=0, options={"reset_cell": (3, 1)})
        assert info["reset_cell"] == (3, 1) and tuple(env.maze.cell_xy_to_rowcol(obs[:2])) == (3, 1)
        with pytest.raises(ValueError, match="not a free cell"):
            env.reset(options={"reset_cell": (2, 1)})
    finally:
        env.close()


# --- the CLI ----------------------------------------------------------------------------------------------


def test_cli_make_and_list() -> None:
    from typer.testing import CliRunner

    from qtkit.data.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["make", "maze2d-umaze", "--steps", "600", "--id", "tst/m2d-cli", "--opt",
                                 "ref_episodes=2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "tst/m2d-cli-v0" in result.output
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0, listed.output
    assert "maze2d-umaze-dense" in listed.output and "maze2d-large" in listed.output and "tst/m2d-cli-v0" in listed.output
