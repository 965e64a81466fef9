"""Loading: Minari (Box and Dict observations), D4RL-style HDF5 and npz files, statistics, scores."""

from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qtkit.backups.functional import discounted_returns
from qtkit.data import (
    Episode,
    TrajectoryDataset,
    flatten_observation,
    load_dataset,
    normalized_score,
)

PENDULUM_ID = "qtkit-test/pendulum-v0"
MAZE_ID = "qtkit-test/umaze-v0"


# ----------------------------------------------------------------------------------------- helpers
def minari_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the conftest points MINARI_DATASETS_PATH at (same for the whole session)."""
    return tmp_path_factory.getbasetemp() / "minari"


def random_episode(rng: np.random.Generator, T: int, obs_dim: int, act_dim: int, terminal: bool) -> dict[str, Any]:
    return {
        "observations": rng.normal(size=(T + 1, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(T, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=T),
        "terminations": np.r_[np.zeros(T - 1, bool), terminal],
        "truncations": np.r_[np.zeros(T - 1, bool), not terminal],
    }


def make_minari_datasets(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Write a Pendulum (Box) and a PointMaze (Dict) Minari dataset with minari's own API."""
    import gymnasium as gym
    import gymnasium_robotics
    import minari
    from minari.data_collector import EpisodeBuffer

    episodes: dict[str, list[dict[str, Any]]] = {}
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        local = minari.list_local_datasets()
        rng = np.random.default_rng(0)
        eps = [random_episode(rng, T, 3, 1, terminal) for T, terminal in ((5, False), (9, True), (3, False))]
        for ep in eps:
            ep["actions"] = ep["actions"] * 2.0  # Pendulum's actions are in [-2, 2]
        episodes[PENDULUM_ID] = eps
        if PENDULUM_ID not in local:
            buffers = [EpisodeBuffer(id=i, observations=e["observations"], actions=e["actions"],
                                     rewards=list(e["rewards"]), terminations=list(e["terminations"]),
                                     truncations=list(e["truncations"])) for i, e in enumerate(eps)]
            minari.create_dataset_from_buffers(
                PENDULUM_ID, buffers, env="Pendulum-v1", data_format="hdf5", ref_min_score=-1000.0,
                ref_max_score=0.0, author="qtkit", author_email="qtkit@example.com", code_permalink="none",
                algorithm_name="random", description="test",
            )
        gym.register_envs(gymnasium_robotics)
        maze_eps = []
        for T in (4, 6):
            obs = {"observation": rng.normal(size=(T + 1, 4)), "achieved_goal": rng.normal(size=(T + 1, 2)),
                   "desired_goal": rng.normal(size=(T + 1, 2))}
            maze_eps.append({"observations": obs, "actions": rng.uniform(-1, 1, size=(T, 2)),
                             "rewards": rng.normal(size=T), "terminations": np.zeros(T, bool),
                             "truncations": np.r_[np.zeros(T - 1, bool), True]})
        episodes[MAZE_ID] = maze_eps
        if MAZE_ID not in local:
            env = gym.make("PointMaze_UMaze-v3")
            buffers = [EpisodeBuffer(id=i, observations=e["observations"], actions=e["actions"],
                                     rewards=list(e["rewards"]), terminations=list(e["terminations"]),
                                     truncations=list(e["truncations"])) for i, e in enumerate(maze_eps)]
            minari.create_dataset_from_buffers(MAZE_ID, buffers, env=env, data_format="hdf5")
            env.close()
    return episodes


@pytest.fixture(scope="module")
def minari_episodes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return make_minari_datasets(minari_root(tmp_path_factory))


def fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under ``root`` (or of the file ``root``)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files}


