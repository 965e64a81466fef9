"""Pieces every maker shares: the maker result, episode assembly, seeding, scoring, progress, env cleanup."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: D4RL's reference returns (random / expert) for the -v2 MuJoCo tasks, as listed in d4rl/infos.py
#: (REF_MIN_SCORE / REF_MAX_SCORE) and in shared/docs/ANCHORS.md.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.27, 3234.3),
    "halfcheetah": (-280.18, 12135.0),
    "walker2d": (1.63, 4592.3),
}
D4RL_REF_SOURCE = "D4RL reference returns (d4rl/infos.py REF_MIN_SCORE/REF_MAX_SCORE, -v2 tasks)"

Policy = Callable[[Any], np.ndarray]


@dataclass
class Made:
    """What a maker collected; :func:`qtkit.data.makers.make_dataset` writes it as a Minari dataset."""

    episodes: list[Any]  # minari EpisodeBuffer
    env: Any  # the collection env (closed): its spec and spaces are stored
    eval_env: Any  # env id / EnvSpec for evaluation
    ref_min_score: float
    ref_max_score: float
    description: str
    algorithm_name: str
    provenance: dict[str, Any] = field(default_factory=dict)
    requirements: list[str] = field(default_factory=list)


def derive_seed(seed: int, stream: int) -> int:
    """An independent 32-bit seed for sub-stream ``stream`` of ``seed`` (env resets, noise, scoring...)."""
    return int(np.random.SeedSequence([int(seed), int(stream)]).generate_state(1)[0])


def episode_buffer(
    observations: Any,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminations: np.ndarray,
    truncations: np.ndarray,
    *,
    seed: int | None = None,
) -> Any:
    """A minari ``EpisodeBuffer`` from arrays: T+1 observations (array or dict of arrays), T of the rest."""
    from minari.data_collector import EpisodeBuffer

    n = len(rewards)
    obs_len = len(next(iter(observations.values()))) if isinstance(observations, dict) else len(observations)
    if not (obs_len == n + 1 and len(actions) == len(terminations) == len(truncations) == n):
        raise AssertionError(f"episode arrays disagree: {obs_len} observations for {n} steps")
    return EpisodeBuffer(
        seed=seed,
        observations=observations,
        actions=np.asarray(actions),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminations=np.asarray(terminations, dtype=bool),
        truncations=np.asarray(truncations, dtype=bool),
    )


def _copy_observation(obs: Any) -> Any:
    """A copy of one observation (a dict of arrays, e.g. ``{"pixels", "state"}``, copied key by key)."""
    if isinstance(obs, dict):
        return {key: np.array(value, copy=True) for key, value in obs.items()}
    return np.array(obs, copy=True)


def _stack_observations(observations: list[Any]) -> Any:
    """``[T+1, ...]`` from T+1 observations (dicts: one stacked array per key)."""
    if observations and isinstance(observations[0], dict):
        return {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    return np.stack(observations)


class EpisodeRecorder:
    """Accumulates a stream of env steps into episodes (observations keep the final one; dict observations
    such as ``{"pixels", "state"}`` are kept as dicts of arrays)."""

    def __init__(self) -> None:
        self.episodes: list[Any] = []
        self._obs: list[Any] = []
        self._act: list[np.ndarray] = []
        self._rew: list[float] = []
        self._term: list[bool] = []
        self._trunc: list[bool] = []
        self.steps = 0

    def reset(self, obs: Any) -> None:
        """Start a new episode at ``obs`` (an unfinished one is closed with a truncation)."""
        self.close()
        self._obs = [_copy_observation(obs)]

    def step(self, action: Any, obs: Any, reward: float, terminated: bool, truncated: bool) -> None:
        self._act.append(np.array(action, copy=True))
        self._obs.append(_copy_observation(obs))
        self._rew.append(float(reward))
        self._term.append(bool(terminated))
        self._trunc.append(bool(truncated))
        self.steps += 1
        if terminated or truncated:
            self._flush()

    def close(self) -> None:
        """Close the current episode as truncated (a data cut); an empty one is dropped."""
        if self._act:
            if not (self._term[-1] or self._trunc[-1]):
                self._trunc[-1] = True
            self._flush()
        self._obs = []

    def _flush(self) -> None:
        self.episodes.append(
            episode_buffer(_stack_observations(self._obs), np.stack(self._act), np.array(self._rew),
                           np.array(self._term), np.array(self._trunc))
        )
        self._obs, self._act, self._rew, self._term, self._trunc = [], [], [], [], []


def uniform_policy(action_space: Any, rng: np.random.Generator) -> Policy:
    """Uniform-random actions in a Box space, drawn from ``rng`` (not the space's own RNG)."""
    low = np.asarray(action_space.low, dtype=np.float64)
    high = np.asarray(action_space.high, dtype=np.float64)
    dtype = action_space.dtype

    def policy(_obs: Any) -> np.ndarray:
        return rng.uniform(low, high).astype(dtype)

    return policy


def mean_return(env: Any, policy: Policy, episodes: int, seed: int) -> float:
    """Mean undiscounted return of ``policy`` over ``episodes`` episodes (first reset seeded)."""
    returns = []
    obs, _ = env.reset(seed=int(seed))
    for _ in range(episodes):
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = bool(terminated or truncated)
        returns.append(total)
        obs, _ = env.reset()
    return float(np.mean(returns))


def record_steps(env: Any, act: Policy, recorder: EpisodeRecorder, steps: int, bar: Any, reset_seed: int) -> None:
    """Run ``act`` in ``env`` for ``steps`` steps, recording them in ``recorder`` (episodes cut where the env
    ends them, resets in between); the first reset uses ``reset_seed``. Advances ``bar`` by 1000s, then the rest."""
    obs, _ = env.reset(seed=int(reset_seed))
    recorder.reset(obs)
    for t in range(steps):
        action = act(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        recorder.step(action, obs, reward, terminated, truncated)
        if terminated or truncated:
            obs, _ = env.reset()
            recorder.reset(obs)
        if (t + 1) % 1000 == 0:
            bar.update(1000)
    bar.update(steps % 1000)
    recorder.close()


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar counting env steps (shows steps/s); a no-op bar when ``enabled`` is False."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="step", unit_scale=True,
                dynamic_ncols=True, mininterval=0.5, smoothing=0.1)


def close_env(env: Any) -> None:
    """Close ``env`` and delete the MJCF file a maze env leaves in the temp folder."""
    if env is None:
        return
    xml = getattr(getattr(env, "unwrapped", env), "tmp_xml_file_path", None)
    with contextlib.suppress(Exception):
        env.close()
    if xml:
        with contextlib.suppress(OSError):
            os.remove(xml)


@contextlib.contextmanager
def preserved_global_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global RNG states afterwards (libraries that seed them)."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        torch = None  # type: ignore[assignment]
    torch_state = torch.random.get_rng_state() if torch is not None else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        if torch is not None:
            torch.random.set_rng_state(torch_state)
