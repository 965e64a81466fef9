"""Bad input: every error is a DataError/ValueError that names the thing and says how to fix it."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qtkit.data import TrajectoryDataset, load_dataset, normalized_score
from qtkit.errors import DataError

LOCAL_ID = "qtkit-err/pendulum-v0"


def episode(T: int = 4, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(T + 1, obs_dim)),
        "actions": rng.uniform(-1, 1, size=(T, act_dim)),
        "rewards": rng.normal(size=T),
        "terminations": np.r_[np.zeros(T - 1, bool), True],
        "truncations": np.zeros(T, bool),
    }


def d4rl(n: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    timeouts = np.zeros(n, bool)
    timeouts[n // 2 - 1] = True
    return {"observations": rng.normal(size=(n, 3)), "actions": rng.uniform(-1, 1, size=(n, 2)),
            "rewards": rng.normal(size=n), "terminals": np.zeros(n, bool), "timeouts": timeouts}


def write(path: Path, rows: dict[str, np.ndarray]) -> Path:
    if path.suffix == ".npz":
        np.savez(path, **rows)
    else:
        import h5py

        with h5py.File(path, "w") as f:
            for k, v in rows.items():
                f.create_dataset(k, data=v)
    return path


@pytest.fixture(scope="module")
def local_minari(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One local Minari dataset, so that the not-found message has something to list."""
    import minari
    from minari.data_collector import EpisodeBuffer

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.getbasetemp() / "minari"))
        if LOCAL_ID not in minari.list_local_datasets():
            e = episode(obs_dim=3, act_dim=1)
            minari.create_dataset_from_buffers(
                LOCAL_ID, [EpisodeBuffer(id=0, observations=e["observations"], actions=e["actions"][:, :1],
                                         rewards=list(e["rewards"]), terminations=list(e["terminations"]),
                                         truncations=list(e["truncations"]))],
                env="Pendulum-v1", data_format="hdf5",
            )
    return LOCAL_ID


