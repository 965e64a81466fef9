"""qtkit.data.makers and ``qtkit data make/list``: real simulators, real experts, tiny budgets.

The conftest points MINARI_DATASETS_PATH at one temp folder for the whole session, so every test writes
under its own dataset id (namespace ``tst``).
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import minari
import numpy as np
import pytest

from qtkit.data.makers import (
    DatasetExistsError,
    MissingExtraError,
    default_dataset_id,
    get_maker,
    list_makers,
    make_dataset,
)
from qtkit.data.makers.common import close_env
from qtkit.data.makers.pointmaze import WaypointExpert, pointmaze_env_id
from qtkit.data.makers.writer import datasets_root, normalize_dataset_id
from qtkit.errors import ConfigError, UnknownNameError

FAST = {"progress": False, "ref_episodes": 3}


def _arrays(dataset_id: str) -> list[dict[str, np.ndarray]]:
    out = []
    for ep in minari.load_dataset(dataset_id):
        obs = ep.observations
        flat = {f"obs/{k}": v for k, v in obs.items()} if isinstance(obs, dict) else {"obs": obs}
        out.append({**flat, "actions": ep.actions, "rewards": ep.rewards,
                    "terminations": ep.terminations, "truncations": ep.truncations})
    return out


def _same(a: str, b: str) -> bool:
    ea, eb = _arrays(a), _arrays(b)
    return len(ea) == len(eb) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(ea, eb)
    )


def _leftovers() -> list[Path]:
    return [p for p in datasets_root().iterdir() if p.name.startswith(".qtkit-make-")]


def _check_recover(dataset: minari.MinariDataset) -> None:
    for eval_env in (False, True):
        env = dataset.recover_environment(eval_env=eval_env)
        try:
            env.reset(seed=0)
            env.step(env.action_space.sample())
        finally:
            close_env(env)


# --- the PointMaze expert ----------------------------------------------------------------------------


@pytest.mark.parametrize(("maze", "episodes"), [("umaze", 10), ("medium", 5), ("large", 4)])
def test_pointmaze_expert_reaches_goals_with_noise(maze: str, episodes: int) -> None:
    import gymnasium as gym

    from qtkit.data.makers.pointmaze import DEFAULT_NOISE, _import_robotics

    _import_robotics()
    env_id = pointmaze_env_id(maze, "sparse")
    env = gym.make(env_id, continuing_task=False)  # terminates when the goal is reached
    try:
        expert = WaypointExpert.from_env(env)
        rng = np.random.default_rng(0)
        obs, _ = env.reset(seed=0)
        reached = 0
        for _ in range(episodes):
            done = False
            while not done:
                action = np.clip(expert(obs) + DEFAULT_NOISE * rng.standard_normal(2), -1, 1)
                obs, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
            reached += bool(terminated)
            obs, _ = env.reset()
    finally:
        close_env(env)
    assert reached / episodes >= 0.9, f"{maze}: expert reached {reached}/{episodes} goals"


def test_waypoints_follow_shortest_paths() -> None:
    from gymnasium_robotics.envs.maze.maps import U_MAZE
    from gymnasium_robotics.envs.maze.maze_v4 import Maze

    maze = Maze(U_MAZE, maze_size_scaling=1.0, maze_height=0.4)
    expert = WaypointExpert(maze)
    table = expert.waypoints((3, 1))  # goal: bottom-left of the U; start top-left must go around
    assert table[(1, 1)] == tuple(maze.cell_rowcol_to_xy(np.array([1, 2])))
    assert table[(1, 3)] == tuple(maze.cell_rowcol_to_xy(np.array([2, 3])))
    assert table[(3, 3)] == tuple(maze.cell_rowcol_to_xy(np.array([3, 2])))
    assert expert.waypoints((3, 1)) is table  # BFS once per goal cell
    # PD force points at the waypoint and is clipped to the action box
    fx, fy = expert.act(*maze.cell_rowcol_to_xy(np.array([1, 1])), 0.0, 0.0, *maze.cell_rowcol_to_xy(np.array([3, 1])))
    assert (fx, fy) == (1.0, 0.0)


# --- making PointMaze datasets -------------------------------------------------------------------------


def test_pointmaze_dataset_loads_with_truncated_cuts_and_ref_scores() -> None:
    dataset_id = make_dataset("pointmaze-umaze-sparse", steps=700, seed=0, overwrite=True, **FAST)
    assert dataset_id == default_dataset_id("pointmaze-umaze-sparse") == "qtkit/pointmaze-umaze-sparse-v0"
    dataset = minari.load_dataset(dataset_id)
    assert dataset.total_steps == 700
    episodes = list(dataset)
    assert [len(ep.rewards) for ep in episodes] == [300, 300, 100]  # cut every max_episode_steps
    for ep in episodes:
        assert set(ep.observations) == {"observation", "achieved_goal", "desired_goal"}
        assert ep.observations["observation"].shape == (len(ep.rewards) + 1, 4)
        assert ep.actions.shape == (len(ep.rewards), 2) and np.all(np.abs(ep.actions) <= 1)
        assert not ep.terminations.any()
        assert ep.truncations[-1] and not ep.truncations[:-1].any()
    for a, b in itertools.pairwise(episodes):  # one continuous run: each cut starts where the last ended
        np.testing.assert_array_equal(a.observations["observation"][-1], b.observations["observation"][0])
    assert sum(ep.rewards.sum() for ep in episodes) > 0  # the expert reaches goals

    meta = dataset.storage.metadata
    assert meta["ref_min_score"] < meta["ref_max_score"]
    assert meta["qtkit_maker"]["maker"] == "pointmaze-umaze-sparse" and meta["qtkit_maker"]["seed"] == 0
    assert "uniform-random" in meta["qtkit_maker"]["ref_min_source"]
    assert "waypoint" in meta["description"]
    assert dataset.spec.env_spec.kwargs["reset_target"] is True  # collection env: goals resampled on arrival
    _check_recover(dataset)
    assert not _leftovers()


def test_dense_variant_and_episode_length_option() -> None:
    dataset_id = make_dataset("pointmaze-umaze-dense", steps=250, noise=0.1, dataset_id="tst/dense", episode_length=100,
                              **FAST)
    assert dataset_id == "tst/dense-v0"
    dataset = minari.load_dataset(dataset_id)
    assert [len(ep.rewards) for ep in dataset] == [100, 100, 50]
    rewards = np.concatenate([ep.rewards for ep in dataset])
    assert np.all((rewards > 0) & (rewards <= 1)) and len(np.unique(rewards)) > 2  # exp(-distance)
    assert dataset.spec.env_spec.id.startswith("PointMaze_UMazeDense")
    assert dataset.storage.metadata["qtkit_maker"]["noise"] == 0.1


def test_same_seed_same_data() -> None:
    a = make_dataset("pointmaze-umaze-sparse", steps=400, seed=3, dataset_id="tst/seed-a", **FAST)
    b = make_dataset("pointmaze-umaze-sparse", steps=400, seed=3, dataset_id="tst/seed-b", **FAST)
    c = make_dataset("pointmaze-umaze-sparse", steps=400, seed=4, dataset_id="tst/seed-c", **FAST)
    assert _same(a, b)
    assert not _same(a, c)
    ma, mb = (minari.load_dataset(i).storage.metadata for i in (a, b))
    assert (ma["ref_min_score"], ma["ref_max_score"]) == (mb["ref_min_score"], mb["ref_max_score"])


def test_progress_bar_shows_steps_per_second(capsys: pytest.CaptureFixture[str]) -> None:
    make_dataset("pointmaze-umaze-sparse", steps=1500, dataset_id="tst/progress", progress=True, ref_episodes=2)
    assert "step/s" in capsys.readouterr().err
    make_dataset("pointmaze-umaze-sparse", steps=1500, dataset_id="tst/quiet", progress=False, ref_episodes=2)
    assert "step/s" not in capsys.readouterr().err


# --- safety: no overwrite, no half-written datasets -------------------------------------------------------


def test_no_overwrite_without_flag() -> None:
    dataset_id = make_dataset("pointmaze-umaze-sparse", steps=300, seed=0, dataset_id="tst/keep", **FAST)
    before = _arrays(dataset_id)
    with pytest.raises(DatasetExistsError, match=r"tst/keep-v0.*--overwrite"):
        make_dataset("pointmaze-umaze-sparse", steps=300, seed=1, dataset_id="tst/keep", **FAST)
    after = _arrays(dataset_id)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(before, after) for k in x)
    # exist_ok: keep it and return its id (make demo's "make the dataset if missing")
    assert make_dataset("pointmaze-umaze-sparse", seed=1, dataset_id="tst/keep", exist_ok=True) == dataset_id
    assert _arrays(dataset_id)[0]["actions"].tobytes() == before[0]["actions"].tobytes()
    with pytest.raises(ConfigError, match="only one"):
        make_dataset("pointmaze-umaze-sparse", dataset_id="tst/keep", exist_ok=True, overwrite=True)
    make_dataset("pointmaze-umaze-sparse", steps=300, seed=1, dataset_id="tst/keep", overwrite=True, **FAST)
    assert not np.array_equal(_arrays(dataset_id)[0]["actions"], before[0]["actions"])
    assert minari.load_dataset(dataset_id).storage.metadata["qtkit_maker"]["seed"] == 1
    assert not _leftovers()


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_mid_collection_leaves_nothing(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    calls = {"n": 0}
    act = WaypointExpert.act

    def failing_act(self: WaypointExpert, *args: float) -> tuple[float, float]:
        calls["n"] += 1
        if calls["n"] > 150:
            raise exc
        return act(self, *args)

    monkeypatch.setattr(WaypointExpert, "act", failing_act)
    with pytest.raises(type(exc)):
        make_dataset("pointmaze-umaze-sparse", steps=500, dataset_id="tst/interrupted", **FAST)
    assert calls["n"] > 150
    assert not (datasets_root() / "tst" / "interrupted-v0").exists()
    assert "tst/interrupted-v0" not in minari.list_local_datasets()
    assert not _leftovers()


def test_failure_while_writing_keeps_the_old_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset_id = make_dataset("pointmaze-umaze-sparse", steps=300, seed=0, dataset_id="tst/old", **FAST)
    before = _arrays(dataset_id)
    real = minari.create_dataset_from_buffers

    def half_written(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # the files exist (in the temporary root) ...
        raise OSError("disk full")  # ... and then the write fails

    monkeypatch.setattr(minari, "create_dataset_from_buffers", half_written)
    with pytest.raises(OSError, match="disk full"):
        make_dataset("pointmaze-umaze-sparse", steps=300, seed=1, dataset_id="tst/old", overwrite=True, **FAST)
    with pytest.raises(OSError, match="disk full"):
        make_dataset("pointmaze-umaze-sparse", steps=300, seed=1, dataset_id="tst/never", **FAST)
    assert not (datasets_root() / "tst" / "never-v0").exists()
    after = _arrays(dataset_id)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(before, after) for k in x)
    assert not _leftovers()


# --- bad input -------------------------------------------------------------------------------------------


def test_unknown_maker_lists_makers_and_suggests() -> None:
    with pytest.raises(UnknownNameError, match=r"Did you mean 'pointmaze-umaze-sparse'") as info:
        make_dataset("pointmaze-umaze-sprase")
    assert "hopper-medium-replay" in str(info.value)  # lists the makers


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, r"steps=0 .*>= 1"),
        ({"steps": -5}, r"steps=-5"),
        ({"steps": 2.5}, r"steps=2.5"),
        ({"seed": -1}, r"seed=-1"),
        ({"noise": -0.1}, r"noise=-0.1 .*>= 0"),
        ({"noise": math.nan}, r"noise=nan"),
        ({"episode_lenght": 10}, r"no option 'episode_lenght'. Did you mean 'episode_length'"),
        ({"episode_length": "abc"}, r"episode_length='abc' .*expected int"),
        ({"ref_episodes": 2.5}, r"ref_episodes=2.5 .*expected int"),
        ({"dataset_id": "not a/valid id"}, r"not a valid Minari id"),
        ({"steps": 10, "episode_length": 0, "dataset_id": "tst/never-made"}, r"episode_length=0"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_dataset("pointmaze-umaze-sparse", progress=False, **kwargs)  # type: ignore[arg-type]


def test_noise_for_a_maker_without_noise_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"'hopper-random' takes no noise"):
        make_dataset("hopper-random", steps=10, noise=0.1)


def test_list_makers_and_dataset_ids() -> None:
    names = list_makers()
    for maze in ("umaze", "medium", "large"):
        assert {f"pointmaze-{maze}-sparse", f"pointmaze-{maze}-dense"} <= set(names)
    for task in ("hopper", "halfcheetah", "walker2d"):
        assert {f"{task}-random", f"{task}-medium", f"{task}-medium-replay"} <= set(names)
    assert list_makers("hopper-*") == ["hopper-random", "hopper-random-pixels", "hopper-random-pixels-state",
                                       "hopper-medium-replay", "hopper-medium"]
    assert get_maker("pointmaze-large-dense").default_noise == 0.5
    assert normalize_dataset_id("minari:tst/x") == "tst/x-v0"
    assert normalize_dataset_id("tst/x-v3") == "tst/x-v3"


# --- MuJoCo makers ----------------------------------------------------------------------------------------


def test_hopper_random_dataset() -> None:
    dataset_id = make_dataset("hopper-random", steps=600, seed=0, dataset_id="tst/hopper-random", **FAST)
    dataset = minari.load_dataset(dataset_id)
    assert dataset.total_steps == 600
    episodes = list(dataset)
    assert sum(ep.terminations[-1] for ep in episodes) >= len(episodes) - 1  # random hoppers fall
    assert episodes[-1].terminations[-1] or episodes[-1].truncations[-1]
    for ep in episodes:
        assert ep.observations.shape == (len(ep.rewards) + 1, 11) and ep.actions.shape == (len(ep.rewards), 3)
        assert (ep.terminations | ep.truncations)[-1] and not (ep.terminations | ep.truncations)[:-1].any()
    meta = dataset.storage.metadata
    assert meta["ref_max_score"] == 3234.3 and meta["ref_min_score"] < meta["ref_max_score"]
    assert "D4RL" in meta["qtkit_maker"]["ref_max_source"] and "measured" in meta["qtkit_maker"]["ref_min_source"]
    assert dataset.spec.env_spec.id == "Hopper-v5"
    _check_recover(dataset)
    again = make_dataset("hopper-random", steps=600, seed=0, dataset_id="tst/hopper-random-2", **FAST)
    assert _same(dataset_id, again)


def test_missing_stable_baselines3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # import fails
    with pytest.raises(MissingExtraError, match=r"qtkit\[makers\]"):
        make_dataset("walker2d-medium-replay", steps=10)


def test_sac_makers_tiny_budget() -> None:
    pytest.importorskip("stable_baselines3", reason="stable-baselines3 (the qtkit[makers] extra) is not installed")
    tiny = {"learning_starts": 100, "batch_size": 32, "net_arch": [16, 16], "allow_below_target": True, **FAST}
    replay_id = make_dataset("hopper-medium-replay", steps=250, seed=0, dataset_id="tst/hmr", **tiny)
    replay = minari.load_dataset(replay_id)
    assert replay.total_steps == 250  # every transition of the run (the medium level is far away)
    assert any(ep.terminations[-1] for ep in replay)
    assert replay[replay.total_episodes - 1].truncations[-1] or replay[replay.total_episodes - 1].terminations[-1]
    sac_info = replay.storage.metadata["qtkit_maker"]["sac"]
    assert sac_info["sac_steps"] == 250 and sac_info["reached_target"] is False
    assert "SAC" in replay.storage.metadata["description"]

    medium_id = make_dataset("hopper-medium", steps=300, train_steps=250, seed=0, dataset_id="tst/hm", **tiny)
    medium = minari.load_dataset(medium_id)
    assert medium.total_steps == 300
    assert all(np.all(np.abs(ep.actions) <= 1) for ep in medium)
    meta = medium.storage.metadata
    assert meta["ref_min_score"] < meta["ref_max_score"] == 3234.3
    _check_recover(medium)


# --- the CLI ----------------------------------------------------------------------------------------------


def test_cli_make_and_list() -> None:
    from typer.testing import CliRunner

    from qtkit.data.cli import app

    runner = CliRunner()
    args = ["make", "pointmaze-umaze-dense", "--steps", "300", "--seed", "2", "--noise", "0.2", "--id", "tst/cli",
            "--opt", "ref_episodes=2", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tst/cli-v0" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    kept = runner.invoke(app, [*args, "--exist-ok"])
    assert kept.exit_code == 0 and "tst/cli-v0" in kept.output

    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0, listed.output
    assert "pointmaze-umaze-sparse" in listed.output and "hopper-medium-replay" in listed.output
    assert "tst/cli-v0" in listed.output and "ref " in listed.output

    bad = runner.invoke(app, ["make", "pointmaze-umaze-sprase"])
    assert bad.exit_code == 2 and "Did you mean" in bad.output
    assert runner.invoke(app, ["make", "pointmaze-umaze-sparse", "--steps", "0"]).exit_code == 2
    assert runner.invoke(app, ["make", "pointmaze-umaze-sparse", "--opt", "novalue"]).exit_code == 2
