"""Pixel observations: a gymnasium wrapper rendering MuJoCo envs with a fixed camera, and its registered envs.

:class:`PixelObservation` (``gymnasium.ObservationWrapper``) replaces an env's observation by an RGB frame
``Box(0, 255, (size, size, 3), uint8)`` rendered by MuJoCo's own renderer (``mjv_updateScene`` +
``mjr_render`` into an offscreen buffer) from the env's current physics state, with a camera given as a
plain dict (so the env spec records it):

- ``{"lookat": [x, y, z], "distance": d, "elevation": e, "azimuth": a}``: a fixed free camera
  (the maze top view: looking straight down at the maze centre);
- ``{"track_body": "torso", "distance": d, "elevation": e, "azimuth": a}``: a camera following a body
  (MuJoCo's tracking camera, as gymnasium's locomotion envs render).

Rewards, terminations and infos are the wrapped env's, untouched. A frame is a function of the physics
state alone (:meth:`PixelObservation.frame_of` renders a given ``qpos``), so a dataset made by rendering
recorded states and the evaluation env give the same frame for the same state.

Registered evaluation envs (``register_pixel_envs``, called by :func:`qtkit.data.makers.maze2d.register_maze2d_envs`,
so by ``qtkit.data.loading.register_robotics_envs`` too):

- ``qtkit/Maze2D-{Open,UMaze,Medium,Large}[Dense]-Pixels-v0``: the D4RL maze2d task of
  :class:`qtkit.data.makers.maze2d.Maze2DEnv` (fixed target, same reward, same horizon) seen from above
  (64x64, the whole maze, the ball green, the fixed target's red marker);
- ``qtkit/Hopper-Pixels-v0``: ``Hopper-v5`` seen from the side by a camera tracking the torso (gymnasium's
  default hopper view: distance 3, elevation -20);
- ``...-PixelsState-v0`` (e.g. ``qtkit/Maze2D-UMaze-PixelsState-v0``, ``qtkit/Hopper-PixelsState-v0``): the same,
  with ``{"pixels": frame, "state": the state env's observation}`` observations (frames + proprioceptive vector).

Headless rendering: the OpenGL backend is ``$MUJOCO_GL`` when set (egl, osmesa, glfw), else EGL on Linux
without ``$DISPLAY``, else GLFW. The context is made here, not through ``mujoco.Renderer``, because mujoco
picks the backend of ``mujoco.Renderer`` once, when it is first imported (gymnasium-robotics imports it
before qtkit can set ``MUJOCO_GL``). :func:`rendering_unavailable` says why rendering cannot work here.
Triton (torch.compile's compiler) is loaded before the first context: imported after Mesa's software
renderer it segfaults (both bundle LLVM).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = [
    "DEFAULT_SIZE",
    "FrameRenderer",
    "PixelObservation",
    "hopper_pixels_env_id",
    "make_maze2d_pixels_env",
    "make_mujoco_pixels_env",
    "maze2d_pixels_env_id",
    "maze_top_camera",
    "register_pixel_envs",
    "rendering_unavailable",
]

DEFAULT_SIZE = 64
#: Locomotion pixel envs: task -> (gymnasium env id, camera). The hopper camera is gymnasium's Hopper-v5 view.
MUJOCO_TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "hopper": ("Hopper-v5", {"track_body": "torso", "distance": 3.0, "elevation": -20.0, "azimuth": 90.0}),
}
_MAX_EPISODE_STEPS = {"Hopper-v5": 1000}


# ----------------------------------------------------------------------------- the renderer
def gl_backend() -> str:
    """The OpenGL backend used for offscreen rendering: ``$MUJOCO_GL`` or egl (headless Linux) / glfw."""
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if backend in ("egl", "osmesa", "glfw"):
        return backend
    return "egl" if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") else "glfw"


_PRELOADED = False


def _preload_triton() -> None:
    """Load triton's native library (when installed) before the first OpenGL context. Mesa's software
    renderer (llvmpipe, what EGL gives on a machine without a GPU driver) loads the system's libLLVM; importing
    triton's own LLVM after that crashes the process (segfault in ``import triton._C.libtriton``: measured here
    with torch.compile and with stable-baselines3 after a frame was rendered), while the other order works."""
    global _PRELOADED
    if _PRELOADED:
        return
    _PRELOADED = True
    import importlib.util

    with contextlib.suppress(Exception):
        if importlib.util.find_spec("triton") is not None:
            import triton._C.libtriton  # noqa: F401


def _gl_context_class() -> Any:
    _preload_triton()
    backend = gl_backend()
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        from mujoco.glfw import GLContext
    return GLContext


class FrameRenderer:
    """Offscreen RGB rendering of one MuJoCo model at ``width`` x ``height`` with its own OpenGL context."""

    def __init__(self, model: Any, width: int, height: int) -> None:
        import mujoco

        self.model, self.width, self.height = model, int(width), int(height)
        if self.width > model.vis.global_.offwidth or self.height > model.vis.global_.offheight:
            model.vis.global_.offwidth = max(self.width, model.vis.global_.offwidth)
            model.vis.global_.offheight = max(self.height, model.vis.global_.offheight)
        self._context = _gl_context_class()(self.width, self.height)
        self._context.make_current()
        self._scene = mujoco.MjvScene(model, maxgeom=10_000)
        # no shadow maps or reflections: the same picture content at a fraction of the cost (software EGL
        # renders a 4096² shadow map per light and frame: Hopper-v5 took 55 ms a frame with them, 2 without)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._option = mujoco.MjvOption()
        self._perturb = mujoco.MjvPerturb()
        self._mjr = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._mjr)
        self._viewport = mujoco.MjrRect(0, 0, self.width, self.height)
        self._cameras: dict[str, Any] = {}

    def camera(self, spec: dict[str, Any]) -> Any:
        """An ``MjvCamera`` for a camera dict (see the module docstring)."""
        import mujoco

        cam = mujoco.MjvCamera()
        if "track_body" in spec:
            cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
            body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, str(spec["track_body"]))
            if body < 0:
                raise ValueError(f"pixel camera: the model has no body {spec['track_body']!r} to track")
            cam.trackbodyid = body
        else:
            cam.type = mujoco.mjtCamera.mjCAMERA_FREE
            cam.lookat[:] = np.asarray(spec.get("lookat", (0.0, 0.0, 0.0)), dtype=np.float64)
        cam.distance = float(spec.get("distance", 3.0))
        cam.elevation = float(spec.get("elevation", -90.0))
        cam.azimuth = float(spec.get("azimuth", 90.0))
        return cam

    def render(self, data: Any, camera: Any) -> np.ndarray:
        """The RGB frame ``[height, width, 3]`` uint8 of ``data`` (its current state) seen by ``camera``."""
        import mujoco

        self._context.make_current()
        mujoco.mjv_updateScene(self.model, data, self._option, self._perturb, camera, mujoco.mjtCatBit.mjCAT_ALL,
                               self._scene)
        mujoco.mjr_render(self._viewport, self._scene, self._mjr)
        out = np.empty((self.height, self.width, 3), dtype=np.uint8)
        mujoco.mjr_readPixels(out, None, self._viewport, self._mjr)
        return np.ascontiguousarray(out[::-1])  # OpenGL's rows run bottom-up

    def close(self) -> None:
        mjr, context = getattr(self, "_mjr", None), getattr(self, "_context", None)
        self._mjr = self._context = None
        if context is not None:
            with contextlib.suppress(Exception):
                context.make_current()
            if mjr is not None:
                with contextlib.suppress(Exception):
                    mjr.free()
            with contextlib.suppress(Exception):
                context.free()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()


def rendering_unavailable() -> str | None:
    """None when offscreen MuJoCo rendering works here, else why not (one line)."""
    try:
        import mujoco

        model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='.1'/></worldbody></mujoco>")
        renderer = FrameRenderer(model, 32, 32)
        try:
            renderer.render(mujoco.MjData(model), renderer.camera({"lookat": [0, 0, 0], "distance": 1.0}))
        finally:
            renderer.close()
    except Exception as exc:  # any failure means no rendering
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"MuJoCo offscreen rendering (backend {gl_backend()}) failed: {type(exc).__name__}: {first}"
    return None


# ----------------------------------------------------------------------------- the wrapper
def _physics(env: Any) -> tuple[Any, Any]:
    """(MjModel, MjData) of a MuJoCo env (a qtkit Maze2DEnv / PointMazeEnv, or a gymnasium MujocoEnv)."""
    base = env.unwrapped
    if hasattr(base, "point_maze"):  # qtkit Maze2DEnv
        base = base.point_maze
    if hasattr(base, "point_env"):  # gymnasium-robotics PointMazeEnv
        base = base.point_env
    return base.model, base.data


class PixelObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Observations become ``size`` x ``size`` RGB frames of the wrapped MuJoCo env from ``camera``.

    ``camera``: a dict (module docstring): ``lookat`` / ``distance`` / ``elevation`` / ``azimuth`` for a
    fixed camera, or ``track_body`` instead of ``lookat`` for one following a body. ``state``: observations are
    ``{"pixels": frame, "state": the wrapped env's observation}`` (a Dict space), the frames plus the
    proprioceptive vector. Everything else (rewards, terminations, infos, ``render()``) is the wrapped env's.
    """

    def __init__(self, env: gym.Env, size: int = DEFAULT_SIZE, camera: dict[str, Any] | None = None,
                 state: bool = False) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, size=size, camera=camera, state=state)
        gym.ObservationWrapper.__init__(self, env)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"PixelObservation: size={size!r}, expected an integer >= 1")
        self.size = int(size)
        self.camera_spec = dict(camera or {"lookat": [0.0, 0.0, 0.0], "distance": 3.0})
        self.state = bool(state)
        frames = gym.spaces.Box(0, 255, (self.size, self.size, 3), np.uint8)
        self.observation_space = (gym.spaces.Dict({"pixels": frames, "state": env.observation_space}) if self.state
                                  else frames)
        self._renderer: FrameRenderer | None = None
        self._camera: Any = None

    def _ensure_renderer(self) -> tuple[FrameRenderer, Any]:
        if self._renderer is None:
            model, _ = _physics(self.env)
            self._renderer = FrameRenderer(model, self.size, self.size)
            self._camera = self._renderer.camera(self.camera_spec)
        return self._renderer, self._camera

    def observation(self, observation: Any) -> Any:
        if self.state:
            return {"pixels": self.frame(), "state": observation}
        return self.frame()

    def frame(self) -> np.ndarray:
        """The frame of the env's current physics state."""
        renderer, camera = self._ensure_renderer()
        return renderer.render(_physics(self.env)[1], camera)

    def frame_of(self, qpos: Any, qvel: Any | None = None) -> np.ndarray:
        """The frame of physics state ``qpos`` (``qvel`` optional: it does not change the picture). The env's
        state is left at ``qpos`` / ``qvel``: call between episodes, or reset afterwards."""
        import mujoco

        model, data = _physics(self.env)
        data.qpos[:] = np.asarray(qpos, dtype=np.float64)
        data.qvel[:] = 0.0 if qvel is None else np.asarray(qvel, dtype=np.float64)
        mujoco.mj_forward(model, data)
        return self.frame()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()


