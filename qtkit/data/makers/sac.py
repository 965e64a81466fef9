"""``<task>-medium-replay`` and ``<task>-medium`` datasets from an online SAC run (D4RL-style).

Needs stable-baselines3 (the optional extra ``pip install 'qtkit[makers]'``). One SAC run per
(task, seed, training options): it trains on ``Hopper-v5`` / ``HalfCheetah-v5`` / ``Walker2d-v5`` until the
mean return of its last ``stop_window`` training episodes reaches the *medium* level (D4RL: about a third
of the expert, ``target_fraction=1/3`` of the way from D4RL's random to expert return) or its step
budget runs out.

- ``-medium-replay``: every transition the run collected (its whole replay stream, random warm-up
  included), with the env's terminations and truncations; ``steps`` is the SAC step budget.
- ``-medium``: ``steps`` steps of rollouts of the final *stochastic* policy (tanh-squashed Gaussian,
  sampled with the maker's seeded NumPy generator); ``train_steps`` is the SAC step budget.

Cost: about 15 minutes per 100k SAC steps on 2 idle CPU cores (~100 gradient steps/s), several times
more when the cores are shared (measured here: ~30 gradient steps/s at load 3 on 2 cores); the medium
level is typically reached after 50k-200k steps. Torch runs with ``threads=1`` by default: SAC's small
networks gain little from a second thread and a 2-thread run on shared cores was 20x slower.

The finished run (policy + replay stream) is cached under ``$MINARI_DATASETS_PATH/.qtkit-cache/sac/``, so
making ``-medium`` after ``-medium-replay`` (same task, seed and options) trains only once;
``cache=False`` retrains.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from qtkit.cpu import torch_threads
from qtkit.data.makers.common import (
    D4RL_REF_SCORES,
    EpisodeRecorder,
    Made,
    close_env,
    derive_seed,
    episode_buffer,
    preserved_global_rng,
    progress_bar,
    record_steps,
)
from qtkit.data.makers.mujoco_random import REQUIREMENTS, TASKS, reference_scores
from qtkit.errors import ConfigError, DataError, QtkitError

DEFAULT_TRAIN_STEPS = 300_000
DEFAULT_MEDIUM_STEPS = 100_000
SAC_DEFAULTS: dict[str, Any] = {
    "target_fraction": 1 / 3,
    "stop_window": 10,
    "net_arch": [256, 256],
    "learning_starts": 10_000,
    "batch_size": 256,
    "learning_rate": 3e-4,
    "threads": 1,
}


class MissingExtraError(QtkitError, ImportError):
    """An optional dependency (a ``qtkit[...]`` extra) is not installed."""


def require_sb3() -> Any:
    """Import stable-baselines3 or raise :class:`MissingExtraError` naming the extra to install."""
    try:
        import stable_baselines3
    except ImportError as exc:
        raise MissingExtraError(
            "The SAC dataset makers (*-medium, *-medium-replay) need stable-baselines3, which is not installed. "
            "Install the optional extra: pip install 'qtkit[makers]' (or: pip install stable-baselines3)."
        ) from exc
    return stable_baselines3


def _options(train_steps: int, **kwargs: Any) -> dict[str, Any]:
    opts = {**SAC_DEFAULTS, **{k: v for k, v in kwargs.items() if v is not None}, "train_steps": int(train_steps)}
    opts["net_arch"] = [int(x) for x in opts["net_arch"]]
    if opts["train_steps"] < 1:
        raise ConfigError(f"train_steps={train_steps}: the SAC step budget must be >= 1.")
    if not 0 < float(opts["target_fraction"]) <= 1.5:
        raise ConfigError(f"target_fraction={opts['target_fraction']}: use a fraction of the expert in (0, 1.5], "
                          f"e.g. 1/3 (D4RL's medium level).")
    for key in ("stop_window", "batch_size", "threads"):
        if int(opts[key]) < 1:
            raise ConfigError(f"{key}={opts[key]}: it must be >= 1.")
    return opts


class BelowTargetError(DataError):
    """The SAC run stopped (its step budget ran out) before reaching the medium level."""


def below_target_text(info: dict[str, Any]) -> str:
    """One sentence on how far a SAC run (its ``info``) stayed below its target return."""
    recent = info.get("final_mean_training_return")
    recent_s = "no finished training episode" if recent is None or recent != recent else f"{float(recent):.1f}"
    opts = info.get("options") or {}
    return (
        f"the SAC run did not reach the medium level: the mean of its last {opts.get('stop_window', '?')} training "
        f"returns was {recent_s}, below the target {float(info.get('target_return', float('nan'))):.1f} "
        f"({float(opts.get('target_fraction', 1 / 3)):.3g} of the way from D4RL's random to expert return), "
        f"after {info.get('sac_steps', '?')} SAC steps (budget {opts.get('train_steps', '?')})"
    )


def check_target(task: str, what: str, run: _Run, allow_below_target: bool) -> None:
    """Refuse a run that missed the medium level unless ``allow_below_target``."""
    if run.info.get("reached_target") or allow_below_target:
        return
    budget = "--steps" if what == "medium-replay" else "--opt train_steps=N"
    raise BelowTargetError(
        f"{task}-{what}: {below_target_text(run.info)}; a dataset made from it would be weaker than D4RL's "
        f"'{task}-{what}', so nothing was written. Fix: raise the SAC budget ({budget}; the medium level takes "
        f"50k-200k steps), or keep this run's data anyway with --allow-below-target (API: "
        f"allow_below_target=True): the finished run is cached, so that does not train again; the dataset then "
        f"records reached_target: false and `qtkit data list` marks it BELOW TARGET."
    )


class _Run:
    """A finished SAC run: its policy and every transition it collected."""

    def __init__(self, model: Any, episodes: list[Any], info: dict[str, Any]) -> None:
        self.model, self.episodes, self.info = model, episodes, info


def _cache_dir(task: str, seed: int, opts: dict[str, Any]) -> Path:
    from qtkit.data.makers.writer import datasets_root

    sb3 = require_sb3()
    key = json.dumps({"task": TASKS[task], "seed": int(seed), "sb3": sb3.__version__, **opts}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return datasets_root() / ".qtkit-cache" / "sac" / f"{task}-seed{seed}-{digest}"


def _save_run(path: Path, run: _Run) -> None:
    """Write the run to ``path`` atomically: a staging folder ``.tmp-<pid>-XXXX`` next to it (stale ones of dead
    processes removed first), renamed into place; the files get the umask's usual modes."""
    from qtkit.data.makers.writer import OWNER_FILE, staging_dir
    from qtkit.fileio import umask_mode

    with staging_dir(path.parent, ".tmp-") as tmp:
        run.model.save(tmp / "model.zip")
        eps = run.episodes
        np.savez(
            tmp / "replay.npz",
            observations=np.concatenate([e.observations for e in eps]),
            actions=np.concatenate([e.actions for e in eps]),
            rewards=np.concatenate([e.rewards for e in eps]),
            terminations=np.concatenate([e.terminations for e in eps]),
            truncations=np.concatenate([e.truncations for e in eps]),
            lengths=np.array([len(e.rewards) for e in eps]),
        )
        (tmp / "info.json").write_text(json.dumps(run.info, indent=1))
        (tmp / OWNER_FILE).unlink()
        for child in tmp.iterdir():
            os.chmod(child, umask_mode())
        os.chmod(tmp, umask_mode(directory=True))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)


