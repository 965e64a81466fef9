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
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qtkit.data.batch import Batch
from qtkit.data.spaces import column_name, flatten_observation, space_to_json
from qtkit.data.windows import RandomSource, sample_window_starts
from qtkit.errors import DataError

DEFAULT_GAMMA = 0.99
#: added to the observation std (ALGORITHMS.md §1)
OBS_STD_EPS = 1e-6

__all__ = ["DEFAULT_GAMMA", "Episode", "TrajectoryDataset"]


@dataclass(frozen=True)
class Episode:
    """One episode of T steps (numpy arrays; views into the dataset when read from one).

    observations  [T+1, obs]  o_0 .. o_T, flattened, the final observation kept
    actions       [T, act]    a_t
    rewards       [T]         r_t
    terminations  [T] bool    True at the last step if the MDP terminated there (no bootstrap)
    truncations   [T] bool    True at the last step if the episode was cut (time limit, data end)
    id            the episode's id in its source (Minari episode id), or its index
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    id: int | None = None

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


def _as_2d(name: str, value: Any, where: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        raise DataError(f"{name}{where} is a scalar; it must be an array with one row per step.")
    if arr.ndim == 1:
        return arr.reshape(-1, 1)
    return arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:])))


def _as_1d(name: str, value: Any, where: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{name}{where} must have one value per step, got shape {tuple(arr.shape)}.")
    return arr


def _as_flags(name: str, value: Any, where: str) -> np.ndarray:
    arr = _as_1d(name, value, where)
    return arr if arr.dtype == np.bool_ else arr != 0


def _first_nonfinite(arr: np.ndarray) -> tuple[int, int, float] | None:
    """(row, column, value) of the first NaN/inf in a 1-D or 2-D float array, or None."""
    if not np.issubdtype(arr.dtype, np.floating):
        return None
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    flat = int(np.flatnonzero(bad.reshape(-1))[0])
    if arr.ndim == 1:
        return flat, -1, float(arr[flat])
    row, col = divmod(flat, arr.shape[1])
    return row, col, float(arr[row, col])


def _get_field(ep: Any, names: tuple[str, ...], index: int, required: bool = True) -> Any:
    for name in names:
        if isinstance(ep, Mapping):
            if name in ep:
                return ep[name]
        elif hasattr(ep, name):
            return getattr(ep, name)
    if required:
        present = sorted(ep) if isinstance(ep, Mapping) else [a for a in vars(ep) if not a.startswith("_")]
        raise DataError(
            f"episode {index} has no {names[0]!r} (fields present: {present}); an episode needs observations "
            "[T+1, ...], actions [T, ...] and rewards [T] (terminations/truncations [T] are optional)."
        )
    return None


def _discounted_returns(
    rewards: np.ndarray,
    terminations: np.ndarray,
    lengths: np.ndarray,
    offsets: np.ndarray,
    gamma: float,
    max_elements: int = 1 << 20,
) -> np.ndarray:
    """Per-step discounted returns ``[N]`` (float64) with ``qtkit.backups.functional.discounted_returns``.

    Episodes are sorted by length and processed in padded ``[rows, T_max]`` chunks of at most
    ``max_elements`` entries, so memory stays bounded and padding small.
    """
    from qtkit.backups.functional import discounted_returns

    out = np.empty(len(rewards), dtype=np.float64)
    order = np.argsort(-lengths, kind="stable")
    i = 0
    while i < len(order):
        t_max = int(lengths[order[i]])
        chunk = order[i: i + max(1, max_elements // t_max)]
        i += len(chunk)
        t = np.arange(t_max)
        mask = t[None, :] < lengths[chunk][:, None]
        idx = np.where(mask, offsets[chunk][:, None] + t[None, :], 0)
        r = torch.from_numpy(np.where(mask, rewards[idx], 0.0))
        term = torch.from_numpy(mask & terminations[idx])
        g = discounted_returns(r, term, torch.from_numpy(mask), gamma).numpy()
        out[idx[mask]] = g[mask]
    return out


def _check_gamma(gamma: Any) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, int | float | np.floating | np.integer):
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}.")
    g = float(gamma)
    if not 0.0 <= g <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}.")
    return g


def _readonly(arr: np.ndarray) -> np.ndarray:
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
    ) -> None:
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._gamma = _check_gamma(gamma)
        name = self.name

        lengths = np.asarray(episode_lengths)
        if lengths.ndim != 1 or not (np.issubdtype(lengths.dtype, np.integer) or lengths.size == 0):
            raise DataError(f"episode_lengths of {name} must be a 1-D integer array, got {lengths!r}.")
        lengths = lengths.astype(np.int64)
        E = len(lengths)
        if E == 0:
            raise DataError(f"dataset {name} is empty: it has no episodes. Check the source (file, Minari id).")
        short = np.flatnonzero(lengths < 1)
        if short.size:
            raise DataError(
                f"episode {int(short[0])} of {name} has {int(lengths[short[0]])} steps; every episode needs at "
                "least one step (one action and two observations). Drop empty episodes before loading."
            )
        N = int(lengths.sum())

        obs = _as_2d("observations", observations, f" of {name}")
        act = _as_2d("actions", actions, f" of {name}")
        rew = _as_1d("rewards", rewards, f" of {name}")
        term = _as_flags("terminations", terminations, f" of {name}")
        trunc = _as_flags("truncations", truncations, f" of {name}")
        expected = {"observations": (len(obs), N + E), "actions": (len(act), N), "rewards": (len(rew), N),
                    "terminations": (len(term), N), "truncations": (len(trunc), N)}
        wrong = {k: v for k, v in expected.items() if v[0] != v[1]}
        if wrong:
            got = ", ".join(f"{k} has {a} rows (expected {b})" for k, (a, b) in wrong.items())
            raise DataError(
                f"length mismatch in {name}: {got}. With {E} episodes of {N} steps in all, there must be N "
                "actions/rewards/terminations/truncations and N + E observations (each episode keeps its final "
                "observation)."
            )
        if act.shape[1] == 0 or obs.shape[1] == 0:
            raise DataError(f"{name}: observations and actions need at least one column, got {obs.shape}, {act.shape}.")

        offsets = np.zeros(E + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        obs_offsets = offsets + np.arange(E + 1)
        if episode_ids is None:
            ids = np.arange(E, dtype=np.int64)
        else:
            ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
            if len(ids) != E:
                raise DataError(f"{name}: {len(ids)} episode ids for {E} episodes.")
        self._ids = _readonly(ids)
        self._offsets = _readonly(offsets)
        self._lengths = _readonly(lengths)

        if observation_space is not None:
            from gymnasium import spaces

            if spaces.flatdim(observation_space) != obs.shape[1]:
                raise DataError(
                    f"{name}: the observation space {observation_space} flattens to {spaces.flatdim(observation_space)}"
                    f" values but the observations have {obs.shape[1]} columns."
                )
        self._observation_space = observation_space

        checks = (("observations", obs, obs_offsets), ("actions", act, offsets), ("rewards", rew, offsets))
        for key, arr, offs in checks:
            bad = _first_nonfinite(arr)
            if bad is None:
                continue
            row, col, value = bad
            ep = int(np.searchsorted(offs, row, side="right") - 1)
            step = row - int(offs[ep])
            final = " (the final observation)" if key == "observations" and step == lengths[ep] else ""
            part = ""
            if col >= 0:
                sub = column_name(observation_space, col) if key == "observations" else ""
                part = f", column {col}" + (f" = key {sub}" if sub else "")
            raise DataError(
                f"{key} of {name} contain {value} at episode {ep}{self._id_note(ep)}, step {step}{final}{part}. "
                "Clean the data (drop or repair that episode) before loading: qtkit does not train on NaN/inf."
            )

        last = offsets[1:] - 1
        for key, flags in (("terminations", term), ("truncations", trunc)):
            inner = flags.copy()
            inner[last] = False
            if inner.any():
                row = int(np.flatnonzero(inner)[0])
                ep = int(np.searchsorted(offsets, row, side="right") - 1)
                raise DataError(
                    f"{key}[{row - int(offsets[ep])}] of episode {ep}{self._id_note(ep)} in {name} is True before the "
                    f"episode's last step ({int(lengths[ep]) - 1}); an episode ends at its first termination or "
                    "truncation: split it there."
                )
        trunc = trunc.copy()
        trunc[last] |= ~term[last] & ~trunc[last]  # a cut episode without flags is truncated

        # statistics, in float64 then stored as float32
        # from the stored float32 rewards, so that a saved and reloaded dataset has identical statistics
        rew = rew.astype(np.float32, copy=False)
        r64 = rew.astype(np.float64)
        ep_of_step = np.repeat(np.arange(E), lengths)
        suffix = np.zeros(N + 1, dtype=np.float64)
        suffix[:N] = np.cumsum(r64[::-1])[::-1]
        rtg = suffix[:N] - suffix[offsets[1:]][ep_of_step]
        self._episode_returns = _readonly(np.add.reduceat(r64, offsets[:-1]))
        self._timesteps = _readonly(np.arange(N, dtype=np.int64) - offsets[ep_of_step])
        final_rows = obs_offsets[1:] - 1
        step_obs = np.delete(obs, final_rows, axis=0).astype(np.float64, copy=False)
        self._obs_mean = _readonly(step_obs.mean(axis=0).astype(np.float32))
        self._obs_std = _readonly((step_obs.std(axis=0) + OBS_STD_EPS).astype(np.float32))
        del step_obs

        # flat arrays with one zero row at the end: padded window positions gather that row
        def padded(arr: np.ndarray, dtype: Any) -> np.ndarray:
            out = np.zeros((len(arr) + 1, *arr.shape[1:]), dtype=dtype)
            out[:-1] = arr
            return _readonly(out)

        self._obs = padded(obs, np.float32)
        self._act = padded(act, np.float32)
        self._rew = padded(rew, np.float32)
        self._rtg = padded(rtg, np.float32)
        self._term = padded(term, np.bool_)
        self._trunc = padded(trunc, np.bool_)
        self._r64 = r64
        self._returns = padded(_discounted_returns(r64, term, lengths, offsets, self._gamma), np.float32)
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
    ) -> TrajectoryDataset:
        """Build a dataset from in-memory episodes.

        Each episode is an :class:`Episode`, a dict or any object (e.g. a Minari ``EpisodeData``) with
        ``observations [T+1, ...]`` (or a dict of such arrays for a Dict space), ``actions [T, ...]``,
        ``rewards [T]`` and optionally ``terminations``/``truncations`` ``[T]`` (aliases ``terminals``/
        ``timeouts``; missing means False) and ``id``. Dict observations are flattened with
        ``observation_space`` (inferred from the arrays, keys sorted as gymnasium does, when None).
        """
        eps = list(episodes)
        if not eps:
            raise DataError("from_episodes got no episodes; a dataset needs at least one episode of one step.")
        first_obs = _get_field(eps[0], ("observations",), 0)
        if observation_space is None and isinstance(first_obs, Mapping):
            from gymnasium import spaces

            observation_space = spaces.Dict({
                k: spaces.Box(-np.inf, np.inf, shape=np.asarray(v).shape[1:], dtype=np.float32)
                for k, v in first_obs.items()
            })
        obs_list, act_list, rew_list, term_list, trunc_list, lengths, ids = [], [], [], [], [], [], []
        for i, ep in enumerate(eps):
            where = f" of episode {i}"
            raw_obs = _get_field(ep, ("observations",), i)
            if observation_space is not None:
                try:
                    obs = flatten_observation(observation_space, raw_obs)
                except DataError as e:
                    raise DataError(f"episode {i}: {e}") from None
                if obs.ndim != 2:
                    raise DataError(f"episode {i}: observations must be a batch [T+1, ...], got one observation.")
            else:
                obs = _as_2d("observations", raw_obs, where)
            act = _as_2d("actions", _get_field(ep, ("actions",), i), where)
            rew = _as_1d("rewards", _get_field(ep, ("rewards",), i), where)
            T = len(rew)
            term = _get_field(ep, ("terminations", "terminals"), i, required=False)
            trunc = _get_field(ep, ("truncations", "timeouts"), i, required=False)
            term = np.zeros(T, dtype=bool) if term is None else _as_flags("terminations", term, where)
            trunc = np.zeros(T, dtype=bool) if trunc is None else _as_flags("truncations", trunc, where)
            sizes = {"observations": len(obs), "actions": len(act), "terminations": len(term),
                     "truncations": len(trunc)}
            want = {"observations": T + 1, "actions": T, "terminations": T, "truncations": T}
            if T < 1 or any(sizes[k] != want[k] for k in sizes):
                got = ", ".join(f"{k} {v}" for k, v in sizes.items())
                raise DataError(
                    f"episode {i} has mismatched lengths: rewards {T}, {got}. An episode of T >= 1 steps needs T+1 "
                    "observations (the final one kept), T actions, T rewards, T terminations/truncations."
                )
            if obs_list and (obs.shape[1] != obs_list[0].shape[1] or act.shape[1] != act_list[0].shape[1]):
                raise DataError(
                    f"episode {i} has {obs.shape[1]} observation and {act.shape[1]} action columns but episode 0 has "
                    f"{obs_list[0].shape[1]} and {act_list[0].shape[1]}; every episode must share the same spaces."
                )
            ep_id = _get_field(ep, ("id",), i, required=False)
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
            episode_ids=ids,
        )

    def _set_action_space(self, action_space: Any) -> None:
        from gymnasium import spaces

        act_dim = self._act.shape[1]
        if not isinstance(action_space, spaces.Box):
            raise DataError(
                f"{self.name}: action space {action_space} is not continuous (Box); qtkit's policies and critics "
                "need bounded continuous actions."
            )
        if int(np.prod(action_space.shape)) != act_dim:
            raise DataError(
                f"{self.name}: the action space {action_space} has {int(np.prod(action_space.shape))} dimensions but "
                f"the actions have {act_dim} columns."
            )
        low = np.asarray(action_space.low, dtype=np.float32).reshape(-1)
        high = np.asarray(action_space.high, dtype=np.float32).reshape(-1)
        if not (np.isfinite(low).all() and np.isfinite(high).all()) or (low >= high).any():
            raise DataError(
                f"{self.name}: the action space {action_space} must have finite bounds with low < high; pass "
                "action_low=..., action_high=... to qtkit.data.load_dataset (or action_space=Box(...))."
            )
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
        if gamma is not None and _check_gamma(gamma) != self._gamma:
            new._gamma = float(gamma)
            g = _discounted_returns(self._r64, self._term[:-1], self._lengths, self._offsets, new._gamma)
            ret = np.zeros(len(g) + 1, dtype=np.float32)
            ret[:-1] = g
            new._returns = _readonly(ret)
        if action_space is not None:
            new._set_action_space(action_space)
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

    def _id_note(self, ep: int) -> str:
        ids = getattr(self, "_ids", None)
        if ids is None or int(ids[ep]) == ep:
            return ""
        return f" (id {int(ids[ep])})"

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
        """Width of a flattened observation."""
        return int(self._obs.shape[1])

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
    def observations(self) -> np.ndarray:
        """``[N + E, obs]`` float32, every episode's o_0 .. o_T (episode i from row offsets[i] + i)."""
        return self._obs[:-1]

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
        """``[obs]`` float32 mean of the step observations o_0 .. o_{T-1} of every episode."""
        return self._obs_mean

    @property
    def obs_std(self) -> np.ndarray:
        """``[obs]`` float32 std of the same observations, plus 1e-6."""
        return self._obs_std

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
        )

    def __getitem__(self, index: int) -> Episode:
        return self.episode(index)

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.num_episodes):
            yield self.episode(i)

    def __repr__(self) -> str:
        return (
            f"TrajectoryDataset({self.name!r}, episodes={self.num_episodes}, steps={self.num_steps}, "
            f"obs_dim={self.obs_dim}, act_dim={self.act_dim}, gamma={self.gamma})"
        )

    # ----------------------------------------------------------------------------------- use
    def flatten_observation(self, obs: Any) -> np.ndarray:
        """Flatten one env observation (-> ``[obs]``) or a vector env's batch (-> ``[n, obs]``), float32.

        Same order as the dataset's columns: ``gymnasium.spaces.flatten`` of :attr:`observation_space`
        (Dict spaces in their key order, e.g. achieved_goal, desired_goal, observation).
        """
        return flatten_observation(self.observation_space, obs)

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
    ) -> Batch:
        """``batch_size`` training windows of ``K`` steps as a :class:`Batch` (all ``[B, K, ...]``).

        ``generator``: a ``numpy.random.Generator``, a ``torch.Generator``, an int seed or None.
        ``scheme`` (see :mod:`qtkit.data.windows`): ``"uniform"`` (default) makes every step equally
        likely to appear (episodes drawn ∝ T + K - 1, start uniform in [-(K-1), T-1], the part
        inside the episode kept and left-aligned); ``"reference"`` is the reference DT rule (episodes
        ∝ T, start uniform in [0, T-1]); ``"inside"`` keeps full windows (start in [0, max(0, T-K)]).
        No window crosses an episode; padding is on the right and holds zeros (``mask`` False).
        ``rtg`` is the undiscounted return-to-go divided by ``rtg_scale``; observations are raw.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        if isinstance(K, bool) or not isinstance(K, int | np.integer) or K < 1:
            raise ValueError(f"K (the window length, context) must be an int >= 1, got {K!r}.")
        scale = float(rtg_scale)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"rtg_scale must be a finite number > 0, got {rtg_scale!r}.")
        B, K = int(batch_size), int(K)
        rng = generator if isinstance(generator, RandomSource) else RandomSource(generator)
        slots = None
        if scheme == "uniform":
            slots = self._slot_cache.get(K)
            if slots is None:
                slots = np.zeros(self.num_episodes + 1, dtype=np.int64)
                np.cumsum(self._lengths + (K - 1), out=slots[1:])
                self._slot_cache[K] = slots
        episode, first, valid = sample_window_starts(self._lengths, self._offsets, B, K, rng, scheme, slots)

        k = np.arange(K, dtype=np.int64)
        mask = k[None, :] < valid[:, None]  # [B, K]
        steps = first[:, None] + k[None, :]  # absolute step index
        srow = np.where(mask, self._offsets[episode][:, None] + steps, self.num_steps).reshape(-1)
        orow = np.where(mask, (self._offsets[episode] + episode)[:, None] + steps, -1).reshape(-1)
        nrow = np.where(orow >= 0, orow + 1, -1)  # the zero row is the last one
        obs_dim, act_dim = self.obs_dim, self.act_dim

        def t(arr: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(arr)

        rtg = self._rtg.take(srow).reshape(B, K)
        if scale != 1.0:
            rtg = rtg / np.float32(scale)
        batch = Batch(
            observations=t(self._obs.take(orow, axis=0).reshape(B, K, obs_dim)),
            next_observations=t(self._obs.take(nrow, axis=0).reshape(B, K, obs_dim)),
            actions=t(self._act.take(srow, axis=0).reshape(B, K, act_dim)),
            rewards=t(self._rew.take(srow).reshape(B, K)),
            rtg=t(rtg),
            returns=t(self._returns.take(srow).reshape(B, K)),
            timesteps=t(np.where(mask, steps, 0)),
            terminals=t(self._term.take(srow).reshape(B, K)),
            mask=t(mask),
        )
        return batch if device is None else batch.to(device)

    # ----------------------------------------------------------------------------------- save
    def to_npz(self, path: str | os.PathLike[str], compress: bool = False) -> Path:
        """Write the dataset as a D4RL-style ``.npz`` that :func:`qtkit.data.load_dataset` reads back.

        Keys: ``observations, next_observations, actions [N, ...]``, ``rewards, terminals, timeouts [N]``,
        ``ref_min_score``, ``ref_max_score``, ``env_id`` when known, and ``qtkit_metadata`` (JSON:
        metadata, gamma, spaces, episode ids). Written to a temporary file then renamed (atomic).
        """
        path = Path(os.fspath(path))
        E, N = self.num_episodes, self.num_steps
        obs_offsets = self._offsets + np.arange(E + 1)
        obs = self._obs[:-1]
        arrays: dict[str, np.ndarray] = {
            "observations": np.delete(obs, obs_offsets[1:] - 1, axis=0),
            "next_observations": np.delete(obs, obs_offsets[:-1], axis=0),
            "actions": self._act[:N],
            "rewards": self._rew[:N],
            "terminals": self._term[:N],
            "timeouts": self._trunc[:N],
        }
        for key in ("ref_min_score", "ref_max_score"):
            if self.metadata.get(key) is not None:
                arrays[key] = np.asarray(float(self.metadata[key]))
        if self.env_id:
            arrays["env_id"] = np.asarray(self.env_id)
        extra = {
            "metadata": self.metadata,
            "gamma": self.gamma,
            "observation_space": _space_json_or_none(self._observation_space),
            "action_space": space_to_json(self._action_space),
            "episode_ids": self._ids.tolist(),
        }
        arrays["qtkit_metadata"] = np.asarray(json.dumps(extra, default=str))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                (np.savez_compressed if compress else np.savez)(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path


def _space_json_or_none(space: Any) -> str | None:
    if space is None:
        return None
    try:
        return space_to_json(space)
    except DataError:
        return None