# ------------------------------------------------------------------------------------------ minari
@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE=1", "HF_HUB_OFFLINE unset"])
def test_non_local_minari_id_fails_fast_and_says_how_to_download(
    local_minari: str, offline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not offline:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_dataset("minari:D4RL/door/human-v2")
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"took {elapsed:.2f} s"
    msg = str(info.value)
    assert "D4RL/door/human-v2" in msg and local_minari in msg
    assert "minari download D4RL/door/human-v2" in msg and "download=True" in msg


def test_near_miss_minari_id_is_suggested(local_minari: str) -> None:
    with pytest.raises(DataError, match="Did you mean 'qtkit-err/pendulum-v0'"):
        load_dataset("minari:qtkit-err/pendulumm-v0")
    with pytest.raises(DataError, match="empty Minari dataset id"):
        load_dataset("minari:")


def test_a_minari_id_given_as_a_path_points_to_the_prefix(local_minari: str) -> None:
    with pytest.raises(DataError, match=r"no such file.*load_dataset\('minari:qtkit-err/pendulum-v0'\)"):
        load_dataset(local_minari)


# ------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("key", ["observations", "actions", "rewards"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_name_episode_step_and_key(key: str, bad: float) -> None:
    eps = [episode(seed=0), episode(T=6, seed=1)]
    arr = eps[1][key]
    if arr.ndim == 2:
        arr[3, 1] = bad
    else:
        arr[3] = bad
    with pytest.raises(DataError) as info:
        TrajectoryDataset.from_episodes(eps)
    msg = str(info.value)
    assert key in msg and "episode 1" in msg and "step 3" in msg and str(bad) in msg


def test_non_finite_dict_observation_names_the_dict_key() -> None:
    e = episode(obs_dim=3)
    e["observations"] = {"observation": e["observations"][:, :2], "desired_goal": e["observations"][:, 2:]}
    e["observations"]["observation"][2, 1] = np.nan
    with pytest.raises(DataError, match=r"episode 0, step 2, column 2 = key 'observation'\[1\]"):
        TrajectoryDataset.from_episodes([e])


def test_final_observation_nan_is_called_final() -> None:
    e = episode(T=3)
    e["observations"][3, 0] = np.inf
    with pytest.raises(DataError, match=r"step 3 \(the final observation\)"):
        TrajectoryDataset.from_episodes([e])


@pytest.mark.parametrize("suffix", [".hdf5", ".npz"])
@pytest.mark.parametrize("key", ["observations", "actions", "rewards"])
def test_non_finite_in_a_file_names_row_episode_and_step(tmp_path: Path, suffix: str, key: str) -> None:
    rows = d4rl()
    if rows[key].ndim == 2:
        rows[key][5, 0] = np.nan
    else:
        rows[key][5] = np.nan
    path = write(tmp_path / f"bad{suffix}", rows)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    msg = str(info.value)
    assert str(path) in msg and repr(key) in msg and "row 5" in msg and "episode 1, step 1" in msg


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize(("key", "size"), [("observations", 4), ("actions", 3), ("rewards", 5),
                                           ("terminations", 2), ("observations", 6)])
def test_episode_length_mismatch(key: str, size: int) -> None:
    e = episode(T=4)
    e[key] = e[key][:size] if size <= len(e[key]) else np.concatenate([e[key], e[key][:1]])
    with pytest.raises(DataError, match=rf"episode 0 has mismatched lengths.*{key} {size}"):
        TrajectoryDataset.from_episodes([e])


def test_flat_constructor_length_mismatch_names_the_arrays() -> None:
    with pytest.raises(DataError, match=r"actions has 3 rows \(expected 4\)"):
        TrajectoryDataset(np.zeros((6, 2)), np.zeros((3, 1)), np.zeros(4), np.zeros(4), np.zeros(4), [1, 3])
    with pytest.raises(DataError, match=r"observations has 5 rows \(expected 6\)"):
        TrajectoryDataset(np.zeros((5, 2)), np.zeros((4, 1)), np.zeros(4), np.zeros(4), np.zeros(4), [1, 3])
    with pytest.raises(DataError, match=r"episode 1 .* has 0 steps"):
        TrajectoryDataset(np.zeros((5, 2)), np.zeros((3, 1)), np.zeros(3), np.zeros(3), np.zeros(3), [3, 0])


def test_inconsistent_episodes_and_flags() -> None:
    with pytest.raises(DataError, match="episode 1 has 4 observation and 2 action columns but episode 0 has 3"):
        TrajectoryDataset.from_episodes([episode(obs_dim=3), episode(obs_dim=4)])
    e = episode(T=5)
    e["terminations"] = np.array([False, True, False, False, True])
    with pytest.raises(DataError, match=r"terminations\[1\] of episode 0 .* before the episode's last step"):
        TrajectoryDataset.from_episodes([e])
    with pytest.raises(DataError, match="episode 0 has no 'rewards'"):
        TrajectoryDataset.from_episodes([{"observations": np.zeros((3, 2)), "actions": np.zeros((2, 1))}])


@pytest.mark.parametrize("suffix", [".hdf5", ".npz"])
def test_missing_keys_are_named_with_the_keys_present(tmp_path: Path, suffix: str) -> None:
    rows = d4rl()
    del rows["timeouts"], rows["rewards"]
    path = write(tmp_path / f"partial{suffix}", rows)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    msg = str(info.value)
    assert "'rewards', 'timeouts'" in msg and "keys present: ['actions', 'observations', 'terminals']" in msg


@pytest.mark.parametrize("suffix", [".hdf5", ".npz"])
def test_file_length_mismatch_and_empty_file(tmp_path: Path, suffix: str) -> None:
    rows = d4rl()
    rows["actions"] = rows["actions"][:-1]
    with pytest.raises(DataError, match=r"length mismatch.*actions has 7 rows"):
        load_dataset(write(tmp_path / f"short{suffix}", rows))
    empty = {k: v[:0] for k, v in d4rl().items()}
    with pytest.raises(DataError, match="empty"):
        load_dataset(write(tmp_path / f"empty{suffix}", empty))


def test_empty_datasets() -> None:
    with pytest.raises(DataError, match="no episodes"):
        TrajectoryDataset.from_episodes([])
    with pytest.raises(DataError, match="empty"):
        TrajectoryDataset(np.zeros((0, 2)), np.zeros((0, 1)), [], [], [], np.zeros(0, dtype=int))


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope.hdf5")
    with pytest.raises(DataError, match="is a directory"):
        load_dataset(tmp_path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world")
    with pytest.raises(DataError, match="unknown file type"):
        load_dataset(junk)
    fake = tmp_path / "fake.hdf5"
    fake.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="cannot open as HDF5"):
        load_dataset(fake)
    with pytest.raises(TypeError, match="load_dataset takes"):
        load_dataset(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ windows
def test_window_arguments_are_checked() -> None:
    ds = TrajectoryDataset.from_episodes([episode()])
    for K in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="K"):
            ds.sample_windows(4, K, 0)
    for batch_size in (0, -3, 1.5):
        with pytest.raises(ValueError, match="batch_size"):
            ds.sample_windows(batch_size, 5, 0)
    with pytest.raises(ValueError, match="rtg_scale"):
        ds.sample_windows(4, 5, 0, rtg_scale=0.0)
    with pytest.raises(ValueError, match="unknown window scheme 'middle'"):
        ds.sample_windows(4, 5, 0, scheme="middle")
    with pytest.raises(TypeError, match="generator must be"):
        ds.sample_windows(4, 5, "seed")
    with pytest.raises(ValueError, match="gamma"):
        TrajectoryDataset.from_episodes([episode()], gamma=1.5)


# --------------------------------------------------------------------------------- scores, envs, spaces
def test_normalized_score_without_reference_scores_says_how_to_add_them(tmp_path: Path) -> None:
    ds = load_dataset(write(tmp_path / "hopper_medium-v2.hdf5", d4rl()))
    with pytest.raises(DataError) as info:
        normalized_score(ds, 1000.0)
    msg = str(info.value)
    assert "hopper_medium-v2" in msg and "ref_min_score=" in msg and "load_dataset" in msg
    assert "ref_min_score=-20.272305, ref_max_score=3234.3" in msg  # D4RL's hopper values suggested
    same = load_dataset(ds, ref_min_score=1.0, ref_max_score=1.0)
    with pytest.raises(DataError, match="must be finite and different"):
        normalized_score(same, 1.0)


def test_make_env_without_an_env_is_a_clear_error() -> None:
    ds = TrajectoryDataset.from_episodes([episode()], metadata={"dataset_id": "mine"})
    with pytest.raises(DataError, match=r"dataset mine records no environment.*env_id="):
        ds.make_env()
    bad = load_dataset(ds, env_id="NoSuchEnv-v9")
    with pytest.raises(DataError, match="cannot make env 'NoSuchEnv-v9'"):
        bad.make_env()


def test_spaces_must_agree_with_the_data() -> None:
    import gymnasium as gym

    with pytest.raises(DataError, match=r"episode 0: observation has shape \(5, 3\), which does not end"):
        TrajectoryDataset.from_episodes([episode()], observation_space=gym.spaces.Box(-1, 1, (5,)))
    with pytest.raises(DataError, match="flattens to 5 values but the observations have 3 columns"):
        TrajectoryDataset(np.zeros((3, 3)), np.zeros((2, 1)), np.zeros(2), np.zeros(2), np.zeros(2), [2],
                          observation_space=gym.spaces.Box(-1, 1, (5,)))
    with pytest.raises(DataError, match="not continuous"):
        TrajectoryDataset.from_episodes([episode(act_dim=1)], action_space=gym.spaces.Discrete(3))
    with pytest.raises(DataError, match="finite bounds"):
        TrajectoryDataset.from_episodes([episode()], action_space=gym.spaces.Box(-np.inf, np.inf, (2,)))
    ds = TrajectoryDataset.from_episodes([episode()])
    with pytest.raises(DataError, match="does not end with the space's shape"):
        ds.flatten_observation(np.zeros(4))
    with pytest.raises(DataError, match="is a dict"):
        ds.flatten_observation({"observation": np.zeros(3)})
    space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,)), "b": gym.spaces.Box(-1, 1, (1,))})
    with pytest.raises(DataError, match=r"has no key\(s\) \['b'\]"):
        TrajectoryDataset.from_episodes([{**episode(), "observations": {"a": np.zeros((5, 2))}}],
                                        observation_space=space)
