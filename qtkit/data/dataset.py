"""``TrajectoryDataset``: episodes stored flat, statistics computed once, training windows.

Layout (E episodes, N = sum of their lengths T_i steps):

- ``observations [N + E, obs]``: episode i's T_i + 1 observations o_0 .. o_T (the final one kept),
  episodes one after the other; episode i starts at row ``episode_offsets[i] + i``.
- ``actions [N, act]``, ``rewards [N]``, ``terminations [N]``, ``truncations [N]`` and the
  precomputed ``rtg [N]`` (undiscounted return-to-go), ``returns [N]`` (discounted Monte-Carlo
  return with ``gamma``), ``timesteps [N]``: episode i's steps are rows
  ``episode_offsets[i] .. episode_offsets[i+1] - 1``.

Observations are flattened (``qtkit.data.flatten_observation``; Dict spaces in their key order)
and stored as float32, raw (unstandardised); ``obs_mean``/``obs_std`` are there to standardise.
A termination or truncation may only be set on the last step of an episode; an episode whose
last step has neither flag is marked truncated (the data was cut).

Image observations (an observation space ``Box(0, 255, (H, W, C), uint8)``, a Dict with such an image
part chosen by ``observation_key`` (``{"pixels"}`` alone needs none), or observations given as a uint8
array ``[N + E, H, W, C]``) are kept uint8 with their shape: ``observations [N + E, H, W, C]`` uint8,
never copied to floats (a given uint8 array is not copied at all), ``is_image`` True, ``obs_shape`` ``(H,
W, C)``, ``obs_dim`` ``H * W * C``. Windows are uint8 ``[B, K, H, W, C]`` (padding zeros) and stay uint8
on the device: the encoder (``qtkit.encoders``) divides by 255. Images are not standardised:
``obs_mean``/``obs_std`` are zeros/ones ``[H * W * C]`` (no pass over the frames).

Images with a proprioceptive vector (a Dict observation mixing one image with vector parts, e.g.
``{"pixels": uint8 [H, W, C], "state": float [4]}``): the frames are ``observations`` as above and the vector
parts, flattened and concatenated in the Dict's key order, are ``proprio [N + E, P]`` float32 (same rows as
the observations; standardised with ``proprio_mean``/``proprio_std``); ``metadata["observation_parts"]``
records the layout (:func:`qtkit.data.spaces.observation_parts`) so that an env's flattened observation can be
split the same way. Windows carry ``proprio``/``next_proprio`` ``[B, K, P]``; image encoders concatenate it to
their features. ``proprio=False`` (``from_episodes``, ``load_dataset``) keeps the frames only.

Lazy frames (image datasets only): ``qtkit.data.load_dataset(spec, lazy=True)`` leaves the frames in
their file and windows read only the rows they need (``is_lazy``, ``frames_storage``):

- Minari (hdf5 backend): each episode's ``observations`` h5py dataset, the file kept open;
- D4RL-style HDF5: the file's ``observations``/``next_observations`` h5py datasets;
- npz written uncompressed (``to_npz(compress=False)``, the default): the members are memory-mapped
  (a compressed npz cannot be lazy: ``DataError``).

``lazy=None`` (the default) is lazy when the frames exceed ``qtkit.data.loading.LAZY_FRAMES_BYTES`` (2
GiB), ``lazy=False`` reads them into memory; vector data is always read. Actions, rewards, flags and the
statistics are always in memory (small). A lazy dataset holds an open file: it is read-only and
cheap to open, but give each process its own (open it after a fork). ``observations`` is then a
:class:`qtkit.data.frames.LazyFrames` (index it to read rows; ``numpy.asarray`` reads them all, as
``to_npz`` does).

The jobs live in their own modules: input checks in ``qtkit.data.validation``, the precomputed
statistics in ``qtkit.data.statistics``, window sampling in ``qtkit.data.windows``, writing npz in
``qtkit.data.serialization`` (reading in ``qtkit.data.loading``), image frames in memory or in a
file in ``qtkit.data.frames``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qtkit.data import statistics
from qtkit.data.batch import Batch
from qtkit.data.serialization import write_npz
from qtkit.data.spaces import flatten_observation, image_key, image_shape, observation_parts
from qtkit.data.validation import (
    as_1d,
    as_2d,
    as_flags,
    as_frames,
    check_action_space,
    check_episode,
    check_episode_ids,
    check_episode_lengths,
    check_finite,
    check_flags_at_ends,
    check_gamma,
    check_observation_space,
    check_step_arrays,
    get_field,
)
from qtkit.data.windows import sample_windows
from qtkit.errors import DataError

DEFAULT_GAMMA = 0.99

__all__ = ["DEFAULT_GAMMA", "Episode", "TrajectoryDataset"]


@dataclass(frozen=True)
class Episode:
    """One episode of T steps (numpy arrays; views into the dataset when read from one).

    observations  [T+1, obs]  o_0 .. o_T, flattened, the final observation kept (images: uint8
                              [T+1, H, W, C]; read from the file for a lazy dataset)
    actions       [T, act]    a_t
    rewards       [T]         r_t
    terminations  [T] bool    True at the last step if the MDP terminated there (no bootstrap)
    truncations   [T] bool    True at the last step if the episode was cut (time limit, data end)
    id            the episode's id in its source (Minari episode id), or its index
    proprio       [T+1, P]    the proprioceptive vector of image + vector observations (None without)
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    id: int | None = None
    proprio: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def terminated(self) -> bool:
        """Whether the MDP terminated at the last step."""
        return bool(len(self.terminations) and self.terminations[-1])

    @property
    def episode_return(self) -> float:
        """Undiscounted return, sum of the rewards."""
        return float(np.sum(self.rewards, dtype=np.float64))