def write_d4rl(path: Path, rows: dict[str, np.ndarray], attrs: dict[str, Any] | None = None) -> Path:
    if path.suffix == ".npz":
        np.savez(path, **rows, **{k: np.asarray(v) for k, v in (attrs or {}).items()})
        return path
    import h5py

    with h5py.File(path, "w") as f:
        for key, value in rows.items():
            f.create_dataset(key, data=value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        f.create_group("infos").create_dataset("qpos", data=np.zeros((len(rows["rewards"]), 2)))
    return path


def d4rl_rows(n_obs: int = 3) -> dict[str, np.ndarray]:
    """13 rows: episode A (rows 0-3, terminal), B (4-8, time-out), C (9, one-row time-out), D (10-12, no flag)."""
    rng = np.random.default_rng(1)
    n = 13
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[3] = True
    timeouts[8] = True
    timeouts[9] = True
    obs = rng.normal(size=(n, n_obs)).astype(np.float32)
    return {
        "observations": obs,
        "next_observations": rng.normal(size=(n, n_obs)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


# ------------------------------------------------------------------------------------------ minari
def test_minari_box_dataset_matches_buffers(minari_episodes: dict[str, list[dict[str, Any]]]) -> None:
    ds = load_dataset(f"minari:{PENDULUM_ID}")
    eps = minari_episodes[PENDULUM_ID]
    assert isinstance(ds, TrajectoryDataset)
    assert len(ds) == 3 and ds.num_steps == 17
    assert ds.obs_dim == 3 and ds.act_dim == 1
    np.testing.assert_array_equal(ds.action_low, [-2.0])
    np.testing.assert_array_equal(ds.action_high, [2.0])
    assert ds.action_low.dtype.kind == "f"
    for i, (mine, ref) in enumerate(zip(ds, eps)):
        assert isinstance(mine, Episode) and mine.id == i
        np.testing.assert_allclose(mine.observations, ref["observations"], rtol=1e-6)
        np.testing.assert_allclose(mine.actions, ref["actions"], rtol=1e-6)
        np.testing.assert_allclose(mine.rewards, ref["rewards"], rtol=1e-6)
        np.testing.assert_array_equal(mine.terminations, ref["terminations"])
        np.testing.assert_array_equal(mine.truncations, ref["truncations"])
    md = ds.metadata
    assert md["source"] == "minari" and md["dataset_id"] == PENDULUM_ID
    assert md["ref_min_score"] == -1000.0 and md["ref_max_score"] == 0.0
    assert md["env_id"] == "Pendulum-v1" and "Pendulum-v1" in md["env_spec"]
    assert normalized_score(ds, -500.0) == pytest.approx(50.0)
    np.testing.assert_allclose(ds.normalized_score(np.array([-1000.0, 0.0])), [0.0, 100.0])


def test_minari_id_without_version_picks_the_local_one(minari_episodes: Any) -> None:
    assert load_dataset("minari:qtkit-test/pendulum").metadata["dataset_id"] == PENDULUM_ID


def test_minari_make_env_recovers_the_eval_env(minari_episodes: Any) -> None:
    ds = load_dataset(f"minari:{PENDULUM_ID}")
    env = ds.make_env()
    try:
        assert env.spec.id == "Pendulum-v1"
        obs, _ = env.reset(seed=0)
        assert ds.flatten_observation(obs).shape == (ds.obs_dim,)
    finally:
        env.close()


def test_minari_dict_observations_are_flattened_in_gymnasium_order(minari_episodes: Any) -> None:
    import gymnasium as gym

    ds = load_dataset(f"minari:{MAZE_ID}")
    assert list(ds.observation_space.spaces) == ["achieved_goal", "desired_goal", "observation"]
    assert ds.obs_dim == 8
    ref = minari_episodes[MAZE_ID][0]["observations"]
    for t in range(3):
        single = {k: v[t] for k, v in ref.items()}
        expected = gym.spaces.flatten(ds.observation_space, single)
        np.testing.assert_allclose(ds.episode(0).observations[t], expected, rtol=1e-6)
        np.testing.assert_allclose(ds.flatten_observation(single), expected, rtol=1e-6)
    # a batch (a vector env's dict of [n, ...] arrays) flattens row by row the same way
    batch = {k: v[:3] for k, v in ref.items()}
    np.testing.assert_allclose(ds.flatten_observation(batch), ds.episode(0).observations[:3], rtol=1e-6)
    np.testing.assert_allclose(flatten_observation(ds.observation_space, batch), ds.flatten_observation(batch))


def test_flatten_matches_a_real_vector_env(minari_episodes: Any) -> None:
    import gymnasium as gym

    ds = load_dataset(f"minari:{MAZE_ID}")
    envs = gym.vector.SyncVectorEnv([ds.make_env, ds.make_env])
    try:
        obs, _ = envs.reset(seed=3)
        flat = ds.flatten_observation(obs)
        assert flat.shape == (2, 8) and flat.dtype == np.float32
        for i in range(2):
            single = {k: v[i] for k, v in obs.items()}
            np.testing.assert_allclose(flat[i], gym.spaces.flatten(envs.single_observation_space, single), rtol=1e-6)
    finally:
        envs.close()


def test_minari_load_leaves_the_files_unchanged(minari_episodes: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = minari_root(tmp_path_factory) / PENDULUM_ID
    before = fingerprint(folder)
    assert before
    load_dataset(f"minari:{PENDULUM_ID}")
    assert fingerprint(folder) == before


# -------------------------------------------------------------------------------------- flat files
@pytest.mark.parametrize("suffix", [".hdf5", ".npz"])
def test_d4rl_file_with_next_observations(tmp_path: Path, suffix: str) -> None:
    rows = d4rl_rows()
    path = write_d4rl(tmp_path / f"hopper_medium-v2{suffix}", rows,
                      {"ref_min_score": -20.0, "ref_max_score": 3000.0, "env_id": "Hopper-v5"})
    before = fingerprint(path)
    ds = load_dataset(path)
    assert fingerprint(path) == before
    np.testing.assert_array_equal(ds.episode_lengths, [4, 5, 1, 3])
    obs, nxt = rows["observations"], rows["next_observations"]
    for ep, (a, b) in zip(ds, [(0, 3), (4, 8), (9, 9), (10, 12)]):
        np.testing.assert_array_equal(ep.observations[:-1], obs[a: b + 1])
        np.testing.assert_array_equal(ep.observations[-1], nxt[b])
        np.testing.assert_array_equal(ep.actions, rows["actions"][a: b + 1])
        np.testing.assert_array_equal(ep.rewards, rows["rewards"][a: b + 1])
    np.testing.assert_array_equal([e.terminated for e in ds], [True, False, False, False])
    np.testing.assert_array_equal([bool(e.truncations[-1]) for e in ds], [False, True, True, True])
    md = ds.metadata
    assert md["ref_min_score"] == -20.0 and md["ref_max_score"] == 3000.0 and md["env_id"] == "Hopper-v5"
    assert md["source"] == suffix[1:] and md["path"] == str(path) and md["dataset_id"] == "hopper_medium-v2"
    # D4RL actions in [-1, 1] -> Box(-1, 1)
    np.testing.assert_array_equal(ds.action_low, [-1, -1])
    np.testing.assert_array_equal(ds.action_high, [1, 1])


@pytest.mark.parametrize("suffix", [".hdf5", ".npz"])
def test_d4rl_file_without_next_observations(tmp_path: Path, suffix: str) -> None:
    rows = d4rl_rows()
    del rows["next_observations"]
    ds = load_dataset(write_d4rl(tmp_path / f"data{suffix}", rows))
    obs = rows["observations"]
    # A: terminal, keeps its 4 steps (final obs = copy of the last); B: time-out, drops its last
    # transition; C: a one-row time-out, dropped; D: trailing, drops its last transition.
    np.testing.assert_array_equal(ds.episode_lengths, [4, 4, 2])
    a, b, d = ds
    np.testing.assert_array_equal(a.observations, np.concatenate([obs[0:4], obs[3:4]]))
    np.testing.assert_array_equal(a.rewards, rows["rewards"][0:4])
    assert a.terminated and not a.truncations[-1]
    np.testing.assert_array_equal(b.observations, obs[4:9])
    np.testing.assert_array_equal(b.actions, rows["actions"][4:8])
    assert not b.terminated and b.truncations[-1]
    np.testing.assert_array_equal(d.observations, obs[10:13])
    np.testing.assert_array_equal(d.rewards, rows["rewards"][10:12])
    assert d.truncations[-1]
    assert ds.metadata["dropped_episodes"] == 1
    assert "dropped" in ds.metadata["final_observation"]


def test_load_overrides_and_passthrough(tmp_path: Path) -> None:
    path = write_d4rl(tmp_path / "x.hdf5", d4rl_rows())
    ds = load_dataset(path, gamma=0.5, ref_min_score=0, ref_max_score=10, env_id="Hopper-v5",
                      action_low=-2.0, action_high=[2.0, 3.0])
    assert ds.gamma == 0.5 and ds.ref_min_score == 0.0 and ds.ref_max_score == 10.0 and ds.env_id == "Hopper-v5"
    np.testing.assert_array_equal(ds.action_low, [-2, -2])
    np.testing.assert_array_equal(ds.action_high, [2, 3])
    assert load_dataset(ds) is ds
    other = load_dataset(ds, gamma=0.9)
    assert other is not ds and other.gamma == 0.9 and ds.gamma == 0.5
    assert not np.allclose(other.returns, ds.returns)
    np.testing.assert_array_equal(other.rtg, ds.rtg)


def test_npz_round_trip_is_exact(tmp_path: Path) -> None:
    import gymnasium as gym

    rng = np.random.default_rng(2)
    space = gym.spaces.Dict({"b": gym.spaces.Box(-np.inf, np.inf, (2,)), "a": gym.spaces.Box(-np.inf, np.inf, (1,))})
    eps = []
    for T, terminal in ((3, True), (6, False), (1, False)):
        ep = random_episode(rng, T, 3, 2, terminal)
        ep["observations"] = {"a": ep["observations"][:, :1], "b": ep["observations"][:, 1:]}
        ep["id"] = 10 + T
        eps.append(ep)
    ds = TrajectoryDataset.from_episodes(
        eps, observation_space=space, metadata={"dataset_id": "mine", "ref_min_score": 1.0, "ref_max_score": 2.0,
                                                "env_id": "Pendulum-v1"}, gamma=0.9,
    )
    path = ds.to_npz(tmp_path / "mine.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["mine.npz"]  # no temporary file left behind
    back = load_dataset(path)
    assert back.gamma == 0.9 and back.name == "mine"
    assert back.ref_min_score == 1.0 and back.ref_max_score == 2.0 and back.env_id == "Pendulum-v1"
    assert list(back.observation_space.spaces) == ["a", "b"]
    np.testing.assert_array_equal(back.episode_ids, [13, 16, 11])
    for key in ("observations", "actions", "rewards", "terminations", "truncations", "rtg", "returns",
                "timesteps", "obs_mean", "obs_std", "action_low", "action_high", "episode_lengths"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ds, key), err_msg=key)
    # the npz holds the D4RL keys too
    with np.load(path) as z:
        assert {"observations", "next_observations", "actions", "rewards", "terminals", "timeouts"} <= set(z.files)
    # overwriting is atomic and works
    ds.with_gamma(0.5).to_npz(path)
    assert load_dataset(path).gamma == 0.5


def test_npz_round_trip_through_hdf5_minari(minari_episodes: Any, tmp_path: Path) -> None:
    ds = load_dataset(f"minari:{MAZE_ID}")
    back = load_dataset(ds.to_npz(tmp_path / "maze.npz"))
    np.testing.assert_array_equal(back.observations, ds.observations)
    assert list(back.observation_space.spaces) == list(ds.observation_space.spaces)
    assert back.metadata["env_spec"] == ds.metadata["env_spec"]


# -------------------------------------------------------------------------------------- statistics
def test_statistics_are_computed_once_and_right() -> None:
    rng = np.random.default_rng(3)
    eps = [random_episode(rng, T, 4, 2, terminal) for T, terminal in ((7, True), (1, False), (12, False))]
    ds = TrajectoryDataset.from_episodes(eps, gamma=0.9)
    step_obs = np.concatenate([e["observations"][:-1] for e in eps]).astype(np.float64)
    np.testing.assert_allclose(ds.obs_mean, step_obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.obs_std, step_obs.std(0) + 1e-6, rtol=1e-5)
    for i, e in enumerate(eps):
        a, b = ds.episode_offsets[i], ds.episode_offsets[i + 1]
        r = e["rewards"]
        np.testing.assert_allclose(ds.rtg[a:b], np.cumsum(r[::-1])[::-1], rtol=1e-5, atol=1e-5)
        g = discounted_returns(torch.tensor(r)[None], torch.tensor(e["terminations"])[None],
                               torch.ones(1, len(r), dtype=torch.bool), 0.9)[0].numpy()
        np.testing.assert_allclose(ds.returns[a:b], g, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(ds.timesteps[a:b], np.arange(len(r)))
        assert ds.episode_returns[i] == pytest.approx(r.sum())
    with pytest.raises(ValueError):
        ds.rewards[0] = 1.0  # the arrays are read-only


def test_chunked_discounted_returns_match_one_chunk() -> None:
    from qtkit.data.statistics import flat_discounted_returns

    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 40, size=30)
    offsets = np.r_[0, np.cumsum(lengths)]
    r = rng.normal(size=offsets[-1])
    term = np.zeros(offsets[-1], bool)
    term[offsets[1:] - 1] = rng.random(30) < 0.5
    full = flat_discounted_returns(r, term, lengths, offsets, 0.95)
    small = flat_discounted_returns(r, term, lengths, offsets, 0.95, max_elements=50)
    np.testing.assert_allclose(small, full, rtol=1e-12)


def test_from_episodes_accepts_episode_objects_and_aliases() -> None:
    rng = np.random.default_rng(5)
    e = random_episode(rng, 4, 2, 1, True)
    ep = Episode(e["observations"], e["actions"], e["rewards"], e["terminations"], e["truncations"], id=7)
    alias = {"observations": e["observations"], "actions": e["actions"][:, 0], "rewards": e["rewards"][:, None],
             "terminals": e["terminations"]}
    ds = TrajectoryDataset.from_episodes([ep, alias])
    assert ds.num_episodes == 2 and ds.act_dim == 1
    assert ds.episode_ids.tolist() == [7, 1]
    assert ds.episode(1).terminated and ds.episode(-1).terminated
    no_flags = TrajectoryDataset.from_episodes([{k: e[k] for k in ("observations", "actions", "rewards")}])
    assert no_flags.truncations.tolist() == [False, False, False, True]  # a cut episode is truncated
    assert "TrajectoryDataset(" in repr(ds)


def test_action_bounds_cover_the_data() -> None:
    rng = np.random.default_rng(6)
    e = random_episode(rng, 5, 2, 2, False)
    e["actions"][:, 1] *= 3.0
    e["actions"][0, 1] = 2.5
    ds = TrajectoryDataset.from_episodes([e])
    np.testing.assert_array_equal(ds.action_low, [-1, min(-1, e["actions"][:, 1].min())])
    np.testing.assert_array_equal(ds.action_high, [1, max(1, e["actions"][:, 1].max())])


# ---------------------------------------------------------------------------------------- packaging
def test_importing_qtkit_data_stays_light() -> None:
    """Re-import qtkit.data (in this process: no second torch import) with minari, gymnasium and h5py blocked."""
    import importlib
    import importlib.abc

    import qtkit

    heavy = ("minari", "gymnasium", "h5py", "qtkit.data.makers")

    def is_heavy(name: str) -> bool:
        return any(name == h or name.startswith(h + ".") for h in heavy)

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if is_heavy(name):
                raise ImportError(f"importing qtkit.data imported {name} at module level")

    ours = [k for k in sys.modules if k == "qtkit.data" or k.startswith("qtkit.data.") or is_heavy(k)]
    saved = {k: sys.modules.pop(k) for k in ours}
    blocker = Blocker()
    sys.meta_path.insert(0, blocker)
    try:
        fresh = importlib.import_module("qtkit.data")
        assert hasattr(fresh, "load_dataset") and hasattr(fresh, "TrajectoryDataset")
        assert not [k for k in sys.modules if is_heavy(k)]
    finally:
        sys.meta_path.remove(blocker)
        for k in [k for k in sys.modules if k == "qtkit.data" or k.startswith("qtkit.data.") or is_heavy(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        if "qtkit.data" in saved:
            qtkit.data = saved["qtkit.data"]


def test_makers_are_re_exported_lazily() -> None:
    import qtkit.data

    with pytest.raises(AttributeError):
        qtkit.data.no_such_thing  # noqa: B018
    from qtkit.data import makers

    assert qtkit.data.make_dataset is makers.make_dataset
    assert qtkit.data.list_makers is makers.list_makers
