"""``hopper-random-pixels``: ``hopper-random`` (:mod:`qtkit.data.makers.mujoco_random`) seen by a camera.

The uniform-random policy of ``hopper-random`` (same NumPy stream, same reset seed, so the same actions,
rewards, terminations and episode cuts as ``hopper-random`` with the same steps and seed) runs in
``qtkit/Hopper-Pixels-v0``: ``Hopper-v5`` whose observations are 64x64 RGB frames from a camera tracking the
torso from the side (gymnasium's default hopper view: distance 3, elevation -20; MuJoCo's renderer, EGL
headless, no shadows). The evaluation env is that id. Reference scores: ``hopper-random``'s (ref_min
measured with the random policy on the state env, ref_max D4RL's expert return), not re-measured.
Frames are stored raw (uint8). Measured on one core: ~157 steps/s (random hopper episodes last ~20 steps,
so resets are frequent), 5k steps in 34 s, so the default 100k take ~11 minutes; 95 MB on disk per 5k steps
(~19 kB a step: a frame is 12.3 kB, the rest is per-episode hdf5 overhead of the short episodes).
"""

from __future__ import annotations

import gymnasium as gym

from qtkit.data.makers.common import (
    Made,
)
from qtkit.data.makers.maze2d_pixels import find_pixel_wrapper, pixel_eval_spec
from qtkit.data.makers.mujoco_random import REQUIREMENTS, TASKS, record_uniform_policy, reference_scores
from qtkit.data.makers.pixels import DEFAULT_SIZE, MUJOCO_TASKS, gl_backend, hopper_pixels_env_id, register_pixel_envs
from qtkit.errors import ConfigError

DEFAULT_STEPS = 100_000


def make_mujoco_random_pixels(task: str, *, steps: int, seed: int, progress: bool, noise: None = None,
                              ref_episodes: int | None = None, size: int = DEFAULT_SIZE, state: bool = False) -> Made:
    """``steps`` steps of uniform-random actions in ``qtkit/<Task>-Pixels-v0`` (module docstring); ``state``:
    ``{"pixels", "state"}`` observations in ``qtkit/<Task>-PixelsState-v0`` (the frames and the state env's
    observation, e.g. Hopper's 11 joint positions and velocities)."""
    if task not in MUJOCO_TASKS:
        raise ConfigError(f"no pixel env for {task!r}; pixel locomotion tasks: {', '.join(MUJOCO_TASKS)}.")
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 512:
        raise ConfigError(f"size={size!r}: the frame side must be an integer in [32, 512] (default {DEFAULT_SIZE}).")
    register_pixel_envs()
    env_id = hopper_pixels_env_id(task, state)
    eval_spec = pixel_eval_spec(env_id, size)
    env = gym.make(eval_spec)
    name = f"{task}-random-pixels{'-state' if state else ''}"
    camera = find_pixel_wrapper(env).camera_spec
    recorder = record_uniform_policy(env, steps=steps, seed=seed, progress=progress, label=name)

    ref_min, ref_max, provenance = reference_scores(task, seed=seed, episodes=ref_episodes)
    description = (
        f"{name}: {TASKS[task]} random (as {task}-random with the same seed: same actions, rewards and episodes) "
        f"with {size}x{size} RGB frames as observations{' (next to the state vector)' if state else ''}: "
        f"MuJoCo's renderer (OpenGL {gl_backend()}, no shadows), "
        f"a camera tracking the torso (distance {camera['distance']}, elevation {camera['elevation']}). Frames are "
        f"stored raw (uint8, not JPEG). {steps} steps of a uniform-random policy; episodes end with the env's "
        f"termination or its 1000-step truncation, the last one is cut (truncated) at {steps} steps. Evaluation "
        f"env {env_id}. ref_min_score: {provenance['ref_min_source']} (the state env; D4RL -v2: "
        f"{provenance['d4rl_ref_min_score']}); ref_max_score: {provenance['ref_max_source']}. "
        f"Made by qtkit.data.make_dataset(seed={seed})."
    )
    provenance = {
        "env_id": env_id, "state_env_id": TASKS[task], "state_maker": f"{task}-random", **provenance,
        "pixels": {"size": size, "camera": camera, "renderer": f"mujoco mjr_render, OpenGL {gl_backend()}, "
                   "no shadows/reflections", "storage": "raw uint8 (jpeg_encoding=False)"},
    }
    return Made(episodes=recorder.episodes, env=env, eval_env=eval_spec, ref_min_score=ref_min,
                ref_max_score=ref_max, description=description, algorithm_name="uniform-random",
                provenance=provenance, requirements=list(REQUIREMENTS))

