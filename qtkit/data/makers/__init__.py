"""Datasets qtkit makes itself with real simulators and real expert controllers (no downloads).

>>> from qtkit.data.makers import make_dataset, list_makers
>>> dataset_id = make_dataset("pointmaze-umaze-sparse", steps=100_000, seed=0)   # 'qtkit/pointmaze-umaze-sparse-v0'
>>> import minari; minari.load_dataset(dataset_id).recover_environment()

Every maker writes a local Minari dataset (hdf5 backend) under ``$MINARI_DATASETS_PATH`` with id
``qtkit/<maker>-v0`` (override with ``dataset_id``; qtkit's loader takes it as ``"minari:<id>"``), the
collection env's spec (``recover_environment()``) and an evaluation env spec
(``recover_environment(eval_env=True)``), ``ref_min_score`` / ``ref_max_score`` for D4RL-style normalised
scores, a description saying how it was made, and a ``qtkit_maker`` metadata entry (maker, steps, seed,
noise, options, where the reference scores come from). Same name, steps, seed, noise and options give
the same arrays.

Makers:

- ``maze2d-{open,umaze,medium,large}`` / ``maze2d-{...}-dense``: D4RL's maze2d (the stitching setting
  of QT's claim): (x, y, vx, vy) observations, the noisy BFS-waypoint + PD planner driving to random
  goals in one continuous run cut at D4RL's timeouts (150 / 300 / 600 / 800 steps), rewards for ONE
  fixed target cell (sparse: within 0.5; dense: exp(-distance)), evaluation env ``qtkit/Maze2D-*-v0``.
  Default sizes D4RL's (1M / 1M / 2M / 4M steps).
- ``maze2d-{umaze,medium}[-dense]-pixels``: the same maze2d data (same actions, rewards, episodes and
  reference scores as the state maker with the same arguments) with 64x64 RGB top-view frames (uint8,
  stored raw: ~123 MB per 10k steps) as observations, rendered by MuJoCo (EGL headless); evaluation env
  ``qtkit/Maze2D-*-Pixels-v0`` renders the same way. Default 100k / 200k steps.
- ``maze2d-{umaze,medium}[-dense]-pixels-state``: the same frames next to the (x, y, vx, vy) state, as
  ``{"pixels", "state"}`` observations (image + proprioceptive vector); evaluation env
  ``qtkit/Maze2D-*-PixelsState-v0``.
- ``pointmaze-{umaze,medium,large}-{sparse,dense}``: goal-conditioned PointMaze v3 data (desired_goal
  in the observation, reward relative to the moving goal): the same noisy planner, one continuous run
  with goals resampled on arrival, cut into fixed-length truncated episodes. Imitation alone reaches
  the goal here, no stitching is needed. 100k umaze steps take ~25 s.
- ``{hopper,halfcheetah,walker2d}-random``: uniform-random policy in the MuJoCo -v5 env.
- ``hopper-random-pixels``: ``hopper-random`` with 64x64 RGB frames of a camera tracking the torso;
  evaluation env ``qtkit/Hopper-Pixels-v0``.
- ``hopper-random-pixels-state``: the same frames next to Hopper's 11-dimensional state, as ``{"pixels",
  "state"}`` observations; evaluation env ``qtkit/Hopper-PixelsState-v0``.
- ``{hopper,halfcheetah,walker2d}-medium-replay`` / ``-medium``: an online SAC run (stable-baselines3,
  ``pip install 'qtkit[makers]'``) stopped at the medium level: all it collected / rollouts of its
  final stochastic policy. Slow: ~15 min per 100k SAC steps on 2 idle cores.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from qtkit.data.makers import maze2d, maze2d_pixels, mujoco_pixels, mujoco_random, pixels, pointmaze, sac
from qtkit.data.makers.common import Made
from qtkit.data.makers.writer import (
    NAMESPACE,
    DatasetExistsError,
    check_writable,
    dataset_exists,
    default_dataset_id,
    minari_root_path,
    normalize_dataset_id,
    terminate_as_interrupt,
    write_minari_dataset,
)
from qtkit.errors import ConfigError, DataError, OutputPathError, QtkitError, UnknownNameError, did_you_mean
from qtkit.fileio import check_output_dir, describe_os_error

__all__ = [
    "NAMESPACE",
    "BelowTargetError",
    "DatasetExistsError",
    "Maker",
    "MissingExtraError",
    "below_target",
    "default_dataset_id",
    "get_maker",
    "list_makers",
    "make_dataset",
]

MissingExtraError = sac.MissingExtraError
BelowTargetError = sac.BelowTargetError
_COMMON = {"steps", "seed", "noise", "progress"}


@dataclass(frozen=True)
class Maker:
    """A registered dataset maker."""

    name: str
    summary: str
    default_steps: int
    build: Callable[..., Made]  # build(steps=, seed=, noise=, progress=, **options)
    default_noise: float | None = None  # None: the maker takes no noise level
    extra: str | None = None  # the qtkit extra it needs, e.g. "makers"
    steps_meaning: str = "env steps in the dataset"

    def options(self) -> list[str]:
        """The maker-specific keyword options (beyond steps, seed, noise, progress)."""
        params = inspect.signature(self.build).parameters
        return [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p not in _COMMON]

    def option_types(self) -> dict[str, Any]:
        """Option name -> its type annotation (from the maker function's signature)."""
        import typing

        func = self.build.func if isinstance(self.build, partial) else self.build
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # pragma: no cover - unresolvable annotations: no type checks
            return {}
        return {name: hints[name] for name in self.options() if name in hints}

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` checked against :meth:`options` (unknown names) and :meth:`option_types` (wrong types,
        e.g. ``episode_length='abc'``); returns them with gentle coercions (an int where a float is expected)."""
        from qtkit.config import coerce
        from qtkit.params import describe

        known = self.options()
        for key in options:
            if key not in known:
                raise ConfigError(
                    f"Maker {self.name!r} has no option {key!r}.{did_you_mean(key, known)} "
                    f"Its options: {', '.join(known) or '(none)'}; common: steps, seed, noise, dataset_id, overwrite."
                )
        types = self.option_types()
        out = {}
        for key, value in options.items():
            if key not in types:
                out[key] = value
                continue
            ok, coerced = coerce(value, types[key])
            if not ok:
                expected = describe(types[key])
                if expected.endswith(" | None"):
                    expected = expected[: -len(" | None")] + " (or null for the maker's default)"
                default = inspect.signature(self.build).parameters[key].default
                example = default if isinstance(default, int | float) and not isinstance(default, bool) else None
                raise ConfigError(
                    f"Maker option {key}={value!r} for {self.name!r}: expected {expected}, got "
                    f"{type(value).__name__}. Fix: e.g. --opt {key}={example or _example(types[key])}."
                )
            out[key] = coerced
        return out


def _example(annotation: Any) -> str:
    """A CLI example value for an option of type ``annotation``."""
    text = str(annotation)
    if "list" in text:
        return "[64,64]"
    if "bool" in text:
        return "false"
    if "float" in text:
        return "0.5"
    if "int" in text:
        return "500"
    return "VALUE"


def _registry() -> dict[str, Maker]:
    makers: list[Maker] = []
    for maze, spec in maze2d.MAZES.items():
        for reward in ("sparse", "dense"):
            makers.append(Maker(
                name=f"maze2d-{maze}{'-dense' if reward == 'dense' else ''}",
                summary=f"D4RL maze2d, {reward} reward for fixed target cell {spec.target}, obs (x,y,vx,vy), "
                        f"{spec.horizon}-step truncated episodes; eval env {maze2d.maze2d_env_id(maze, reward)}",
                default_steps=spec.default_steps, build=partial(maze2d.make_maze2d, maze, reward),
                default_noise=maze2d.DEFAULT_NOISE,
            ))
    for maze, default_steps in maze2d_pixels.DEFAULT_STEPS.items():
        spec = maze2d.MAZES[maze]
        for reward in ("sparse", "dense"):
            makers.append(Maker(
                name=f"maze2d-{maze}{'-dense' if reward == 'dense' else ''}-pixels",
                summary=f"maze2d-{maze}{'-dense' if reward == 'dense' else ''} with 64x64 RGB top-view frames as "
                        f"obs (uint8, ~12 kB/step on disk); eval env {pixels.maze2d_pixels_env_id(maze, reward)}",
                default_steps=default_steps, build=partial(maze2d_pixels.make_maze2d_pixels, maze, reward),
                default_noise=maze2d.DEFAULT_NOISE,
            ))
            makers.append(Maker(
                name=f"maze2d-{maze}{'-dense' if reward == 'dense' else ''}-pixels-state",
                summary=f"the -pixels frames plus the (x,y,vx,vy) state: {{pixels, state}} obs; eval env "
                        f"{pixels.maze2d_pixels_env_id(maze, reward, True)}",
                default_steps=default_steps,
                build=partial(maze2d_pixels.make_maze2d_pixels, maze, reward, state=True),
                default_noise=maze2d.DEFAULT_NOISE,
            ))
    for maze in pointmaze.MAZES:
        for reward in ("sparse", "dense"):
            env_id = pointmaze.pointmaze_env_id(maze, reward)
            makers.append(Maker(
                name=f"pointmaze-{maze}-{reward}",
                summary=f"{env_id}: goal-conditioned (desired_goal in obs, moving-goal reward), noisy "
                        f"BFS-waypoint+PD expert, continuous run cut into truncated episodes",
                default_steps=pointmaze.DEFAULT_STEPS[maze], build=partial(pointmaze.make_pointmaze, maze, reward),
                default_noise=pointmaze.DEFAULT_NOISE,
            ))
    for task, env_id in mujoco_random.TASKS.items():
        makers.append(Maker(name=f"{task}-random", summary=f"{env_id}: uniform-random policy",
                            default_steps=mujoco_random.DEFAULT_STEPS,
                            build=partial(mujoco_random.make_mujoco_random, task)))
    for task in pixels.MUJOCO_TASKS:
        makers.append(Maker(name=f"{task}-random-pixels",
                            summary=f"{mujoco_random.TASKS[task]}: uniform-random policy, 64x64 RGB frames of a camera "
                                    f"tracking the torso as obs; eval env {pixels.hopper_pixels_env_id(task)}",
                            default_steps=mujoco_pixels.DEFAULT_STEPS,
                            build=partial(mujoco_pixels.make_mujoco_random_pixels, task)))
        makers.append(Maker(name=f"{task}-random-pixels-state",
                            summary=f"{task}-random-pixels plus the state vector: {{pixels, state}} obs; eval env "
                                    f"{pixels.hopper_pixels_env_id(task, True)}",
                            default_steps=mujoco_pixels.DEFAULT_STEPS,
                            build=partial(mujoco_pixels.make_mujoco_random_pixels, task, state=True)))
    for task, env_id in mujoco_random.TASKS.items():
        makers.append(Maker(
            name=f"{task}-medium-replay",
            summary=f"{env_id}: all transitions of a SAC run stopped at medium (slow: ~15 min/100k steps)",
            default_steps=sac.DEFAULT_TRAIN_STEPS, build=partial(sac.make_medium_replay, task), extra="makers",
            steps_meaning="SAC step budget (the dataset is every step it ran)",
        ))
        makers.append(Maker(
            name=f"{task}-medium",
            summary=f"{env_id}: rollouts of a medium SAC policy (slow: trains SAC first, ~15 min/100k steps)",
            default_steps=sac.DEFAULT_MEDIUM_STEPS, build=partial(sac.make_medium, task), extra="makers",
        ))
    return {m.name: m for m in makers}


_MAKERS: dict[str, Maker] = _registry()


def list_makers(filter: str = "") -> list[str]:
    """Names of the dataset makers, optionally filtered by an fnmatch pattern (e.g. ``'pointmaze-*'``)."""
    return [name for name in _MAKERS if not filter or fnmatch.fnmatch(name, filter)]


def get_maker(name: str) -> Maker:
    """The :class:`Maker` called ``name``; an unknown name lists the makers and suggests close matches."""
    maker = _MAKERS.get(str(name))
    if maker is None:
        raise UnknownNameError(
            f"No dataset maker called {name!r}.{did_you_mean(str(name), _MAKERS)} "
            f"Makers: {', '.join(_MAKERS)}. (See: qtkit data list.)"
        )
    return maker


def _check_int(what: str, value: Any, minimum: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ConfigError(f"{what}={value!r} for maker {name!r}: expected an integer >= {minimum}.")
    return int(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def make_dataset(
    name: str,
    *,
    steps: int | None = None,
    seed: int = 0,
    noise: float | None = None,
    dataset_id: str | None = None,
    overwrite: bool = False,
    exist_ok: bool = False,
    progress: bool = True,
    **kwargs: Any,
) -> str:
    """Make dataset ``name`` (see :func:`list_makers`) and write it as a local Minari dataset; returns its id.

    ``steps``: dataset size in env steps (default: the maker's; for ``*-medium-replay`` the SAC step
    budget). ``seed``: seeds env resets and a NumPy Generator; same arguments, same arrays. ``noise``: std
    of the Gaussian action noise (PointMaze makers only; default 0.5). ``dataset_id``: Minari id to write
    (default ``qtkit/<name>-v0``). ``overwrite``: replace an existing dataset (otherwise an error);
    ``exist_ok``: return the id of an existing dataset without remaking it (it is not checked against the
    arguments). A failed or interrupted make leaves nothing under the id. ``progress``: tqdm bar with steps/s.
    ``kwargs``: maker options (:meth:`Maker.options`), e.g. ``episode_length``, ``ref_episodes``,
    ``train_steps``, ``net_arch``, ``learning_starts``, ``cache``.
    """
    maker = get_maker(name)
    steps = maker.default_steps if steps is None else _check_int("steps", steps, 1, name)
    seed = _check_int("seed", seed, 0, name)
    if maker.default_noise is None:
        if noise is not None:
            raise ConfigError(f"Maker {name!r} takes no noise level (it is not an expert with action noise); "
                              f"drop noise= / --noise.")
    else:
        noise = maker.default_noise if noise is None else noise
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not math.isfinite(noise) or noise < 0:
            raise ConfigError(f"noise={noise!r} for maker {name!r}: expected a finite number >= 0 "
                              f"(std of the Gaussian action noise; default {maker.default_noise}).")
        noise = float(noise)
    kwargs = maker.check_options(kwargs)
    if maker.extra == "makers":
        sac.require_sb3()
    dataset_id = default_dataset_id(name) if dataset_id is None else normalize_dataset_id(dataset_id)
    if overwrite and exist_ok:
        raise ConfigError("make_dataset: overwrite=True remakes an existing dataset and exist_ok=True keeps it; "
                          "pass only one of them (CLI: --overwrite or --exist-ok).")
    if exist_ok and dataset_exists(dataset_id):
        return dataset_id
    root = check_output_dir(minari_root_path(), "Minari datasets folder (--out / $MINARI_DATASETS_PATH)")
    check_writable(dataset_id, overwrite)  # fail before spending minutes collecting

    with terminate_as_interrupt():
        made = maker.build(steps=steps, seed=seed, noise=noise, progress=progress, **kwargs)
        try:
            _write(name, made, dataset_id, steps, seed, noise, kwargs, overwrite)
        except QtkitError:
            raise
        except OSError as exc:  # a full disk, permissions changed meanwhile...
            raise OutputPathError(describe_os_error(exc, root, f"dataset {dataset_id!r}")) from exc
    return dataset_id


def _write(name: str, made: Made, dataset_id: str, steps: int, seed: int, noise: float | None,
           kwargs: dict[str, Any], overwrite: bool) -> None:
    if not made.ref_min_score < made.ref_max_score:
        raise DataError(
            f"Maker {name!r}: ref_min_score {made.ref_min_score:.3f} (random) is not below ref_max_score "
            f"{made.ref_max_score:.3f} (expert), so normalised scores would be meaningless; nothing was written. "
            f"Raise ref_episodes or check the expert."
        )
    from qtkit import __version__

    metadata = {
        "ref_min_score": float(made.ref_min_score),
        "ref_max_score": float(made.ref_max_score),
        "qtkit_maker": _json_safe({
            "maker": name, "qtkit_version": __version__, "steps": steps, "seed": seed, "noise": noise,
            "options": kwargs, **made.provenance,
        }),
    }
    write_minari_dataset(
        dataset_id, made.episodes, env=made.env, eval_env=made.eval_env, metadata=metadata,
        description=made.description, algorithm_name=made.algorithm_name, requirements=made.requirements,
        overwrite=overwrite,
    )


def below_target(metadata: dict[str, Any]) -> str | None:
    """For a made dataset's metadata: why it is below its maker's target level (a SAC run that missed the
    medium level, kept with ``allow_below_target``), or None."""
    maker = metadata.get("qtkit_maker")
    if isinstance(maker, str):
        import json

        try:
            maker = json.loads(maker)
        except ValueError:
            return None
    info = (maker or {}).get("sac") if isinstance(maker, dict) else None
    if not isinstance(info, dict) or info.get("reached_target", True):
        return None
    return sac.below_target_text(info)