def _image_shape_of(observation_space: Any, observations: Any) -> tuple[int, ...] | None:
    """``(H, W, C)`` for image data: an image observation space (uint8 Box of rank 3, :func:`image_shape`), or no
    space and uint8 observations of rank 4 (or lazy frames); else None (vector data)."""
    if observation_space is not None:
        return image_shape(observation_space)
    from qtkit.data.frames import LazyFrames

    if isinstance(observations, LazyFrames) or type(observations).__module__.startswith("h5py"):
        return tuple(int(v) for v in observations.shape[1:])
    dtype = getattr(observations, "dtype", None)
    if dtype is not None and np.dtype(dtype) == np.uint8 and getattr(observations, "ndim", 0) == 4:
        return tuple(int(v) for v in observations.shape[1:])
    return None


def _select_image_key(observation_space: Any, first_obs: Any, observation_key: str | None) -> str | None:
    """The Dict key whose image part a dataset keeps (None: not a Dict with an image part). ``observation_key``
    picks it (a :class:`DataError` when that is not an image part); else ``"pixels"`` or the only image key."""
    from gymnasium import spaces

    if isinstance(observation_space, spaces.Dict):
        keys = list(observation_space.spaces)
        if observation_key is not None:
            if observation_key not in keys or image_shape(observation_space.spaces[observation_key]) is None:
                raise DataError(
                    f"observation_key={observation_key!r} is not an image part (uint8 Box [H, W, C]) of the "
                    f"observation space {observation_space}."
                )
            return observation_key
        return image_key(observation_space)
    if observation_key is not None:
        if isinstance(first_obs, Mapping) and observation_key in first_obs:
            return observation_key
        raise DataError(f"observation_key={observation_key!r} but the observations are not a dict with that key.")
    return None


def _infer_dict_space(first_obs: Mapping[str, Any]) -> Any:
    """A Dict space for dict observations given without one (keys sorted, as gymnasium does): uint8 arrays
    ``[T+1, H, W, C]`` become image Boxes, the other parts unbounded float32 Boxes of their shapes."""
    from gymnasium import spaces

    parts = {}
    for k, v in first_obs.items():
        arr = np.asarray(v) if not hasattr(v, "dtype") else v
        if np.dtype(arr.dtype) == np.uint8 and len(arr.shape) == 4:
            parts[k] = spaces.Box(0, 255, tuple(int(s) for s in arr.shape[1:]), np.uint8)
        else:
            parts[k] = spaces.Box(-np.inf, np.inf, shape=tuple(np.asarray(v).shape[1:]), dtype=np.float32)
    return spaces.Dict(parts)


def proprio_space_of(observation_space: Any, key: str) -> Any:
    """The Dict of the vector parts of an image + vector ``observation_space`` (all keys but image ``key``), in
    its key order; None when ``key`` is the only part."""
    from gymnasium import spaces

    observation_parts(observation_space, key)  # a second image part is an error
    rest = [(k, sub) for k, sub in observation_space.spaces.items() if k != key]
    return spaces.Dict(rest) if rest else None


def _readonly(arr: np.ndarray) -> np.ndarray:
    """``arr`` made read-only in place (the dataset hands out views of its arrays)."""
    arr.setflags(write=False)
    return arr