# ----------------------------------------------------------------------------- the registered envs
def maze_top_camera(maze_map: list[list[Any]], scaling: float = 1.0, fovy: float = 45.0,
                    wall_height: float = 0.4) -> dict[str, Any]:
    """A camera looking straight down at the maze centre from just high enough to see all its free cells
    plus a fifth of the outer walls (the tops of the walls, nearer the camera, look a little larger)."""
    rows, cols = len(maze_map), len(maze_map[0])
    span = (max(rows, cols) - 2 + 0.4) * float(scaling)
    distance = span / 2 / math.tan(math.radians(fovy) / 2) + wall_height * float(scaling)
    return {"lookat": [0.0, 0.0, 0.0], "distance": round(distance, 4), "elevation": -90.0, "azimuth": 90.0}


def maze2d_pixels_env_id(maze: str, reward: str, state: bool = False) -> str:
    """``qtkit/Maze2D-UMaze-Pixels-v0`` / ``qtkit/Maze2D-UMazeDense-Pixels-v0`` ...; with ``state``
    (``{"pixels", "state"}`` observations) ``qtkit/Maze2D-UMaze-PixelsState-v0`` ..."""
    from qtkit.data.makers.maze2d import maze2d_env_id

    return maze2d_env_id(maze, reward).replace("-v0", "-PixelsState-v0" if state else "-Pixels-v0")


