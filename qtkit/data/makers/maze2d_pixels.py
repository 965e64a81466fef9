"""Pixel maze2d datasets (``maze2d-{umaze,medium}[-dense]-pixels``): D4RL maze2d seen from above, 64x64 RGB.

The task is exactly the state maker's (:mod:`qtkit.data.makers.maze2d`): the same noisy BFS-waypoint + PD
planner driving to random goals in one continuous run, cut at D4RL's timeouts, rewards for the ONE fixed
target cell; only the observations change. The maker runs :func:`~qtkit.data.makers.maze2d.make_maze2d`
with the same arguments (so actions, rewards, episode cuts, reference scores are those of ``maze2d-<maze>``
with the same steps / seed / noise, bit for bit) and then renders each recorded state (x, y) with the
evaluation env's own wrapper, :class:`~qtkit.data.makers.pixels.PixelObservation` of
``qtkit/Maze2D-<Maze>[Dense]-Pixels-v0``: a fixed camera straight above the maze centre, the whole maze in
view, the ball green and the fixed target's marker red (the planner's moving goals are never drawn, so
the frames show only what the evaluation env shows). A frame depends on the position only, so the
evaluation env renders the same frame for the same state.

Storage: observations ``Box(0, 255, (64, 64, 3), uint8)``, ``[T+1, 64, 64, 3]`` per episode, written raw
(not JPEG) by :mod:`qtkit.data.makers.writer`: 12.5 kB a step on disk (hdf5, uncompressed; measured 377 MB
for 30k umaze steps), so ~126 MB per 10k steps and ~1.26 GB for the default 100k (and as much memory while
making). Speed, measured on one core (``taskset -c 0``, shared machine, Mesa llvmpipe EGL): the state run
~39k steps/s, the rendering ~400 frames/s, the whole make ~370 steps/s (30k steps in 81 s), so the
default 100k steps take ~4.5 minutes. ``ref_min_score`` / ``ref_max_score``: the state maker's (same evaluation task, same seeds:
random policy and noise-free planner on ``qtkit/Maze2D-<Maze>-v0``), not re-measured on pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np

from qtkit.data.makers import maze2d
from qtkit.data.makers.common import Made, close_env, episode_buffer, progress_bar
from qtkit.data.makers.pixels import DEFAULT_SIZE, PixelObservation, gl_backend, maze2d_pixels_env_id
from qtkit.errors import ConfigError

#: Mazes with pixel makers, and their default sizes (frames are 12 kB each: 100k steps ~1.2 GB).
DEFAULT_STEPS: dict[str, int] = {"umaze": 100_000, "medium": 200_000}


def pixel_eval_spec(env_id: str, size: int) -> Any:
    """The registered spec of pixel env ``env_id``, with ``size`` in its kwargs when not the default."""
    spec = gym.spec(env_id)
    if size != DEFAULT_SIZE:
        spec = dataclasses.replace(spec, kwargs={**spec.kwargs, "size": int(size)})
    return spec


def find_pixel_wrapper(env: Any) -> PixelObservation:
    """The :class:`PixelObservation` inside a (wrapped) env."""
    while not isinstance(env, PixelObservation):
        if not hasattr(env, "env"):
            raise TypeError(f"{env!r} has no PixelObservation wrapper")
        env = env.env
    return env


def render_states(wrapper: PixelObservation, states: list[np.ndarray], bar: Any) -> list[np.ndarray]:
    """Frames ``[T+1, size, size, 3]`` for each episode's (x, y, vx, vy) states; the first state of an
    episode that equals the previous episode's last one (the continuous run's cuts) reuses its frame."""
    out = []
    prev_state: np.ndarray | None = None
    prev_frame: np.ndarray | None = None
    for obs in states:
        frames = np.empty((len(obs), wrapper.size, wrapper.size, 3), dtype=np.uint8)
        for t, state in enumerate(obs):
            if t == 0 and prev_state is not None and np.array_equal(state, prev_state):
                frames[t] = prev_frame
            else:
                frames[t] = wrapper.frame_of(state[:2], state[2:4])
            bar.update(1)
        prev_state, prev_frame = obs[-1], frames[-1]
        out.append(frames)
    return out


def make_maze2d_pixels(
    maze: str,
    reward: str,
    *,
    steps: int,
    seed: int,
    noise: float,
    progress: bool,
    episode_length: int | None = None,
    ref_episodes: int = 50,
    size: int = DEFAULT_SIZE,
    state: bool = False,
) -> Made:
    """``maze2d-<maze>[-dense]`` with ``size`` x ``size`` RGB top-view frames as observations (module docstring).

    ``episode_length``, ``ref_episodes``: as :func:`~qtkit.data.makers.maze2d.make_maze2d`. ``size``: frame side
    in pixels (default 64; >= 32, or Minari would not see the observations as images); the evaluation env
    spec records it. ``state``: observations ``{"pixels": frame, "state": (x, y, vx, vy)}`` (the
    ``-pixels-state`` makers; evaluation env ``qtkit/Maze2D-<Maze>-PixelsState-v0``).
    """
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 512:
        raise ConfigError(f"size={size!r}: the frame side must be an integer in [32, 512] (default {DEFAULT_SIZE}).")
    name = f"maze2d-{maze}{'-dense' if reward == 'dense' else ''}-pixels{'-state' if state else ''}"
    made_state = maze2d.make_maze2d(maze, reward, steps=steps, seed=seed, noise=noise, progress=progress,
                               episode_length=episode_length, ref_episodes=ref_episodes)
    env_id = maze2d_pixels_env_id(maze, reward, state)
    eval_spec = pixel_eval_spec(env_id, size)
    env = gym.make(eval_spec)  # the renderer, and the dataset's env (spec and spaces)
    try:
        wrapper = find_pixel_wrapper(env)
        env.reset(seed=0)  # pins the goal marker on the fixed target
        states = [np.asarray(ep.observations) for ep in made_state.episodes]
        with progress_bar(sum(len(s) for s in states), progress, f"{name}: rendering") as bar:
            frames = render_states(wrapper, states, bar)
    finally:
        close_env(env)
    episodes = [
        episode_buffer({"pixels": f, "state": np.asarray(ep.observations)} if state else f, ep.actions, ep.rewards,
                       ep.terminations, ep.truncations, seed=ep.seed)
        for f, ep in zip(frames, made_state.episodes, strict=True)
    ]
    camera = wrapper.camera_spec
    description = (
        f"{name}: maze2d-{maze}{'-dense' if reward == 'dense' else ''} (below) with {size}x{size} RGB frames as "
        f"observations{' next to' if state else ' instead of'} (x, y, vx, vy): each recorded state rendered by "
        f"MuJoCo (OpenGL "
        f"{gl_backend()}, no shadows) from a fixed camera straight above the maze centre "
        f"(distance {camera['distance']}), the whole maze in view, the ball green, the fixed target's marker "
        f"red; the planner's moving goals are not drawn. Frames are stored raw (uint8, not JPEG). Evaluation "
        f"env {env_id}: the same task rendered the same way. Actions, rewards, episodes and reference scores "
        f"are those of the state dataset with the same arguments. " + made_state.description
    )
    provenance = {
        **made_state.provenance,
        "env_id": env_id,
        "state_env_id": maze2d.maze2d_env_id(maze, reward),
        "state_maker": f"maze2d-{maze}{'-dense' if reward == 'dense' else ''}",
        "pixels": {"size": size, "camera": camera, "renderer": f"mujoco mjr_render, OpenGL {gl_backend()}, "
                   "no shadows/reflections", "storage": "raw uint8 (jpeg_encoding=False)"},
        "ref_scores_source": "the state maker's (same task, same seed): "
                             f"{made_state.provenance.get('ref_max_source', '')}",
    }
    return Made(episodes=episodes, env=env, eval_env=eval_spec, ref_min_score=made_state.ref_min_score,
                ref_max_score=made_state.ref_max_score, description=description,
                algorithm_name=made_state.algorithm_name, provenance=provenance,
                requirements=list(made_state.requirements))
