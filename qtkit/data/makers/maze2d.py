"""D4RL maze2d datasets (``maze2d-{open,umaze,medium,large}[-dense]``): one fixed target, flat observations.

What makes them D4RL's maze2d (ALGORITHMS.md §4, "D4RL maze2d semantics") rather than the
goal-conditioned ``pointmaze-*`` datasets:

- observations are (x, y, vx, vy) only (``Box(4)``, no goal in them); actions are forces in [-1, 1]²;
  the physics is gymnasium-robotics' PointMaze (``PointMaze_<Maze>-v3``, cells 1 unit, dt 0.01 s).
- the data: the waypoint planner of :mod:`qtkit.data.makers.pointmaze` (BFS over cells + PD, kp 10, kd 1,
  as D4RL's ``WaypointController``) plus ``N(0, noise²)`` action noise clipped to [-1, 1] (D4RL's
  ``generate_maze2d_datasets.py --noisy``) drives to random goal cells in ONE continuous run (a new random
  goal whenever one is reached: ``pointmaze._collect`` with ``continuing_task=True, reset_target=True``),
  cut into episodes at D4RL's timeouts (open 150, umaze 300, medium 600, large 800 steps), each ending in
  a truncation, never a termination.
- rewards are computed for ONE FIXED evaluation target per maze, not for the planner's moving goals, on
  the observation after the step: sparse ``1.0 if ||(x, y) - target|| <= 0.5 else 0.0``, dense
  ``exp(-||(x, y) - target||)`` (D4RL's ``MazeEnv.step``). So a trajectory earns reward only while it
  happens to pass the target, and a return-conditioned learner must stitch such segments.

Fixed targets: the ``G`` cell of D4RL's maze strings (``d4rl/pointmaze/maze_model.py``: U_MAZE, MEDIUM_MAZE,
LARGE_MAZE, OPEN; ``MazeEnv.__init__`` sets the target to that cell exactly, without noise). The maze
layouts of gymnasium-robotics' ``maps`` (U_MAZE, MEDIUM_MAZE, LARGE_MAZE, OPEN) are D4RL's, row by row, so
the same (row, col) is used: umaze (1, 1) (the end of the U's top arm), medium (6, 6), large (7, 9), open
(2, 3) (the arena's centre). The target is the exact cell centre in gymnasium-robotics' coordinates
(``maze.cell_rowcol_to_xy``; D4RL's x/y axes differ, the cell is the same).

Evaluation env (:class:`Maze2DEnv`, ids ``qtkit/Maze2D-{Open,UMaze,Medium,Large}[Dense]-v0``): D4RL's
``MazeEnv`` on gymnasium-robotics physics. Reset: a uniformly random free cell (the target cell included,
as D4RL's ``empty_and_goal_locations``), its centre plus uniform(-0.1, 0.1) per coordinate, velocity
``N(0, 0.1²)`` per coordinate (D4RL's ``reset_model``). The target never moves, ``terminated`` is always
False, episodes are truncated at D4RL's horizon (the registered ``max_episode_steps``). A made dataset
records this env as both its collection and its evaluation env spec, so ``recover_environment()`` and
``TrajectoryDataset.make_env()`` give the fixed-target task. ``register_maze2d_envs`` registers the ids
(on import of this module; ``qtkit.data.loading.register_robotics_envs`` calls it too).

``ref_min_score`` / ``ref_max_score``: measured mean return over ``ref_episodes`` episodes of that env of
the uniform-random policy and of the noise-free planner driving to the fixed target.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from qtkit.data.makers.common import Made, close_env
from qtkit.data.makers.pointmaze import (
    DEFAULT_NOISE,
    REQUIREMENTS,
    WaypointExpert,
    _collect,
    _import_robotics,
    cut_into_episodes,
    reference_scores,
)
from qtkit.errors import ConfigError

__all__ = [
    "DEFAULT_NOISE",
    "MAZES",
    "Maze2DEnv",
    "make_maze2d",
    "maze2d_env_id",
    "register_maze2d_envs",
    "target_rewards",
]

ENTRY_POINT = "qtkit.data.makers.maze2d:Maze2DEnv"
REWARDS = ("sparse", "dense")
#: Sparse reward radius around the target (D4RL's ``MazeEnv.step``; gymnasium-robotics uses 0.45).
TARGET_RADIUS = 0.5
#: D4RL's reset noise: uniform(-0.1, 0.1) on the cell centre, N(0, 0.1²) on the velocity.
RESET_POS_NOISE = 0.1
RESET_VEL_STD = 0.1


@dataclass(frozen=True)
class Maze2DSpec:
    """One D4RL maze2d maze."""

    title: str  # the gymnasium-robotics / qtkit id part: PointMaze_<title>-v3, qtkit/Maze2D-<title>-v0
    map_name: str  # name in gymnasium_robotics.envs.maze.maps
    target: tuple[int, int]  # (row, col) of D4RL's G cell
    horizon: int  # D4RL's max_episode_steps (the data's timeouts, the eval episode length)
    default_steps: int  # D4RL's dataset size

    @property
    def pointmaze_id(self) -> str:
        return f"PointMaze_{self.title}-v3"


MAZES: dict[str, Maze2DSpec] = {
    "open": Maze2DSpec("Open", "OPEN", (2, 3), 150, 1_000_000),
    "umaze": Maze2DSpec("UMaze", "U_MAZE", (1, 1), 300, 1_000_000),
    "medium": Maze2DSpec("Medium", "MEDIUM_MAZE", (6, 6), 600, 2_000_000),
    "large": Maze2DSpec("Large", "LARGE_MAZE", (7, 9), 800, 4_000_000),
}


def _check(maze: str, reward: str) -> Maze2DSpec:
    if maze not in MAZES:
        raise ConfigError(f"maze2d: unknown maze {maze!r}; expected one of {', '.join(MAZES)}.")
    if reward not in REWARDS:
        raise ConfigError(f"maze2d: unknown reward type {reward!r}; expected 'sparse' or 'dense'.")
    return MAZES[maze]


def maze2d_env_id(maze: str, reward: str) -> str:
    """``qtkit/Maze2D-UMaze-v0`` / ``qtkit/Maze2D-UMazeDense-v0`` ..."""
    spec = _check(maze, reward)
    return f"qtkit/Maze2D-{spec.title}{'Dense' if reward == 'dense' else ''}-v0"


def register_maze2d_envs() -> None:
    """Register the evaluation envs ``qtkit/Maze2D-*-v0`` with gymnasium (idempotent), and the pixel ones
    (``qtkit/Maze2D-*-Pixels-v0``, ``qtkit/Hopper-Pixels-v0``: :func:`qtkit.data.makers.pixels.register_pixel_envs`)."""
    for maze, spec in MAZES.items():
        for reward in REWARDS:
            env_id = maze2d_env_id(maze, reward)
            if env_id not in gym.registry:
                gym.register(id=env_id, entry_point=ENTRY_POINT, max_episode_steps=spec.horizon,
                             kwargs={"maze": maze, "reward_type": reward})
    from qtkit.data.makers.pixels import register_pixel_envs

    register_pixel_envs()


def target_rewards(xy: np.ndarray, target: np.ndarray, reward: str) -> np.ndarray:
    """Rewards for positions ``xy`` [..., 2] (the observations after the steps) and the fixed ``target``."""
    d = np.asarray(xy, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    dist = np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1])
    if reward == "sparse":
        return (dist <= TARGET_RADIUS).astype(np.float64)
    if reward == "dense":
        return np.exp(-dist)
    raise ConfigError(f"maze2d: unknown reward type {reward!r}; expected 'sparse' or 'dense'.")


def _maze_map(spec: Maze2DSpec) -> list[list[Any]]:
    _import_robotics()  # quiet import of gymnasium_robotics
    from gymnasium_robotics.envs.maze import maps

    maze_map = getattr(maps, spec.map_name)
    i, j = spec.target
    if maze_map[i][j] == 1:  # pragma: no cover - a changed upstream map
        raise AssertionError(f"maze2d target cell {spec.target} is a wall in maps.{spec.map_name}")
    return maze_map


class Maze2DEnv(gym.Env):
    """D4RL's maze2d task on gymnasium-robotics' PointMaze physics (see the module docstring).

    Wraps a ``PointMazeEnv`` (``self.point_maze``) by composition: its MuJoCo model and ``point_env.step``
    (action clip, velocity clip to [-5, 5], one 0.01 s step) are used; its goal is pinned to the fixed
    target (for rendering) and its goal-conditioned reward/termination are not used.
    ``reset(options={"reset_cell": (i, j)})`` starts in a chosen cell (default: a uniformly random free one).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 100}

    def __init__(self, maze: str = "umaze", reward_type: str = "sparse", render_mode: str | None = None,
                 **kwargs: Any) -> None:
        from gymnasium import spaces

        spec = _check(maze, reward_type)
        maze_map = _maze_map(spec)
        from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

        self.maze_name, self.reward_type, self.render_mode = maze, reward_type, render_mode
        self.point_maze = PointMazeEnv(maze_map=maze_map, render_mode=render_mode, reward_type=reward_type,
                                       continuing_task=True, reset_target=False, **kwargs)
        self.point_maze.position_noise_range = 0.0  # the goal sits exactly on the target; reset noise is ours
        self.maze = self.point_maze.maze
        self.tmp_xml_file_path = self.point_maze.tmp_xml_file_path
        self.target_cell = spec.target
        self.target = np.asarray(self.maze.cell_rowcol_to_xy(np.array(spec.target)), dtype=np.float64)
        self.free_cells = [(i, j) for i, row in enumerate(maze_map) for j, c in enumerate(row) if c != 1]
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)
        self.action_space = self.point_maze.action_space

    def _info(self, obs: np.ndarray) -> dict[str, Any]:
        return {"success": bool(target_rewards(obs[:2], self.target, "sparse") > 0)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        cell = (options or {}).get("reset_cell")
        if cell is None:
            cell = self.free_cells[int(self.np_random.integers(len(self.free_cells)))]
        cell = (int(cell[0]), int(cell[1]))
        if cell not in self.free_cells:
            raise ValueError(f"reset_cell {cell} is not a free cell of the {self.maze_name} maze")
        self.point_maze.reset(seed=seed, options={"goal_cell": np.array(self.target_cell), "reset_cell": np.array(cell)})
        qpos = self.maze.cell_rowcol_to_xy(np.array(cell)) + self.np_random.uniform(-RESET_POS_NOISE, RESET_POS_NOISE, 2)
        qvel = self.np_random.standard_normal(2) * RESET_VEL_STD
        point_env = self.point_maze.point_env
        point_env.set_state(qpos, qvel)
        obs = np.concatenate([point_env.data.qpos, point_env.data.qvel]).astype(np.float64)
        return obs, {**self._info(obs), "reset_cell": cell}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, _, _, _, _ = self.point_maze.point_env.step(action)
        obs = np.asarray(obs, dtype=np.float64)
        reward = float(target_rewards(obs[:2], self.target, self.reward_type))
        return obs, reward, False, False, self._info(obs)

    def render(self) -> Any:
        return self.point_maze.render()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.point_maze.close()
        with contextlib.suppress(OSError):  # the MJCF file PointMazeEnv leaves in the temp folder
            os.remove(self.tmp_xml_file_path)


def planner_policy(expert: WaypointExpert, target: np.ndarray) -> Any:
    """The noise-free planner driving to the fixed ``target``, for flat (x, y, vx, vy) observations."""
    tx, ty = float(target[0]), float(target[1])

    def policy(obs: np.ndarray) -> np.ndarray:
        return np.array(expert.act(float(obs[0]), float(obs[1]), float(obs[2]), float(obs[3]), tx, ty),
                        dtype=np.float32)

    return policy


def make_maze2d(
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
    """Collect ``steps`` steps of the noisy planner in ``maze``, rewards for its fixed target (``reward``).

    ``episode_length``: where the continuous run is cut (default: D4RL's timeout, 150 / 300 / 600 / 800).
    ``ref_episodes``: episodes of the evaluation env over which the uniform-random policy (ref_min_score)
    and the noise-free planner to the target (ref_max_score) are averaged.
    """
    spec = _check(maze, reward)
    _import_robotics()  # registers gymnasium-robotics' envs and ours
    register_maze2d_envs()
    env_id = maze2d_env_id(maze, reward)
    length = int(spec.horizon if episode_length is None else episode_length)
    if length < 1:
        raise ConfigError(f"episode_length={episode_length} for {env_id}: it must be >= 1 (default: "
                          f"{spec.horizon}, D4RL's timeout for maze2d-{maze}).")
    if ref_episodes < 1:
        raise ConfigError(f"ref_episodes={ref_episodes}: it must be >= 1 (default 50).")

    collect_env = gym.make(spec.pointmaze_id, continuing_task=True, reset_target=True,
                           max_episode_steps=length)
    try:
        expert = WaypointExpert.from_env(collect_env)
        target = np.asarray(collect_env.unwrapped.maze.cell_rowcol_to_xy(np.array(spec.target)), dtype=np.float64)
        obs_arr, act, _ = _collect(collect_env, expert, steps=steps, seed=seed, noise=noise, progress=progress,
                                   desc=f"maze2d-{maze}{'-dense' if reward == 'dense' else ''}")
    finally:
        close_env(collect_env)
    obs = obs_arr.pop("observation")  # (x, y, vx, vy); the moving goals are dropped
    del obs_arr
    rew = target_rewards(obs[1:, :2], target, reward)

    episodes = cut_into_episodes(obs, act, rew, length, seed)
    env = gym.make(env_id)  # stored as the dataset's env (spec and spaces): the fixed-target env, not the physics one
    close_env(env)
    ref_min, ref_max = reference_scores(env_id, planner_policy(expert, target), episodes=ref_episodes, seed=seed)

    name = f"maze2d-{maze}{'-dense' if reward == 'dense' else ''}"
    description = (
        f"D4RL-style {name} ({reward} reward): {steps} steps of a shortest-path waypoint planner (BFS over maze "
        f"cells + PD controller, kp={expert.kp}, kd={expert.kd}) with N(0, {noise}^2) action noise in "
        f"{spec.pointmaze_id} physics, driving to random goal cells in one continuous run (a new goal whenever "
        f"one is reached) cut into episodes of {length} steps that end in a truncation. Observations are "
        f"(x, y, vx, vy) only. Rewards are for ONE fixed target, D4RL's goal cell (row, col) = {spec.target}, "
        f"(x, y) = ({target[0]:g}, {target[1]:g}), not for the planner's goals: "
        + ("1 if the next position is within 0.5 of it, else 0" if reward == "sparse"
           else "exp(-distance of the next position to it)")
        + f". Evaluation env {env_id} (random start cell, fixed target, {spec.horizon} steps, no termination). "
        f"ref_min_score = mean return of a uniform-random policy, ref_max_score = mean return of the noise-free "
        f"planner to the target, each over {ref_episodes} episodes of {env_id}. "
        f"Made by qtkit.data.make_dataset(seed={seed})."
    )
    provenance = {
        "env_id": env_id,
        "physics_env_id": spec.pointmaze_id,
        "target_cell": list(spec.target),
        "target_xy": [float(target[0]), float(target[1])],
        "target_source": "D4RL d4rl/pointmaze/maze_model.py: the G cell of the maze string (same row, col in "
                         f"gymnasium_robotics.envs.maze.maps.{spec.map_name})",
        "reward": reward,
        "episode_length": length,
        "expert": {"type": "bfs-waypoint-pd", "kp": expert.kp, "kd": expert.kd},
        "ref_min_source": f"measured: uniform-random policy, mean over {ref_episodes} episodes of {env_id}",
        "ref_max_source": f"measured: noise-free waypoint planner to the fixed target, mean over {ref_episodes} "
                          f"episodes of {env_id}",
    }
    return Made(episodes=episodes, env=env, eval_env=gym.spec(env_id), ref_min_score=ref_min, ref_max_score=ref_max,
                description=description, algorithm_name="qtkit-bfs-waypoint-pd-planner-d4rl-maze2d",
                provenance=provenance, requirements=list(REQUIREMENTS))



register_maze2d_envs()  # ``gym.make("qtkit/Maze2D-UMaze-v0")`` works once this module is imported
