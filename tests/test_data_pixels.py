"""Image observations end to end: uint8 [H, W, C] frames in datasets, windows, npz/HDF5/Minari files, lazy reads."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qtkit.data import TrajectoryDataset, load_dataset
from qtkit.data.frames import LazyFrames
from qtkit.errors import DataError

SHAPE = (6, 5, 3)


def image_arrays(lengths: list[int], shape: tuple[int, ...] = SHAPE, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    N, E = sum(lengths), len(lengths)
    term = np.zeros(N, dtype=bool)
    term[np.cumsum(lengths)[0] - 1] = True  # the first episode terminates, the others are cut
    return {
        "observations": rng.integers(0, 256, (N + E, *shape), dtype=np.uint8),
        "actions": rng.uniform(-1, 1, (N, 2)).astype(np.float32),
        "rewards": rng.normal(size=N).astype(np.float32),
        "terminations": term,
        "truncations": np.zeros(N, dtype=bool),
        "episode_lengths": np.asarray(lengths),
    }


def image_dataset(lengths: list[int] = (4, 7, 2), **kw: Any) -> TrajectoryDataset:
    a = image_arrays(list(lengths), **kw)
    return TrajectoryDataset(a["observations"], a["actions"], a["rewards"], a["terminations"], a["truncations"],
                             a["episode_lengths"])


def assert_same_batch(a: Any, b: Any) -> None:
    for key, value in a.as_dict().items():
        other = getattr(b, key)
        assert value.dtype == other.dtype, key
        assert torch.equal(value, other), key


# ------------------------------------------------------------------------------------------ memory
def test_image_dataset_keeps_uint8_frames_without_a_copy() -> None:
    a = image_arrays([4, 7, 2])
    ds = TrajectoryDataset(a["observations"], a["actions"], a["rewards"], a["terminations"], a["truncations"],
                           a["episode_lengths"])
    assert ds.is_image and ds.obs_shape == SHAPE and ds.obs_dim == 90 and not ds.is_lazy
    assert ds.observations.dtype == np.uint8 and ds.observations.shape == (13 + 3, *SHAPE)
    assert np.shares_memory(ds.observations, a["observations"])  # no float copy, no copy at all
    assert ds.obs_mean.shape == (90,) and not ds.obs_mean.any() and (ds.obs_std == 1).all()
    ep = ds.episode(1)
    np.testing.assert_array_equal(ep.observations, a["observations"][5:13])
    # an image Box space gives the same (flat [n, H*W*C] frames are reshaped to it)
    from gymnasium import spaces

    box = spaces.Box(0, 255, SHAPE, np.uint8)
    flat = a["observations"].reshape(16, -1)
    ds2 = TrajectoryDataset(flat, a["actions"], a["rewards"], a["terminations"], a["truncations"],
                            a["episode_lengths"], observation_space=box)
    assert ds2.obs_shape == SHAPE
    np.testing.assert_array_equal(ds2.observations, a["observations"])
    assert ds2.prepare_observation({"pixels": a["observations"][:2]}).dtype == np.uint8


@pytest.mark.parametrize("scheme", ["uniform", "reference", "inside"])
def test_image_windows_are_uint8_with_zero_padding(scheme: str) -> None:
    ds = image_dataset()
    frames = np.asarray(ds.observations)
    b = ds.sample_windows(32, 5, generator=0, scheme=scheme)
    assert b.observations.shape == (32, 5, *SHAPE) and b.observations.dtype == torch.uint8
    assert b.next_observations.shape == (32, 5, *SHAPE) and b.next_observations.dtype == torch.uint8
    assert b.actions.dtype == torch.float32
    mask = b.mask.numpy()
    assert not b.observations.numpy()[~mask].any() and not b.next_observations.numpy()[~mask].any()
    offsets = ds.episode_offsets
    # each valid position holds a frame of step t of some episode; its next observation is that episode's o_{t+1}
    for i in range(32):
        for k in np.flatnonzero(mask[i]):
            t = int(b.timesteps[i, k])
            cands = [e for e in range(ds.num_episodes) if t < ds.episode_lengths[e]
                     and np.array_equal(frames[offsets[e] + e + t], b.observations[i, k].numpy())]
            assert cands
            e = cands[0]
            np.testing.assert_array_equal(b.next_observations[i, k].numpy(), frames[offsets[e] + e + t + 1])
    moved = b.to("cpu")
    assert moved.observations.dtype == torch.uint8


def test_vector_windows_unchanged_by_image_support() -> None:
    a = image_arrays([4, 7, 2])
    obs = a["observations"].reshape(16, -1)[:, :3].astype(np.float32)
    ds = TrajectoryDataset(obs, a["actions"], a["rewards"], a["terminations"], a["truncations"], a["episode_lengths"])
    assert not ds.is_image and ds.obs_shape == (3,)
    b = ds.sample_windows(8, 3, generator=1)
    assert b.observations.dtype == torch.float32 and b.observations.shape == (8, 3, 3)


# ------------------------------------------------------------------------------------------ errors
def test_bad_image_data_is_a_clear_data_error() -> None:
    from gymnasium import spaces

    a = image_arrays([3, 2])
    box = spaces.Box(0, 255, SHAPE, np.uint8)

    def build(obs: Any, space: Any = box) -> TrajectoryDataset:
        return TrajectoryDataset(obs, a["actions"], a["rewards"], a["terminations"], a["truncations"],
                                 a["episode_lengths"], observation_space=space)

    floats = a["observations"].astype(np.float32)
    floats[3, 1, 1, 0] = 300.0
    with pytest.raises(DataError, match=r"uint8 values in \[0, 255\].*300.*row 3"):
        build(floats)
    with pytest.raises(DataError, match=r"floats in \[0, 1\].*\* 255"):
        build(a["observations"].astype(np.float32) / 255.0)
    # whole numbers in [0, 255] of another dtype are accepted (converted to uint8)
    assert build(a["observations"].astype(np.int64)).observations.dtype == np.uint8
    with pytest.raises(DataError, match=r"shape \(7, 6, 5\).*image \(6, 5, 3\)"):
        build(a["observations"][..., 0])
    with pytest.raises(DataError, match=r"rank 3.*channel axis"):
        from qtkit.data.validation import as_frames

        as_frames(a["observations"][..., 0], None, "")
    # a Dict of pixels and a state: the frames and a proprioceptive vector; two images: said clearly
    mixed = spaces.Dict({"pixels": box, "state": spaces.Box(-1, 1, (2,), np.float32)})
    eps = [{"observations": {"pixels": a["observations"][:4], "state": np.zeros((4, 2), np.float32)},
            "actions": a["actions"][:3], "rewards": a["rewards"][:3]}]
    ds = TrajectoryDataset.from_episodes(eps, observation_space=mixed, observation_key="pixels")
    assert ds.obs_shape == SHAPE and ds.metadata["observation_key"] == "pixels" and ds.proprio_dim == 2
    assert TrajectoryDataset.from_episodes(eps, observation_space=mixed, proprio=False).proprio is None
    two = spaces.Dict({"left": box, "pixels": box})
    eps2 = [{"observations": {"pixels": a["observations"][:4], "left": a["observations"][:4]},
             "actions": a["actions"][:3], "rewards": a["rewards"][:3]}]
    with pytest.raises(DataError, match=r"two image parts \('pixels' and 'left'\)"):
        TrajectoryDataset.from_episodes(eps2, observation_space=two)
    short = [{**eps[0], "observations": {**eps[0]["observations"], "state": np.zeros((3, 2), np.float32)}}]
    with pytest.raises(DataError, match=r"proprioceptive parts \['state'\] have 3 rows but the frames 4"):
        TrajectoryDataset.from_episodes(short, observation_space=mixed)
    with pytest.raises(DataError, match=r"proprio has 3 rows but there are 4 observation rows"):
        TrajectoryDataset(a["observations"][:4], a["actions"][:3], a["rewards"][:3], np.zeros(3, bool),
                          np.zeros(3, bool), [3], observation_space=box, proprio=np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"proprio is for image observations"):
        TrajectoryDataset(np.zeros((4, 2)), a["actions"][:3], a["rewards"][:3], np.zeros(3, bool),
                          np.zeros(3, bool), [3], proprio=np.zeros((4, 2)))
    nan = np.zeros((4, 2), np.float32)
    nan[2, 1] = np.nan
    with pytest.raises(DataError, match=r"\(proprio\).*nan at episode 0, step 2"):
        TrajectoryDataset(a["observations"][:4], a["actions"][:3], a["rewards"][:3], np.zeros(3, bool),
                          np.zeros(3, bool), [3], observation_space=box, proprio=nan)


# ------------------------------------------------------------------------------------------ files
def test_npz_round_trip_keeps_uint8(tmp_path: Path) -> None:
    ds = image_dataset()
    path = ds.to_npz(tmp_path / "img.npz")
    with np.load(path) as z:
        assert z["observations"].dtype == np.uint8 and z["observations"].shape == (13, *SHAPE)
    for lazy in (False, True):
        back = load_dataset(path, lazy=lazy)
        assert back.is_image and back.obs_shape == SHAPE and back.is_lazy == lazy
        assert back.frames_storage == ("memmap" if lazy else "memory")
        np.testing.assert_array_equal(np.asarray(back.observations), ds.observations)
        np.testing.assert_array_equal(back.actions, ds.actions)
        assert_same_batch(back.sample_windows(16, 4, generator=3), ds.sample_windows(16, 4, generator=3))
    packed = ds.to_npz(tmp_path / "packed.npz", compress=True)
    assert load_dataset(packed).is_image
    with pytest.raises(DataError, match="compressed.*compress=False"):
        load_dataset(packed, lazy=True)


def test_d4rl_hdf5_frames_read_lazily(tmp_path: Path) -> None:
    import h5py

    ds = image_dataset()
    with np.load(ds.to_npz(tmp_path / "img.npz")) as z:
        arrays = {k: z[k] for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")}
    for with_next in (True, False):
        path = tmp_path / f"img{with_next}.hdf5"
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                if k != "next_observations" or with_next:
                    f[k] = v
        eager, lazy = load_dataset(path, lazy=False), load_dataset(path, lazy=True)
        assert not eager.is_lazy and lazy.frames_storage == "hdf5"
        assert isinstance(lazy.observations, LazyFrames)
        np.testing.assert_array_equal(np.asarray(lazy.observations), eager.observations)
        assert_same_batch(lazy.sample_windows(16, 4, generator=5), eager.sample_windows(16, 4, generator=5))
        if with_next:
            np.testing.assert_array_equal(eager.observations, ds.observations)


def test_files_carry_the_proprioceptive_vector(tmp_path: Path) -> None:
    """npz (eager and memory-mapped) and D4RL-style HDF5 (eager and lazy, with and without next_observations: the
    vector follows the frames' final-observation rule) give back the dataset's proprio rows and its windows."""
    import h5py

    a = image_arrays([4, 7, 2])
    rng = np.random.default_rng(3)
    proprio = rng.normal(size=(len(a["observations"]), 2)).astype(np.float32)
    ds = TrajectoryDataset(a["observations"], a["actions"], a["rewards"], a["terminations"], a["truncations"],
                           a["episode_lengths"], proprio=proprio)
    path = ds.to_npz(tmp_path / "p.npz")
    for lazy in (False, True):
        back = load_dataset(path, lazy=lazy)
        np.testing.assert_array_equal(back.proprio, proprio)
        assert_same_batch(back.sample_windows(16, 3, generator=1), ds.sample_windows(16, 3, generator=1))
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "qtkit_metadata"}
    for with_next in (True, False):
        h5 = tmp_path / f"p{with_next}.hdf5"
        with h5py.File(h5, "w") as f:
            for k, v in arrays.items():
                if with_next or k not in ("next_observations", "next_proprio"):
                    f[k] = v
        eager, lazy = load_dataset(h5, lazy=False), load_dataset(h5, lazy=True)
        assert lazy.is_lazy and eager.proprio_dim == lazy.proprio_dim == 2
        np.testing.assert_array_equal(lazy.proprio, eager.proprio)
        assert_same_batch(lazy.sample_windows(16, 3, generator=2), eager.sample_windows(16, 3, generator=2))
        if with_next:  # the final observations come from next_*: everything round-trips
            np.testing.assert_array_equal(eager.proprio, proprio)


def _img_env(dict_obs: bool) -> Any:
    import gymnasium as gym
    from gymnasium import spaces

    class Img(gym.Env):
        def __init__(self) -> None:
            box = spaces.Box(0, 255, SHAPE, np.uint8)
            self.observation_space = (spaces.Dict({"pixels": box, "state": spaces.Box(-1, 1, (2,), np.float32)})
                                      if dict_obs else box)
            self.action_space = spaces.Box(-1, 1, (2,), np.float32)

    return Img()


@pytest.mark.parametrize("dict_obs", [False, True])
def test_minari_round_trip_keeps_uint8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dict_obs: bool) -> None:
    minari = pytest.importorskip("minari")
    from qtkit.data.makers.common import episode_buffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    rng = np.random.default_rng(0)
    frames, buffers, states = [], [], []
    for T in (5, 3, 6):
        px = rng.integers(0, 256, (T + 1, *SHAPE), dtype=np.uint8)
        frames.append(px)
        states.append(rng.normal(size=(T + 1, 2)).astype(np.float32))
        obs = {"pixels": px, "state": states[-1]} if dict_obs else px
        buffers.append(episode_buffer(obs, rng.uniform(-1, 1, (T, 2)).astype(np.float32), np.ones(T),
                                      np.zeros(T, bool), np.r_[np.zeros(T - 1, bool), True]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("test/img-v0", buffers, env=_img_env(dict_obs), algorithm_name="r",
                                           data_format="hdf5")
    key = "pixels" if dict_obs else None
    eager = load_dataset("minari:test/img-v0", lazy=False, observation_key=key)
    lazy = load_dataset("minari:test/img-v0", lazy=True, observation_key=key)
    for ds in (eager, lazy):
        assert ds.is_image and ds.obs_shape == SHAPE and ds.observations.dtype == np.uint8
        np.testing.assert_array_equal(np.asarray(ds.observations), np.concatenate(frames))
        assert list(ds.episode_lengths) == [5, 3, 6]
    assert lazy.frames_storage == "hdf5" and not eager.is_lazy
    assert_same_batch(lazy.sample_windows(16, 4, generator=2), eager.sample_windows(16, 4, generator=2))
    if dict_obs:  # the "state" part is the proprioceptive vector, read into memory also when the frames are lazy
        assert eager.metadata["observation_key"] == "pixels" == lazy.metadata["observation_key"]
        for ds in (eager, lazy):
            assert ds.proprio_dim == 2 and ds.observation_parts == [["pixels", int(np.prod(SHAPE)), "image"],
                                                                    ["state", 2, "proprio"]]
            np.testing.assert_array_equal(ds.proprio, np.concatenate(states))
        assert load_dataset("minari:test/img-v0", proprio=False, lazy=True).proprio is None


# ------------------------------------------------------------------------------------------ big
def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _read_bytes() -> int:
    """Bytes this process has read (``rchar`` of /proc/self/io, pread included), or -1 without it."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def test_100k_frames_sample_windows_without_loading_them(tmp_path: Path) -> None:
    """100k frames of 32x32x3 (307 MB) in a D4RL-style HDF5: lazy windows read only their rows."""
    import h5py

    n, shape, T = 100_000, (32, 32, 3), 1000
    path = tmp_path / "big.hdf5"
    rng = np.random.default_rng(0)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[T - 1:: T] = True
    with h5py.File(path, "w") as f:
        obs = f.create_dataset("observations", (n, *shape), dtype=np.uint8)
        for a in range(0, n, 10_000):
            obs[a: a + 10_000] = rng.integers(0, 256, (10_000, *shape), dtype=np.uint8)
        f["actions"] = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        f["rewards"] = rng.normal(size=n).astype(np.float32)
        f["terminals"] = np.zeros(n, dtype=bool)
        f["timeouts"] = timeouts
    frame_bytes = n * int(np.prod(shape))
    load_dataset(path, lazy=True).sample_windows(4, 2, generator=0)  # import and warm up what loading uses
    rss, read = _rss_bytes(), _read_bytes()
    lazy = load_dataset(path, lazy=True)  # below LAZY_FRAMES_BYTES the default would read the frames
    assert lazy.is_lazy and isinstance(lazy.observations, LazyFrames)
    assert isinstance(lazy.observations.sources[0], h5py.Dataset)
    grown = _rss_bytes() - rss
    assert grown < frame_bytes // 10, f"loading: RSS grew by {grown / 1e6:.0f} MB for {frame_bytes / 1e6:.0f} MB of frames"
    sums = []
    for seed in range(10):
        b = lazy.sample_windows(64, 8, generator=seed)
        sums.append(int(b.observations.sum()))
    # 10 batches of 64 windows need 10 * 64 * 9 frames (o_0 .. o_8), 18 MB; HDF5 reads at least its 64 KiB sieve
    # buffer per window: about 42 MB of the 307 MB (RSS is no measure here: the allocator keeps freed buffers)
    got = _read_bytes() - read
    if read >= 0:
        assert got < frame_bytes // 4, f"read {got / 1e6:.0f} MB from the file for {frame_bytes / 1e6:.0f} MB of frames"
    assert b.observations.shape == (64, 8, *shape) and b.observations.dtype == torch.uint8
    # the same windows as the dataset read into memory
    eager = load_dataset(path, lazy=False)
    assert not eager.is_lazy
    for seed in (0, 7, 99):
        assert_same_batch(lazy.sample_windows(64, 8, generator=seed), eager.sample_windows(64, 8, generator=seed))
    assert int(eager.sample_windows(64, 8, generator=4).observations.sum()) == sums[4]


def test_d3rlpy_peers_refuse_image_datasets_before_copying_frames() -> None:
    """Converting frames for d3rlpy would copy them all as float32: a clear error instead (no d3rlpy needed)."""
    from qtkit.errors import ConfigError
    from qtkit.peers.convert import mdp_arrays
    from tests.conftest import pixel_dataset

    with pytest.raises(ConfigError, match=r"image frames \(16, 16, 3\).*qt-gpt-pixels"):
        mdp_arrays(pixel_dataset())
