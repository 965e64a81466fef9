"""Goal-conditioned PointMaze datasets (gymnasium-robotics ``PointMaze_*-v3``) from a waypoint expert.

These are goal-conditioned, like Minari's D4RL/pointmaze datasets: ``desired_goal`` is in the observation
and the reward is relative to the moving goal, so imitation alone reaches the goal and no stitching is
needed. D4RL's maze2d setting (flat (x, y, vx, vy) observations, rewards for one fixed target, where a
learner must stitch) is :mod:`qtkit.data.makers.maze2d`, which reuses this module's expert and collector.

The expert (D4RL's ``WaypointController`` idea): a breadth-first search over the maze's free cells from
the goal cell (once per goal cell, cached) gives every cell the next cell on a shortest path; the action
is a PD force towards that next cell's centre (or towards the goal itself inside the goal cell),
``clip(kp·(target − pos) − kd·vel, −1, 1)``, plus Gaussian noise ``N(0, noise²)`` and clipped again.

Collection (D4RL maze2d's procedure): one long continuous run in ``PointMaze_*-v3`` with
``continuing_task=True, reset_target=True`` (a new goal is sampled as soon as one is reached, the ball
is never reset), cut every ``episode_length``
steps into episodes that end with a truncation; episode k+1 starts at episode k's final observation.
Observations are stored as the env returns them: dicts ``observation`` (x, y, vx, vy), ``achieved_goal``
(x, y) and ``desired_goal`` (x, y); actions are forces in [-1, 1]².
"""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np

from qtkit.data.makers.common import (
    Made,
    close_env,
    derive_seed,
    episode_buffer,
    mean_return,
    progress_bar,
    uniform_policy,
)
from qtkit.errors import ConfigError

MAZES: dict[str, str] = {"umaze": "PointMaze_UMaze", "medium": "PointMaze_Medium", "large": "PointMaze_Large"}
#: Default dataset sizes (D4RL's maze2d used 1M / 2M / 4M; these keep ``make demo`` quick).
DEFAULT_STEPS: dict[str, int] = {"umaze": 100_000, "medium": 200_000, "large": 400_000}
DEFAULT_NOISE = 0.5
REQUIREMENTS = ["gymnasium-robotics>=1.4", "mujoco>=3.2"]


def pointmaze_env_id(maze: str, reward: str) -> str:
    """``PointMaze_UMaze-v3`` / ``PointMaze_UMazeDense-v3`` ..."""
    return f"{MAZES[maze]}{'Dense' if reward == 'dense' else ''}-v3"


def _import_robotics() -> None:
    from qtkit.data.loading import register_robotics_envs

    register_robotics_envs()