def _load_run(path: Path) -> _Run | None:
    if not (path / "info.json").exists():
        return None
    from stable_baselines3 import SAC

    data = np.load(path / "replay.npz")
    episodes, o, s = [], 0, 0
    for n in data["lengths"].tolist():
        episodes.append(episode_buffer(data["observations"][o : o + n + 1], data["actions"][s : s + n],
                                       data["rewards"][s : s + n], data["terminations"][s : s + n],
                                       data["truncations"][s : s + n]))
        o, s = o + n + 1, s + n
    model = SAC.load(path / "model.zip", device="cpu")
    return _Run(model, episodes, json.loads((path / "info.json").read_text()))


def train_sac(task: str, *, seed: int, progress: bool, cache: bool = True, **options: Any) -> _Run:
    """Train (or load from the cache) the SAC run for ``task``; see the module docstring."""
    import gymnasium as gym

    require_sb3()
    opts = _options(**options)
    path = _cache_dir(task, seed, opts)
    if cache:
        run = _load_run(path)
        if run is not None:
            return run

    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    d4rl_min, d4rl_max = D4RL_REF_SCORES[task]
    target = d4rl_min + float(opts["target_fraction"]) * (d4rl_max - d4rl_min)
    recorder = EpisodeRecorder()

    class Recording(gym.Wrapper):
        def reset(self, **kwargs: Any) -> Any:
            obs, info = self.env.reset(**kwargs)
            recorder.reset(obs)
            return obs, info

        def step(self, action: Any) -> Any:
            obs, reward, terminated, truncated, info = self.env.step(action)
            recorder.step(action, obs, reward, terminated, truncated)
            return obs, reward, terminated, truncated, info

    class Watch(BaseCallback):
        """Progress bar, and the early stop at the medium level."""

        def __init__(self, bar: Any) -> None:
            super().__init__()
            self.bar, self.recent, self.reached = bar, float("nan"), False

        def _on_step(self) -> bool:
            self.bar.update(1)
            if not bool(np.any(self.locals.get("dones", False))):
                return True
            returns = [ep["r"] for ep in list(self.model.ep_info_buffer or [])[-int(opts["stop_window"]) :]]
            self.recent = float(np.mean(returns)) if returns else float("nan")
            self.bar.set_postfix(ret=f"{self.recent:.0f}", target=f"{target:.0f}", refresh=False)
            self.reached = len(returns) >= int(opts["stop_window"]) and self.recent >= target
            return not self.reached

    env = Recording(gym.make(TASKS[task]))
    try:
        with preserved_global_rng(), torch_threads(opts["threads"]), \
                progress_bar(opts["train_steps"], progress, f"SAC {TASKS[task]}") as bar:
            model = SAC(
                "MlpPolicy", env, seed=int(seed), device="cpu", verbose=0,
                policy_kwargs={"net_arch": list(opts["net_arch"])},
                learning_starts=int(opts["learning_starts"]), batch_size=int(opts["batch_size"]),
                learning_rate=float(opts["learning_rate"]), buffer_size=max(int(opts["train_steps"]), 1),
            )
            watch = Watch(bar)
            model.learn(total_timesteps=int(opts["train_steps"]), callback=watch, progress_bar=False)
        recorder.close()
    finally:
        close_env(env)
    info = {
        "sac_steps": recorder.steps,
        "reached_target": bool(watch.reached),
        "target_return": target,
        "final_mean_training_return": watch.recent,
        "options": opts,
    }
    run = _Run(model, recorder.episodes, info)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_run(path, run)
    return run


