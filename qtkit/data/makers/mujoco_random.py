"""``<task>-random`` datasets: a uniform-random policy in gymnasium's MuJoCo ``Hopper-v5`` /
``HalfCheetah-v5`` / ``Walker2d-v5`` (D4RL's ``-random``).

Reference scores: ``ref_min_score`` is measured here (mean return of a uniform-random policy on the -v5
env; D4RL's -v2 value is kept in the metadata for comparison), ``ref_max_score`` is D4RL's published
expert return (the -v5 tasks keep the -v2 reward terms, with small model fixes, so D4RL-normalised scores stay
roughly comparable; the sources are recorded in each dataset's description and metadata).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qtkit.data.makers.common import (
    D4RL_REF_SCORES,
    D4RL_REF_SOURCE,
    EpisodeRecorder,
    Made,
    close_env,
    derive_seed,
    mean_return,
    progress_bar,
    record_steps,
    uniform_policy,
)
from qtkit.errors import ConfigError

TASKS: dict[str, str] = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
#: Random-policy episodes for ref_min_score: hopper/walker2d random episodes last ~20 steps, halfcheetah's 1000.
DEFAULT_REF_EPISODES: dict[str, int] = {"hopper": 100, "halfcheetah": 20, "walker2d": 100}
DEFAULT_STEPS = 100_000
REQUIREMENTS = ["gymnasium[mujoco]>=1.1", "mujoco>=3.2"]


def random_reference_score(task: str, *, seed: int, episodes: int | None = None) -> tuple[float, int]:
    """(mean return of a uniform-random policy on ``TASKS[task]``, episodes used), seeded."""
    import gymnasium as gym

    n = int(episodes if episodes is not None else DEFAULT_REF_EPISODES[task])
    if n < 1:
        raise ConfigError(f"ref_episodes={episodes}: it must be >= 1 (default {DEFAULT_REF_EPISODES[task]}).")
    env = gym.make(TASKS[task])
    try:
        rng = np.random.default_rng(derive_seed(seed, 3))
        return mean_return(env, uniform_policy(env.action_space, rng), n, derive_seed(seed, 2)), n
    finally:
        close_env(env)


def reference_scores(task: str, *, seed: int, episodes: int | None = None) -> tuple[float, float, dict[str, Any]]:
    """(ref_min_score measured, ref_max_score from D4RL, provenance entries)."""
    ref_min, n = random_reference_score(task, seed=seed, episodes=episodes)
    d4rl_min, d4rl_max = D4RL_REF_SCORES[task]
    provenance = {
        "ref_min_source": f"measured: uniform-random policy, mean over {n} episodes of {TASKS[task]}",
        "ref_max_source": f"{D4RL_REF_SOURCE}: {task} expert {d4rl_max}",
        "d4rl_ref_min_score": d4rl_min,
        "d4rl_ref_max_score": d4rl_max,
    }
    return ref_min, d4rl_max, provenance


def record_uniform_policy(env: Any, *, steps: int, seed: int, progress: bool, label: str) -> EpisodeRecorder:
    """``steps`` steps of uniform-random actions in ``env`` (closed afterwards), as the ``*-random`` makers record
    them: the action stream from ``derive_seed(seed, 1)``, the first reset with ``seed``. The pixel makers use
    it too, so ``hopper-random-pixels`` has exactly ``hopper-random``'s actions, rewards and episodes."""
    recorder = EpisodeRecorder()
    try:
        policy = uniform_policy(env.action_space, np.random.default_rng(derive_seed(seed, 1)))
        with progress_bar(steps, progress, label) as bar:
            record_steps(env, policy, recorder, steps, bar, reset_seed=seed)
    finally:
        close_env(env)
    return recorder


def make_mujoco_random(
    task: str, *, steps: int, seed: int, progress: bool, noise: None = None, ref_episodes: int | None = None
) -> Made:
    """``steps`` steps of uniform-random actions in ``TASKS[task]``; episodes end as the env ends them
    (termination, or truncation at 1000 steps); the last one is cut with a truncation at ``steps``."""
    import gymnasium as gym

    env = gym.make(TASKS[task])
    recorder = record_uniform_policy(env, steps=steps, seed=seed, progress=progress, label=f"{task}-random")

    ref_min, ref_max, provenance = reference_scores(task, seed=seed, episodes=ref_episodes)
    description = (
        f"{TASKS[task]} random (D4RL-style {task}-random): {steps} steps of a uniform-random policy; "
        f"episodes end with the env's termination or its 1000-step truncation, the last one is cut "
        f"(truncated) at {steps} steps. ref_min_score: {provenance['ref_min_source']} "
        f"(D4RL -v2: {provenance['d4rl_ref_min_score']}); ref_max_score: {provenance['ref_max_source']}. "
        f"Made by qtkit.data.make_dataset(seed={seed})."
    )
    return Made(episodes=recorder.episodes, env=env, eval_env=env.spec, ref_min_score=ref_min,
                ref_max_score=ref_max, description=description, algorithm_name="uniform-random",
                provenance={"env_id": TASKS[task], **provenance}, requirements=list(REQUIREMENTS))