def hopper_pixels_env_id(task: str = "hopper", state: bool = False) -> str:
    """``qtkit/Hopper-Pixels-v0`` (``qtkit/Hopper-PixelsState-v0`` with ``state``)."""
    return f"qtkit/{MUJOCO_TASKS[task][0].split('-')[0]}-Pixels{'State' if state else ''}-v0"


def make_maze2d_pixels_env(maze: str = "umaze", reward_type: str = "sparse", size: int = DEFAULT_SIZE,
                           render_mode: str | None = None, state: bool = False, **kwargs: Any) -> PixelObservation:
    """The entry point of ``qtkit/Maze2D-*-Pixels-v0``: :class:`~qtkit.data.makers.maze2d.Maze2DEnv` seen from above."""
    from qtkit.data.makers.maze2d import Maze2DEnv

    env = Maze2DEnv(maze=maze, reward_type=reward_type, render_mode=render_mode, **kwargs)
    maze_obj = env.maze
    fovy = float(_physics(env)[0].vis.global_.fovy)
    camera = maze_top_camera(maze_obj.maze_map, maze_obj.maze_size_scaling, fovy, maze_obj.maze_height)
    return PixelObservation(env, size=size, camera=camera, state=state)


def make_mujoco_pixels_env(task: str = "hopper", size: int = DEFAULT_SIZE, render_mode: str | None = None,
                           state: bool = False, **kwargs: Any) -> PixelObservation:
    """The entry point of ``qtkit/Hopper-Pixels-v0``: the gymnasium MuJoCo env (unwrapped: the registered
    id adds the TimeLimit) with a camera tracking its torso."""
    env_id, camera = MUJOCO_TASKS[task]
    entry = gym.spec(env_id).entry_point
    creator = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    env = creator(render_mode=render_mode, **kwargs)
    return PixelObservation(env, size=size, camera=dict(camera), state=state)


def register_pixel_envs() -> None:
    """Register the pixel evaluation envs (module docstring) with gymnasium (idempotent)."""
    from qtkit.data.makers.maze2d import MAZES, REWARDS

    for state in (False, True):
        for maze, spec in MAZES.items():
            for reward in REWARDS:
                env_id = maze2d_pixels_env_id(maze, reward, state)
                if env_id not in gym.registry:
                    gym.register(id=env_id, entry_point="qtkit.data.makers.pixels:make_maze2d_pixels_env",
                                 max_episode_steps=spec.horizon,
                                 kwargs={"maze": maze, "reward_type": reward, **({"state": True} if state else {})})
        for task, (base_id, _) in MUJOCO_TASKS.items():
            env_id = hopper_pixels_env_id(task, state)
            if env_id not in gym.registry:
                gym.register(id=env_id, entry_point="qtkit.data.makers.pixels:make_mujoco_pixels_env",
                             max_episode_steps=_MAX_EPISODE_STEPS[base_id],
                             kwargs={"task": task, **({"state": True} if state else {})})