def rollout_policy(model: Any, task: str, *, steps: int, seed: int, progress: bool, threads: int = 1) -> list[Any]:
    """``steps`` steps of the SAC policy, stochastic (tanh-squashed Gaussian sampled with a seeded Generator)."""
    import gymnasium as gym
    import torch

    rng = np.random.default_rng(derive_seed(seed, 4))
    env = gym.make(TASKS[task])
    recorder = EpisodeRecorder()
    policy = model.policy
    try:
        def act(obs: Any) -> np.ndarray:
            obs_t, _ = policy.obs_to_tensor(obs)
            mean, log_std, _ = policy.actor.get_action_dist_params(obs_t)
            u = mean[0].numpy() + np.exp(log_std[0].numpy()) * rng.standard_normal(mean.shape[-1])
            return policy.unscale_action(np.tanh(u)).astype(env.action_space.dtype)

        with torch.no_grad(), torch_threads(threads), progress_bar(steps, progress, f"{task}-medium rollouts") as bar:
            record_steps(env, act, recorder, steps, bar, reset_seed=derive_seed(seed, 5))
    finally:
        close_env(env)
    return recorder.episodes


def _describe(task: str, what: str, run: _Run, ref_min: float, provenance: dict[str, Any], seed: int) -> str:
    info = run.info
    stop = ("reached" if info["reached_target"] else "did not reach")
    return (
        f"{TASKS[task]} {what}, D4RL-style. One online SAC run (stable-baselines3, net {info['options']['net_arch']}, "
        f"{info['sac_steps']} env steps, budget {info['options']['train_steps']}) that {stop} the medium level "
        f"(mean of the last {info['options']['stop_window']} training returns >= {info['target_return']:.1f}, i.e. "
        f"{info['options']['target_fraction']:.3g} of the way from D4RL's random to expert return). "
        f"ref_min_score: {provenance['ref_min_source']} = {ref_min:.2f} "
        f"(D4RL -v2: {provenance['d4rl_ref_min_score']}); "
        f"ref_max_score: {provenance['ref_max_source']}. Made by qtkit.data.make_dataset(seed={seed})."
    )