class WaypointExpert:
    """Shortest-path waypoints (BFS over cells, cached per goal cell) followed by a PD controller.

    ``expert(obs)`` takes a PointMaze dict observation and returns a noise-free force in [-1, 1]².
    """

    def __init__(self, maze: Any, kp: float = 10.0, kd: float = 1.0) -> None:
        self.maze = maze
        self.kp, self.kd = float(kp), float(kd)
        self._walls = [[cell == 1 for cell in row] for row in maze.maze_map]
        self._scale = float(maze.maze_size_scaling)
        self._xc, self._yc = float(maze.x_map_center), float(maze.y_map_center)
        self._tables: dict[tuple[int, int], dict[tuple[int, int], tuple[float, float]]] = {}

    @classmethod
    def from_env(cls, env: Any, **kwargs: Any) -> WaypointExpert:
        """The expert for a (possibly wrapped) PointMaze env."""
        return cls(env.unwrapped.maze, **kwargs)

    def cell(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the cell holding point (x, y)."""
        return math.floor((self._yc - y) / self._scale), math.floor((x + self._xc) / self._scale)

    def waypoints(self, goal_cell: tuple[int, int]) -> dict[tuple[int, int], tuple[float, float]]:
        """Cell -> centre (x, y) of the next cell on a shortest path to ``goal_cell`` (BFS, cached)."""
        table = self._tables.get(goal_cell)
        if table is not None:
            return table
        rows, cols = len(self._walls), len(self._walls[0])
        moves = ((-1, 0), (1, 0), (0, -1), (0, 1))
        dist = {goal_cell: 0}
        queue = collections.deque([goal_cell])
        while queue:
            i, j = queue.popleft()
            for di, dj in moves:
                n = (i + di, j + dj)
                if 0 <= n[0] < rows and 0 <= n[1] < cols and not self._walls[n[0]][n[1]] and n not in dist:
                    dist[n] = dist[(i, j)] + 1
                    queue.append(n)
        table = {}
        for (i, j), d in dist.items():
            for di, dj in moves:
                n = (i + di, j + dj)
                if d > 0 and dist.get(n) == d - 1:
                    table[(i, j)] = ((n[1] + 0.5) * self._scale - self._xc, self._yc - (n[0] + 0.5) * self._scale)
                    break
        self._tables[goal_cell] = table
        return table

    def act(self, x: float, y: float, vx: float, vy: float, gx: float, gy: float) -> tuple[float, float]:
        """Noise-free PD force (unclipped components are clipped to [-1, 1])."""
        goal_cell = self.cell(gx, gy)
        here = self.cell(x, y)
        tx, ty = (gx, gy) if here == goal_cell else self.waypoints(goal_cell).get(here, (gx, gy))
        fx = self.kp * (tx - x) - self.kd * vx
        fy = self.kp * (ty - y) - self.kd * vy
        return min(1.0, max(-1.0, fx)), min(1.0, max(-1.0, fy))

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        o, g = obs["observation"], obs["desired_goal"]
        return np.array(self.act(float(o[0]), float(o[1]), float(o[2]), float(o[3]), float(g[0]), float(g[1])),
                        dtype=np.float32)


def make_pointmaze(
    maze: str,
    reward: str,
    *,
    steps: int,
    seed: int,
    noise: float,
    progress: bool,
    episode_length: int | None = None,
    ref_episodes: int = 50,
) -> Made:
    """Collect ``steps`` steps of the noisy waypoint expert in ``PointMaze_<maze>[Dense]-v3``.

    ``episode_length``: where the continuous run is cut (default: the env's max_episode_steps, 300 /
    600 / 800). ``ref_episodes``: episodes of the evaluation env (fixed goal, standard length) over which
    the uniform-random policy (ref_min_score) and the noise-free expert (ref_max_score) are averaged.
    """
    import gymnasium as gym

    _import_robotics()
    env_id = pointmaze_env_id(maze, reward)
    eval_spec = gym.spec(env_id)
    length = int(eval_spec.max_episode_steps if episode_length is None else episode_length)
    if length < 1:
        raise ConfigError(f"episode_length={episode_length} for {env_id}: it must be >= 1 (default: "
                          f"{eval_spec.max_episode_steps}, the env's max_episode_steps).")
    if ref_episodes < 1:
        raise ConfigError(f"ref_episodes={ref_episodes}: it must be >= 1 (default 50).")

    env = gym.make(env_id, continuing_task=True, reset_target=True, max_episode_steps=length)
    try:
        expert = WaypointExpert.from_env(env)
        obs_arr, act, rew = _collect(env, expert, steps=steps, seed=seed, noise=noise, progress=progress,
                                     desc=f"pointmaze-{maze}-{reward}")
    finally:
        close_env(env)

    episodes = cut_into_episodes(obs_arr, act, rew, length, seed)

    ref_min, ref_max = reference_scores(env_id, expert, episodes=ref_episodes, seed=seed)
    description = (
        f"Goal-conditioned PointMaze {maze} ({reward} reward, {env_id}; desired_goal in the observation, reward "
        f"relative to the moving goal): {steps} steps of a shortest-path waypoint expert "
        f"(BFS over maze cells + PD controller, kp={expert.kp}, kd={expert.kd}) with N(0, {noise}^2) action "
        f"noise, collected D4RL maze2d-style as one continuous run (continuing_task=True, reset_target=True: a "
        f"new goal is sampled whenever one is reached) cut into episodes of {length} steps that end in a "
        f"truncation. ref_min_score = mean return of a uniform-random policy, ref_max_score = mean return of "
        f"the noise-free expert, each over {ref_episodes} episodes of the evaluation env {env_id} (fixed goal, "
        f"{eval_spec.max_episode_steps} steps). Made by qtkit.data.make_dataset(seed={seed})."
    )
    provenance = {
        "env_id": env_id,
        "episode_length": length,
        "expert": {"type": "bfs-waypoint-pd", "kp": expert.kp, "kd": expert.kd},
        "ref_min_source": f"measured: uniform-random policy, mean over {ref_episodes} episodes of {env_id}",
        "ref_max_source": f"measured: noise-free waypoint expert, mean over {ref_episodes} episodes of {env_id}",
    }
    return Made(episodes=episodes, env=env, eval_env=eval_spec, ref_min_score=ref_min, ref_max_score=ref_max,
                description=description, algorithm_name="qtkit-bfs-waypoint-pd-expert", provenance=provenance,
                requirements=list(REQUIREMENTS))


def _collect(env: Any, expert: WaypointExpert, *, steps: int, seed: int, noise: float, progress: bool,
             desc: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One continuous run of ``steps`` steps; returns (observations [steps+1] per key, actions, rewards)."""
    rng = np.random.default_rng(derive_seed(seed, 1))
    base = env.unwrapped  # the continuous run ignores the TimeLimit: episodes are cut afterwards
    obs, _ = env.reset(seed=int(seed))
    obs_arr = {k: np.empty((steps + 1, *np.shape(v)), dtype=np.float64) for k, v in obs.items()}
    for k, v in obs.items():
        obs_arr[k][0] = v
    act = np.empty((steps, 2), dtype=env.action_space.dtype)
    rew = np.empty(steps, dtype=np.float64)
    noise_draws = rng.standard_normal((steps, 2)) * noise if noise > 0 else np.zeros((steps, 2))
    keys = list(obs_arr)
    chunk = 1000
    with progress_bar(steps, progress, desc) as bar:
        for t in range(steps):
            o, g = obs["observation"], obs["desired_goal"]
            fx, fy = expert.act(float(o[0]), float(o[1]), float(o[2]), float(o[3]), float(g[0]), float(g[1]))
            a = act[t]
            a[0] = min(1.0, max(-1.0, fx + noise_draws[t, 0]))
            a[1] = min(1.0, max(-1.0, fy + noise_draws[t, 1]))
            obs, reward, _, _, _ = base.step(a)
            rew[t] = reward
            for k in keys:
                obs_arr[k][t + 1] = obs[k]
            if (t + 1) % chunk == 0:
                bar.update(chunk)
        bar.update(steps % chunk)
    return obs_arr, act, rew


def cut_into_episodes(observations: Any, actions: np.ndarray, rewards: np.ndarray, length: int,
                      seed: int) -> list[Any]:
    """One continuous run cut every ``length`` steps into episodes that end in a truncation (never a termination).

    observations: ``[steps + 1, ...]`` array or dict of such arrays (episode k+1 starts at episode k's final
    observation); actions ``[steps, act]``; rewards ``[steps]``. Returns minari ``EpisodeBuffer``s.
    """
    steps = len(rewards)
    episodes = []
    for start in range(0, steps, length):
        stop = min(start + length, steps)
        n = stop - start
        truncations = np.zeros(n, dtype=bool)
        truncations[-1] = True
        window = ({k: v[start : stop + 1] for k, v in observations.items()} if isinstance(observations, dict)
                  else observations[start : stop + 1])
        episodes.append(episode_buffer(window, actions[start:stop], rewards[start:stop], np.zeros(n, dtype=bool),
                                       truncations, seed=seed if start == 0 else None))
    return episodes


def reference_scores(env_id: str, expert: Any, *, episodes: int, seed: int) -> tuple[float, float]:
    """(uniform-random mean return, ``expert``'s mean return) over ``episodes`` episodes of the evaluation env."""
    import gymnasium as gym

    eval_seed = derive_seed(seed, 2)
    env = gym.make(env_id)
    try:
        rng = np.random.default_rng(derive_seed(seed, 3))
        ref_min = mean_return(env, uniform_policy(env.action_space, rng), episodes, eval_seed)
        ref_max = mean_return(env, expert, episodes, eval_seed)
    finally:
        close_env(env)
    return ref_min, ref_max
