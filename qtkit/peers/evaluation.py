"""Evaluation for peers with qtkit's episodes and seeds (the loop of ``qtkit.agents.evaluation.evaluate_agent``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtkit.errors import ConfigError


def evaluate_actor(make_actor: Callable[[int], Any], env: Any, episodes: int = 10, seed: int = 0,
                   ref_scores: tuple[float, float] | None = None, num_envs: int | None = None) -> dict[str, Any]:
    """Run ``episodes`` episodes in ``min(episodes, 10)`` vector envs reset with seeds ``seed + i``.

    ``make_actor(n)`` returns an object with ``act(observations [n, obs]) -> actions [n, act]`` and
    ``observe(rewards [n], dones [n])``. The loop is qtkit's own (:func:`qtkit.agents.evaluation.run_episodes`):
    same episode split, seeds and autoreset, so a peer and a preset see the same start states.
    """
    import gymnasium as gym

    from qtkit.agents.evaluation import env_factory, run_episodes

    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}.")
    n = max(1, min(episodes, num_envs or min(episodes, 10)))
    envs = gym.vector.SyncVectorEnv([env_factory(env)] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return run_episodes(envs, make_actor(n), episodes, seed=seed, ref_scores=ref_scores)