def make_medium_replay(
    task: str, *, steps: int, seed: int, progress: bool, noise: None = None, cache: bool = True,
    ref_episodes: int | None = None, target_fraction: float | None = None, stop_window: int | None = None,
    net_arch: list[int] | None = None, learning_starts: int | None = None, batch_size: int | None = None,
    learning_rate: float | None = None, threads: int | None = None, allow_below_target: bool = False,
) -> Made:
    """Every transition of a SAC run with a budget of ``steps`` env steps, stopped at the medium level.

    A run whose budget ran out before the medium level is a :class:`BelowTargetError` unless
    ``allow_below_target`` (the dataset then records ``reached_target: false``)."""
    run = train_sac(task, seed=seed, progress=progress, cache=cache, train_steps=steps,
                    target_fraction=target_fraction, stop_window=stop_window, net_arch=net_arch,
                    learning_starts=learning_starts, batch_size=batch_size, learning_rate=learning_rate,
                    threads=threads)
    check_target(task, "medium-replay", run, allow_below_target)
    return _made(task, "medium-replay (every transition of the SAC run, terminations/truncations from the env)",
                 run, run.episodes, seed=seed, ref_episodes=ref_episodes)


def make_medium(
    task: str, *, steps: int, seed: int, progress: bool, noise: None = None, train_steps: int = DEFAULT_TRAIN_STEPS,
    cache: bool = True, ref_episodes: int | None = None, target_fraction: float | None = None,
    stop_window: int | None = None, net_arch: list[int] | None = None, learning_starts: int | None = None,
    batch_size: int | None = None, learning_rate: float | None = None, threads: int | None = None,
    allow_below_target: bool = False,
) -> Made:
    """``steps`` steps of the final stochastic policy of a SAC run (budget ``train_steps``) stopped at medium.

    A run that missed the medium level is refused as in :func:`make_medium_replay` (before the rollouts)."""
    run = train_sac(task, seed=seed, progress=progress, cache=cache, train_steps=train_steps,
                    target_fraction=target_fraction, stop_window=stop_window, net_arch=net_arch,
                    learning_starts=learning_starts, batch_size=batch_size, learning_rate=learning_rate,
                    threads=threads)
    check_target(task, "medium", run, allow_below_target)
    episodes = rollout_policy(run.model, task, steps=steps, seed=seed, progress=progress,
                              threads=run.info["options"]["threads"])
    return _made(task, f"medium ({steps} steps of the final stochastic SAC policy)", run, episodes,
                 seed=seed, ref_episodes=ref_episodes)


def _made(task: str, what: str, run: _Run, episodes: list[Any], *, seed: int, ref_episodes: int | None) -> Made:
    import gymnasium as gym

    ref_min, ref_max, provenance = reference_scores(task, seed=seed, episodes=ref_episodes)
    env = gym.make(TASKS[task])  # only its spec and spaces are stored
    close_env(env)
    return Made(
        episodes=episodes, env=env, eval_env=env.spec, ref_min_score=ref_min, ref_max_score=ref_max,
        description=_describe(task, what, run, ref_min, provenance, seed), algorithm_name="stable-baselines3 SAC",
        provenance={"env_id": TASKS[task], "sac": run.info, **provenance},
        requirements=[*REQUIREMENTS, "stable-baselines3>=2.3"],
    )

