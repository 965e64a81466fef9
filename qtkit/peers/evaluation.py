"""Evaluation for peers with qtkit's episodes and seeds (the loop of ``qtkit.agents.evaluation.evaluate_agent``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from qtkit.errors import ConfigError


def _factory(env: Any) -> Callable[[], Any]:
    import gymnasium as gym

    if isinstance(env, str):
        spec: Any = env
        if env.lstrip().startswith("{"):
            from gymnasium.envs.registration import EnvSpec

            spec = EnvSpec.from_json(env)
        return lambda: gym.make(spec)
    if hasattr(env, "make_env"):
        return env.make_env
    if callable(env):
        return env
    raise ConfigError(f"cannot evaluate on {env!r}: give a gymnasium id, an env factory or the dataset.")


def evaluate_actor(make_actor: Callable[[int], Any], env: Any, episodes: int = 10, seed: int = 0,
                   ref_scores: tuple[float, float] | None = None, num_envs: int | None = None) -> dict[str, Any]:
    """Run ``episodes`` episodes in ``min(episodes, 10)`` vector envs reset with seeds ``seed + i``.

    ``make_actor(n)`` returns an object with ``act(observations [n, obs]) -> actions [n, act]`` and
    ``observe(rewards [n], dones [n])``. Same episode split, seeds and autoreset as qtkit's own
    evaluation, so a peer and a preset see the same start states. Returns ``mean_return``, ``std_return``,
    ``mean_length``, ``episodes``, ``returns`` and, with ``ref_scores``, ``normalized_score``/``normalized_std``.
    """
    import gymnasium as gym

    from qtkit.data import flatten_observation

    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}.")
    factory = _factory(env)
    n = max(1, min(episodes, num_envs or min(episodes, 10)))
    envs = gym.vector.SyncVectorEnv([factory] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    space, act_space = envs.single_observation_space, envs.single_action_space
    quota = [episodes // n + (1 if i < episodes % n else 0) for i in range(n)]
    counts, returns, lengths = [0] * n, [], []
    running, steps = np.zeros(n), np.zeros(n, dtype=int)
    actor = make_actor(n)
    observations, _ = envs.reset(seed=[seed + i for i in range(n)])
    try:
        while sum(counts) < episodes:
            actions = actor.act(np.asarray(flatten_observation(space, observations), dtype=np.float32))
            actions = np.clip(actions.reshape((n, *act_space.shape)), act_space.low, act_space.high)
            observations, rewards, terminated, truncated, _ = envs.step(actions.astype(act_space.dtype))
            done = np.logical_or(terminated, truncated)
            running += rewards
            steps += 1
            actor.observe(rewards, done)
            for i in np.flatnonzero(done):
                if counts[i] < quota[i]:
                    returns.append(float(running[i]))
                    lengths.append(int(steps[i]))
                    counts[i] += 1
                running[i], steps[i] = 0.0, 0
    finally:
        envs.close()
    result: dict[str, Any] = {
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "episodes": len(returns),
        "returns": returns,
    }
    if ref_scores is not None:
        lo, hi = ref_scores
        scores = [100.0 * (r - lo) / (hi - lo) if hi != lo else math.nan for r in returns]
        result["normalized_score"] = float(np.mean(scores))
        result["normalized_std"] = float(np.std(scores))
    return result