class TrajectoryDataset:
    """Episodes of an offline RL dataset, with statistics precomputed once (see the module docstring).

    Build one with :func:`qtkit.data.load_dataset` (Minari, D4RL HDF5, npz) or
    :meth:`from_episodes`; the constructor takes the flat layout directly:

    observations   [N + E, obs]  every episode's T_i + 1 observations, one episode after the other
    actions        [N, act]
    rewards        [N]
    terminations   [N] bool      only on the last step of an episode
    truncations    [N] bool      only on the last step of an episode
    episode_lengths [E] int      T_i >= 1, sum N

    ``episode_ids [E]`` (optional) are the episodes' ids in their source (default 0 .. E-1).
    ``proprio [N + E, P]`` (optional, image datasets only): the proprioceptive vector of each observation row
    (see the module docstring; ``metadata["observation_parts"]`` says how an env's observation splits).
    ``observation_space`` defaults to an unbounded Box; ``action_space`` to the smallest Box that
    contains [-1, 1] and every action (D4RL actions are in [-1, 1]). ``gamma`` (default 0.99) is
    the discount of the precomputed ``returns``. ``metadata`` keys used by qtkit: ``source``,
    ``dataset_id``, ``path``, ``env_id``, ``env_spec``/``eval_env_spec`` (gymnasium JSON),
    ``ref_min_score``, ``ref_max_score``.
    """

    def __init__(
        self,
        observations: Any,
        actions: Any,
        rewards: Any,
        terminations: Any,
        truncations: Any,
        episode_lengths: Any,
        *,
        observation_space: Any = None,
        action_space: Any = None,
        metadata: Mapping[str, Any] | None = None,
        gamma: float = DEFAULT_GAMMA,
        episode_ids: Any = None,
        proprio: Any = None,
    ) -> None:
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._gamma = check_gamma(gamma)
        name = self.name

        lengths = check_episode_lengths(episode_lengths, name)
        E = len(lengths)
        self._image_shape = _image_shape_of(observation_space, observations)
        if self._image_shape is not None:
            # image frames: uint8 [N + E, H, W, C], not copied (a memmap stays mapped, LazyFrames stay in the file)
            obs = as_frames(observations, self._image_shape, f" of {name}")
            if isinstance(obs, np.ndarray):
                obs = _readonly(obs.view())
            self._image_shape = tuple(int(v) for v in obs.shape[1:])
        else:
            obs = as_2d("observations", observations, f" of {name}")
        act = as_2d("actions", actions, f" of {name}")
        rew = as_1d("rewards", rewards, f" of {name}")
        term = as_flags("terminations", terminations, f" of {name}")
        trunc = as_flags("truncations", truncations, f" of {name}")
        check_step_arrays(obs, act, rew, term, trunc, lengths, name)

        offsets = np.zeros(E + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        obs_offsets = offsets + np.arange(E + 1)
        ids = check_episode_ids(episode_ids, E, name)
        self._ids = _readonly(ids)
        self._offsets = _readonly(offsets)
        self._lengths = _readonly(lengths)

        obs_dim = int(np.prod(obs.shape[1:], dtype=np.int64))
        check_observation_space(observation_space, obs_dim, name)
        self._observation_space = observation_space

        check_finite(obs, act, rew, offsets, obs_offsets, lengths, ids, observation_space, name)
        prop = None
        if proprio is not None:
            if self._image_shape is None:
                raise DataError(
                    f"{name}: proprio is for image observations (frames + a proprioceptive vector); vector "
                    "observations hold every part already: concatenate it to them instead."
                )
            prop = as_2d("proprio", proprio, f" of {name}")
            if len(prop) != len(obs):
                raise DataError(
                    f"{name}: proprio has {len(prop)} rows but there are {len(obs)} observation rows (one per "
                    "observation, the final observation of each episode included)."
                )
            check_finite(prop, act, rew, offsets, obs_offsets, lengths, ids, None, f"{name} (proprio)")
        check_flags_at_ends(term, trunc, offsets, lengths, ids, name)
        last = offsets[1:] - 1
        trunc = trunc.copy()
        trunc[last] |= ~term[last] & ~trunc[last]  # a cut episode without flags is truncated

        # statistics (qtkit.data.statistics), in float64 then stored as float32
        # from the stored float32 rewards, so that a saved and reloaded dataset has identical statistics
        rew = rew.astype(np.float32, copy=False)
        r64 = rew.astype(np.float64)
        rtg = statistics.return_to_go(r64, lengths, offsets)
        self._episode_returns = _readonly(statistics.episode_returns(r64, offsets))
        self._timesteps = _readonly(statistics.timesteps(lengths, offsets))
        if self._image_shape is None:
            obs_mean, obs_std = statistics.observation_stats(obs, obs_offsets)
        else:  # images are not standardised (the encoder scales uint8 by 1/255): identity statistics
            obs_mean, obs_std = np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32)
        self._obs_mean = _readonly(obs_mean)
        self._obs_std = _readonly(obs_std)
        self._proprio: np.ndarray | None = None
        if prop is not None:
            p_mean, p_std = statistics.observation_stats(prop, obs_offsets)
            self._proprio_mean, self._proprio_std = _readonly(p_mean), _readonly(p_std)

        # flat arrays with one zero row at the end: padded window positions gather that row
        def padded(arr: np.ndarray, dtype: Any) -> np.ndarray:
            out = np.zeros((len(arr) + 1, *arr.shape[1:]), dtype=dtype)
            out[:-1] = arr
            return _readonly(out)

        # images: no padding row (that would copy every frame); windows fill padded positions with zeros
        self._obs = padded(obs, np.float32) if self._image_shape is None else obs
        if prop is not None:
            self._proprio = padded(prop, np.float32)
        self._act = padded(act, np.float32)
        self._rew = padded(rew, np.float32)
        self._rtg = padded(rtg, np.float32)
        self._term = padded(term, np.bool_)
        self._trunc = padded(trunc, np.bool_)
        self._r64 = r64
        self._returns = padded(statistics.flat_discounted_returns(r64, term, lengths, offsets, self._gamma), np.float32)
        self._slot_cache: dict[int, np.ndarray] = {}

        if action_space is None:
            from gymnasium import spaces

            low = np.minimum(act.min(axis=0), -1.0).astype(np.float32)
            high = np.maximum(act.max(axis=0), 1.0).astype(np.float32)
            action_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self._set_action_space(action_space)

    # ----------------------------------------------------------------------------------- build
    @classmethod
    def from_episodes(
        cls,
        episodes: Iterable[Any],
        observation_space: Any = None,
        action_space: Any = None,
        metadata: Mapping[str, Any] | None = None,
        gamma: float = DEFAULT_GAMMA,
        observation_key: str | None = None,
        proprio: bool = True,
    ) -> TrajectoryDataset:
        """Build a dataset from in-memory episodes.

        Each episode is an :class:`Episode`, a dict or any object (e.g. a Minari ``EpisodeData``) with
        ``observations [T+1, ...]`` (or a dict of such arrays for a Dict space), ``actions [T, ...]``,
        ``rewards [T]`` and optionally ``terminations``/``truncations`` ``[T]`` (aliases ``terminals``/
        ``timeouts``; missing means False) and ``id``. Dict observations are flattened with
        ``observation_space`` (inferred from the arrays, keys sorted as gymnasium does, when None).

        Images (an image Box space, or uint8 ``[T+1, H, W, C]`` arrays) are kept uint8. A Dict with an image
        part: a Dict of that image alone (e.g. ``{"pixels"}``) is read as the image; with vector parts too
        (``{"pixels", "state"}``) the frames are the observations and the vector parts (flattened, in the
        Dict's key order) the ``proprio`` vector, unless ``proprio=False`` (frames only). ``observation_key``
        names the image part (default ``"pixels"``, or the only image); it is recorded as
        ``metadata["observation_key"]``, the layout as ``metadata["observation_parts"]``.
        """
        eps = list(episodes)
        if not eps:
            raise DataError("from_episodes got no episodes; a dataset needs at least one episode of one step.")
        first_obs = get_field(eps[0], ("observations",), 0)
        if observation_space is None and isinstance(first_obs, Mapping) and any(
                np.dtype(getattr(v, "dtype", np.float32)) == np.uint8 and len(np.shape(v)) == 4
                for v in first_obs.values()):
            observation_space = _infer_dict_space(first_obs)  # dict observations with frames, given without a space
        key = _select_image_key(observation_space, first_obs, observation_key)
        proprio_space = None
        if key is not None:
            if observation_space is not None:
                if proprio:
                    proprio_space = proprio_space_of(observation_space, key)
                parts = observation_parts(observation_space, key) if proprio_space is not None else None
                observation_space = observation_space.spaces[key]
            metadata = {**dict(metadata or {}), "observation_key": key}
            metadata.pop("observation_parts", None)
            if proprio_space is not None:
                metadata["observation_parts"] = parts
        if observation_space is None and key is None and isinstance(first_obs, Mapping):
            from gymnasium import spaces

            observation_space = spaces.Dict({
                k: spaces.Box(-np.inf, np.inf, shape=np.asarray(v).shape[1:], dtype=np.float32)
                for k, v in first_obs.items()
            })
        obs_list, act_list, rew_list, term_list, trunc_list, lengths, ids = [], [], [], [], [], [], []
        prop_list: list[np.ndarray] = []
        for i, ep in enumerate(eps):
            where = f" of episode {i}"
            raw_obs = get_field(ep, ("observations",), i)
            if key is not None:
                if not isinstance(raw_obs, Mapping) or key not in raw_obs:
                    raise DataError(f"episode {i}: observations have no key {key!r} (the image part).")
                if proprio_space is not None:
                    try:
                        prop = flatten_observation(proprio_space, {k: raw_obs[k] for k in proprio_space.spaces
                                                                   if k in raw_obs})
                    except DataError as e:
                        raise DataError(f"episode {i} (the proprioceptive parts): {e}") from None
                    if prop.ndim != 2 or len(prop) != len(raw_obs[key]):
                        raise DataError(
                            f"episode {i}: the proprioceptive parts {list(proprio_space.spaces)} have "
                            f"{len(prop) if prop.ndim == 2 else 1} rows but the frames {len(raw_obs[key])}."
                        )
                    prop_list.append(prop)
                raw_obs = raw_obs[key]
            image = _image_shape_of(observation_space, raw_obs) if not isinstance(raw_obs, Mapping) else None
            if image is not None:
                obs = as_frames(raw_obs, image, where)
            elif observation_space is not None:
                try:
                    obs = flatten_observation(observation_space, raw_obs)
                except DataError as e:
                    raise DataError(f"episode {i}: {e}") from None
                if obs.ndim != 2:
                    raise DataError(f"episode {i}: observations must be a batch [T+1, ...], got one observation.")
            else:
                obs = as_2d("observations", raw_obs, where)
            act = as_2d("actions", get_field(ep, ("actions",), i), where)
            rew = as_1d("rewards", get_field(ep, ("rewards",), i), where)
            T = len(rew)
            term = get_field(ep, ("terminations", "terminals"), i, required=False)
            trunc = get_field(ep, ("truncations", "timeouts"), i, required=False)
            term = np.zeros(T, dtype=bool) if term is None else as_flags("terminations", term, where)
            trunc = np.zeros(T, dtype=bool) if trunc is None else as_flags("truncations", trunc, where)
            if image is not None and obs_list and obs.shape[1:] != obs_list[0].shape[1:]:
                raise DataError(
                    f"episode {i} has frames {tuple(obs.shape[1:])} but episode 0 has {tuple(obs_list[0].shape[1:])}; "
                    "every episode must share the same spaces."
                )
            flat_obs = obs.reshape(len(obs), -1) if image is not None else obs
            columns = (int(np.prod(obs_list[0].shape[1:])), act_list[0].shape[1]) if obs_list else None
            check_episode(i, flat_obs, act, rew, term, trunc, columns)
            ep_id = get_field(ep, ("id",), i, required=False)
            obs_list.append(obs)
            act_list.append(act)
            rew_list.append(rew)
            term_list.append(term)
            trunc_list.append(trunc)
            lengths.append(T)
            ids.append(i if ep_id is None else int(ep_id))
        md = {"source": "memory", **dict(metadata or {})}
        return cls(
            np.concatenate(obs_list), np.concatenate(act_list), np.concatenate(rew_list),
            np.concatenate(term_list), np.concatenate(trunc_list), np.asarray(lengths, dtype=np.int64),
            observation_space=observation_space, action_space=action_space, metadata=md, gamma=gamma,
            episode_ids=ids, proprio=np.concatenate(prop_list) if prop_list else None,
        )

    def _set_action_space(self, action_space: Any) -> None:
        low, high = check_action_space(action_space, self._act.shape[1], self.name)
        self._action_space = action_space
        self._action_low = _readonly(low)
        self._action_high = _readonly(high)

    def _clone(
        self,
        gamma: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        action_space: Any = None,
    ) -> TrajectoryDataset:
        """A copy sharing the (read-only) arrays, with a new gamma, metadata or action space."""
        new = copy.copy(self)
        new.metadata = {**self.metadata, **dict(metadata or {})}
        new._slot_cache = {}
        if gamma is not None and check_gamma(gamma) != self._gamma:
            new._gamma = float(gamma)
            g = statistics.flat_discounted_returns(self._r64, self._term[:-1], self._lengths, self._offsets, new._gamma)
            ret = np.zeros(len(g) + 1, dtype=np.float32)
            ret[:-1] = g
            new._returns = _readonly(ret)
        if action_space is not None:
            new._set_action_space(action_space)
        return new

    def without_proprio(self) -> TrajectoryDataset:
        """The same data without the proprioceptive vector (frames only)."""
        new = self._clone()
        new._proprio = None
        new.metadata.pop("observation_parts", None)
        return new

    def with_gamma(self, gamma: float) -> TrajectoryDataset:
        """The same data with ``returns`` recomputed for another discount."""
        return self._clone(gamma=gamma)

    # ----------------------------------------------------------------------------------- info
    @property
    def name(self) -> str:
        """A human name for messages: the dataset id, the file path, or '<in-memory dataset>'."""
        md = self.metadata
        return str(md.get("dataset_id") or md.get("path") or "<in-memory dataset>")

    @property
    def gamma(self) -> float:
        """Discount of the precomputed ``returns``."""
        return self._gamma

    @property
    def observation_space(self) -> Any:
        """The (unflattened) gymnasium observation space; an unbounded Box when the source has none."""
        if self._observation_space is None:
            from gymnasium import spaces

            self._observation_space = spaces.Box(-np.inf, np.inf, shape=(self.obs_dim,), dtype=np.float32)
        return self._observation_space

    @property
    def action_space(self) -> Any:
        """The gymnasium Box action space (finite bounds)."""
        return self._action_space

    @property
    def obs_dim(self) -> int:
        """Width of a flattened observation (``H * W * C`` for images)."""
        return int(np.prod(self._obs.shape[1:], dtype=np.int64))

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """One observation's shape as stored: ``(H, W, C)`` for images, ``(obs_dim,)`` for vectors."""
        return self._image_shape if self._image_shape is not None else (self.obs_dim,)

    @property
    def is_image(self) -> bool:
        """Whether the observations are uint8 image frames ``[H, W, C]`` (see the module docstring)."""
        return self._image_shape is not None

    @property
    def frames_storage(self) -> str:
        """Where the observations live: ``"memory"``, or for lazy image datasets ``"hdf5"`` (an h5py dataset of
        the source file) or ``"memmap"`` (a memory-mapped uncompressed npz member)."""
        if self._image_shape is None:
            return "memory"
        from qtkit.data.frames import frames_storage

        return frames_storage(self._obs)

    @property
    def is_lazy(self) -> bool:
        """Whether the frames stay in a file and windows read only the rows they need."""
        return self.frames_storage != "memory"

    @property
    def act_dim(self) -> int:
        """Width of an action."""
        return int(self._act.shape[1])

    @property
    def action_low(self) -> np.ndarray:
        """Lower action bounds ``[act]`` float32."""
        return self._action_low

    @property
    def action_high(self) -> np.ndarray:
        """Upper action bounds ``[act]`` float32."""
        return self._action_high

    @property
    def env_id(self) -> str | None:
        """The evaluation env's gymnasium id, if the dataset records one."""
        value = self.metadata.get("env_id")
        return None if value is None else str(value)

    @property
    def ref_min_score(self) -> float | None:
        """Reference return of a random policy (D4RL's ``REF_MIN_SCORE``), if known."""
        value = self.metadata.get("ref_min_score")
        return None if value is None else float(value)

    @property
    def ref_max_score(self) -> float | None:
        """Reference return of an expert policy (D4RL's ``REF_MAX_SCORE``), if known."""
        value = self.metadata.get("ref_max_score")
        return None if value is None else float(value)

    @property
    def num_episodes(self) -> int:
        return len(self._lengths)

    @property
    def num_steps(self) -> int:
        """N, the number of transitions."""
        return int(self._offsets[-1])

    def __len__(self) -> int:
        """Number of episodes."""
        return self.num_episodes

    @property
    def episode_lengths(self) -> np.ndarray:
        """``[E]`` int64, T_i."""
        return self._lengths

    @property
    def episode_offsets(self) -> np.ndarray:
        """``[E+1]`` int64: episode i's steps are rows ``offsets[i] .. offsets[i+1]-1`` of the step arrays."""
        return self._offsets

    @property
    def episode_returns(self) -> np.ndarray:
        """``[E]`` float64 undiscounted episode returns."""
        return self._episode_returns

    @property
    def episode_ids(self) -> np.ndarray:
        """``[E]`` int64 ids in the source (Minari episode ids; else 0..E-1)."""
        return self._ids

    @property
    def observations(self) -> Any:
        """``[N + E, obs]`` float32, every episode's o_0 .. o_T (episode i from row offsets[i] + i).

        Images: uint8 ``[N + E, H, W, C]``, a read-only numpy array, or for a lazy dataset a
        :class:`qtkit.data.frames.LazyFrames` (index it to read rows; ``numpy.asarray`` reads them all).
        """
        return self._obs if self._image_shape is not None else self._obs[:-1]

    @property
    def actions(self) -> np.ndarray:
        """``[N, act]`` float32."""
        return self._act[:-1]

    @property
    def rewards(self) -> np.ndarray:
        """``[N]`` float32."""
        return self._rew[:-1]

    @property
    def terminations(self) -> np.ndarray:
        """``[N]`` bool."""
        return self._term[:-1]

    @property
    def truncations(self) -> np.ndarray:
        """``[N]`` bool (an episode cut without flags is marked truncated at its last step)."""
        return self._trunc[:-1]

    @property
    def rtg(self) -> np.ndarray:
        """``[N]`` float32 undiscounted return-to-go ``sum_{k>=t} r_k`` within the episode (unscaled)."""
        return self._rtg[:-1]

    @property
    def returns(self) -> np.ndarray:
        """``[N]`` float32 discounted Monte-Carlo return ``G_t`` with :attr:`gamma` over the whole episode."""
        return self._returns[:-1]

    @property
    def timesteps(self) -> np.ndarray:
        """``[N]`` int64 absolute step index within the episode."""
        return self._timesteps

    @property
    def obs_mean(self) -> np.ndarray:
        """``[obs]`` float32 mean of the step observations o_0 .. o_{T-1} of every episode.

        Images are not standardised (their encoder scales uint8 by 1/255): zeros (and :attr:`obs_std` ones),
        ``[H*W*C]``, so that standardising is the identity and costs no pass over the frames.
        """
        return self._obs_mean

    @property
    def obs_std(self) -> np.ndarray:
        """``[obs]`` float32 std of the same observations, plus 1e-6."""
        return self._obs_std

    @property
    def proprio(self) -> np.ndarray | None:
        """``[N + E, P]`` float32 proprioceptive vectors, one per observation row (image + vector observations;
        None without)."""
        return None if self._proprio is None else self._proprio[:-1]

    @property
    def proprio_dim(self) -> int:
        """Width P of the proprioceptive vector (0: none)."""
        return 0 if self._proprio is None else int(self._proprio.shape[1])

    @property
    def proprio_mean(self) -> np.ndarray:
        """``[P]`` float32 mean of the proprioceptive vectors (over every row, final observations included)."""
        return self._proprio_mean if self._proprio is not None else np.zeros(0, np.float32)

    @property
    def proprio_std(self) -> np.ndarray:
        """``[P]`` float32 std of the proprioceptive vectors, plus 1e-6."""
        return self._proprio_std if self._proprio is not None else np.ones(0, np.float32)

    @property
    def observation_parts(self) -> list[list[Any]] | None:
        """How an env's flattened observation splits into the frames and the proprioceptive vector
        (:func:`qtkit.data.spaces.observation_parts`); None without a proprioceptive vector."""
        return self.metadata.get("observation_parts") if self._proprio is not None else None

    def episode(self, index: int) -> Episode:
        """Episode ``index`` as read-only views into the flat arrays."""
        E = self.num_episodes
        if not -E <= index < E:
            raise IndexError(f"episode index {index} out of range for {self.name} with {E} episodes.")
        i = int(index) % E
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return Episode(
            observations=self._obs[a + i: b + i + 1], actions=self._act[a:b], rewards=self._rew[a:b],
            terminations=self._term[a:b], truncations=self._trunc[a:b], id=int(self._ids[i]),
            proprio=None if self._proprio is None else self._proprio[a + i: b + i + 1],
        )

    def __getitem__(self, index: int) -> Episode:
        return self.episode(index)

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.num_episodes):
            yield self.episode(i)

    def __repr__(self) -> str:
        return (
            f"TrajectoryDataset({self.name!r}, episodes={self.num_episodes}, steps={self.num_steps}, "
            f"obs_{'shape' if self.is_image else 'dim'}={self.obs_shape if self.is_image else self.obs_dim}, "
            f"act_dim={self.act_dim}, gamma={self.gamma}"
            + (f", frames={self.frames_storage}" if self.is_image else "")
            + (f", proprio_dim={self.proprio_dim}" if self.proprio_dim else "") + ")"
        )

    # ----------------------------------------------------------------------------------- use
    def flatten_observation(self, obs: Any) -> np.ndarray:
        """Flatten one env observation (-> ``[obs]``) or a vector env's batch (-> ``[n, obs]``), float32.

        Same order as the dataset's columns: ``gymnasium.spaces.flatten`` of :attr:`observation_space`
        (Dict spaces in their key order, e.g. achieved_goal, desired_goal, observation).
        """
        return flatten_observation(self.observation_space, obs)

    def prepare_observation(self, obs: Any) -> np.ndarray:
        """One env observation (or a vector env's batch) in the dataset's stored form.

        Vectors: :meth:`flatten_observation` (float32 ``[..., obs]``). Images: uint8 ``[..., H, W, C]``; a
        dict observation (e.g. ``{"pixels", "state"}``) gives its ``metadata["observation_key"]`` part.
        """
        if self._image_shape is None:
            return self.flatten_observation(obs)
        if hasattr(obs, "detach") and hasattr(obs, "cpu"):
            obs = obs.detach().cpu().numpy()
        if isinstance(obs, Mapping):
            key = self.metadata.get("observation_key") or "pixels"
            if key not in obs:
                raise DataError(f"observation has keys {sorted(obs)}; the dataset's frames are key {key!r}.")
            obs = obs[key]
        arr = np.asarray(obs)
        if tuple(arr.shape[-3:]) != self._image_shape:
            raise DataError(f"observation has shape {arr.shape}; the dataset's frames are {self._image_shape}.")
        return as_frames(arr.reshape(-1, *self._image_shape), self._image_shape, "").reshape(arr.shape)

    def normalized_score(self, returns: Any) -> Any:
        """D4RL normalised score ``100 (R - ref_min) / (ref_max - ref_min)`` (:func:`qtkit.data.normalized_score`)."""
        from qtkit.data.scores import normalized_score

        return normalized_score(self, returns)

    def make_env(self, **kwargs: Any) -> Any:
        """The evaluation env: Minari's ``recover_environment(eval_env=True)`` for Minari datasets, else
        ``gymnasium.make`` of the recorded env spec or ``env_id``. ``kwargs`` go to ``gymnasium.make``."""
        from qtkit.data.loading import make_env_for

        return make_env_for(self, **kwargs)

    def sample_windows(
        self,
        batch_size: int,
        K: int,
        generator: Any = None,
        rtg_scale: float = 1.0,
        *,
        scheme: str = "uniform",
        device: str | torch.device | None = None,
        rows: slice | None = None,
        frame_stack: int = 1,
    ) -> Batch:
        """``batch_size`` training windows of ``K`` steps as a :class:`Batch` (all ``[B, K, ...]``).

        ``generator``: a ``numpy.random.Generator``, a ``torch.Generator``, an int seed or None.
        ``scheme`` (see :mod:`qtkit.data.windows`): ``"uniform"`` (default) makes every step equally
        likely to appear (episodes drawn ∝ T + K - 1, start uniform in [-(K-1), T-1], the part
        inside the episode kept and left-aligned); ``"reference"`` is the reference DT rule (episodes
        ∝ T, start uniform in [0, T-1]); ``"inside"`` keeps full windows (start in [0, max(0, T-K)]).
        No window crosses an episode; padding is on the right and holds zeros (``mask`` False).
        ``rtg`` is the undiscounted return-to-go divided by ``rtg_scale``; observations are raw.
        ``frame_stack`` F > 1 (images): each observation is its last F frames ``[B, K, F, H, W, C]``.
        ``rows``: draw all ``batch_size`` windows from the generator but return only these rows (a data-parallel
        rank's slice of the global batch). Implemented by :func:`qtkit.data.windows.sample_windows`.
        """
        return sample_windows(self, batch_size, K, generator, rtg_scale, scheme=scheme, device=device,
                              frame_stack=frame_stack, rows=rows)

    # ----------------------------------------------------------------------------------- save
    def to_npz(self, path: str | os.PathLike[str], compress: bool = False) -> Path:
        """Write the dataset as a D4RL-style ``.npz`` that :func:`qtkit.data.load_dataset` reads back.

        Keys: ``observations, next_observations, actions [N, ...]``, ``rewards, terminals, timeouts [N]``,
        ``ref_min_score``, ``ref_max_score``, ``env_id`` when known, and ``qtkit_metadata`` (JSON:
        metadata, gamma, spaces, episode ids). Written to a temporary file then renamed (atomic), by
        :func:`qtkit.data.serialization.write_npz`.
        """
        return write_npz(self, path, compress)
