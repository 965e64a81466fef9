"""Acting and evaluation: a rolling K-step context per environment, gymnasium vector envs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qtkit.errors import ConfigError, ShapeMismatchError
from qtkit.samplers.base import RolloutContext

if TYPE_CHECKING:
    from qtkit.agents.base import Agent


class Rollout:
    """The acting state of ``num_envs`` parallel episodes: a left-padded K-step history per env and
    one return-to-go history per candidate row of the agent's sampler.

    Call :meth:`act` with the raw (flattened) observations, step the envs, then :meth:`observe`
    with the rewards and done flags; finished envs start a fresh history.
    """

    def __init__(self, agent: Agent, num_envs: int = 1, seed: int = 0) -> None:
        if agent.return_targets is None:
            raise ConfigError(
                f"agent {agent.name!r} has no return targets yet: train it with fit(dataset) or load a "
                "trained checkpoint, or give the sampler explicit targets (sampler={'targets': [...]})."
            )
        self.agent, self.num_envs = agent, num_envs
        tc = agent.train_config
        self.K, self.rtg_scale = tc.context, tc.rtg_scale
        self.generator = torch.Generator().manual_seed(seed)
        obs_dim, act_dim = agent.encoder.out_dim, agent.shapes["act_dim"]  # the history holds encoder features
        device = agent.device
        if agent.sampler is None:
            raise ConfigError(f"agent {agent.name!r} has no sampler to act with: give its preset a sampler slot.")
        self.sampler = agent.sampler
        rows = self.sampler.num_rows
        self.ctx = RolloutContext(
            states=torch.zeros(num_envs, self.K, obs_dim, device=device),
            actions=torch.zeros(num_envs, self.K, act_dim, device=device),
            timesteps=torch.zeros(num_envs, self.K, dtype=torch.long, device=device),
            mask=torch.zeros(num_envs, self.K, dtype=torch.bool, device=device),
            rtg=torch.zeros(num_envs, rows, self.K, device=device),
            critic_states=None if agent.critic_encoder is None else torch.zeros(
                num_envs, self.K, agent.critic_encoder.out_dim, device=device),
        )
        self.t = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.current_rtg = self._initial_rtg(num_envs)
        #: the last F raw frames per env [E, F, H * W * C] uint8 (image encoders with frame_stack F > 1), oldest first
        stack = agent.encoder.frame_stack
        self.frames = (torch.zeros(num_envs, stack, agent.shapes["obs_dim"], dtype=torch.uint8, device=device)
                       if stack > 1 else None)

    def _initial_rtg(self, n: int) -> torch.Tensor:
        assert self.agent.return_targets is not None
        rtg = self.sampler.initial_rtg(n, self.agent.return_targets, self.rtg_scale, self.generator)
        return rtg.to(self.agent.device)

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        """Actions ``[E, act]`` for raw flattened observations ``[E, obs]`` (images: uint8, flattened or not).

        Image + vector observations (an agent built on data with a proprioceptive vector) come flattened in the
        Dict's order, ``[E, H * W * C + P]``, and are split by the agent's ``shapes["observation_parts"]``."""
        agent, ctx = self.agent, self.ctx
        shapes = agent.shapes
        proprio = None
        if shapes.get("proprio_dim"):
            from qtkit.data.spaces import split_flat_observation

            flat = np.asarray(observations, dtype=np.float32).reshape(self.num_envs, -1)
            width = shapes["obs_dim"] + shapes["proprio_dim"]
            if flat.shape[1] != width:
                raise ShapeMismatchError(
                    f"agent {agent.name!r} expects image + vector observations flattened to [{self.num_envs}, {width}] "
                    f"(frames {shapes['obs_dim']} + proprioceptive {shapes['proprio_dim']}), got {list(flat.shape)}."
                )
            observations, prop = split_flat_observation(flat, shapes["observation_parts"])
            proprio = torch.as_tensor(prop, device=agent.device)
        dtype = np.uint8 if agent.encoder.is_image else np.float32  # frames stay uint8 until the encoder
        obs = torch.as_tensor(np.asarray(observations, dtype=dtype), device=agent.device)
        obs = obs.reshape(obs.shape[0], -1) if obs.ndim > 2 else obs
        if obs.shape != (self.num_envs, agent.shapes["obs_dim"]):
            raise ShapeMismatchError(
                f"agent {agent.name!r} expects observations of shape [{self.num_envs}, {agent.shapes['obs_dim']}] "
                f"(num_envs, obs_dim), got {list(obs.shape)}."
            )
        ctx.states, ctx.actions, ctx.timesteps, ctx.mask = (
            torch.roll(t, -1, dims=1) for t in (ctx.states, ctx.actions, ctx.timesteps, ctx.mask))
        ctx.rtg = torch.roll(ctx.rtg, -1, dims=2)
        if ctx.critic_states is not None:
            ctx.critic_states = torch.roll(ctx.critic_states, -1, dims=1)
        agent.encoder.eval()
        if self.frames is not None:  # frame stacking: push the new frame; an episode's first fills the stack
            fresh = self.t == 0
            self.frames = torch.roll(self.frames, -1, dims=1)
            self.frames[:, -1] = obs
            self.frames[fresh] = obs[fresh].unsqueeze(1)
            obs = self.frames
        ctx.states[:, -1] = agent.encode(obs, proprio)
        if ctx.critic_states is not None:
            assert agent.critic_encoder is not None
            agent.critic_encoder.eval()
            ctx.critic_states[:, -1] = agent.encode(obs, proprio, encoder=agent.critic_encoder)
        ctx.actions[:, -1] = 0.0
        ctx.timesteps[:, -1] = self.t
        ctx.mask[:, -1] = True
        ctx.rtg[:, :, -1] = self.current_rtg
        agent.policy.eval()
        if agent.critic is not None:
            agent.critic.eval()
        with agent.autocast():
            actions, _ = self.sampler.select(agent.policy, agent.critic, ctx, self.generator)
        actions = actions.float()
        ctx.actions[:, -1] = actions
        return actions.cpu().numpy()

    def observe(self, rewards: Any, dones: Any) -> None:
        """Advance every row's return-to-go by the rewards; restart the envs that are done."""
        rewards = torch.as_tensor(np.asarray(rewards, dtype=np.float32), device=self.agent.device)
        self.current_rtg = self.ctx.rtg[:, :, -1] - rewards.unsqueeze(-1) / self.rtg_scale
        self.t += 1
        done = np.asarray(dones, dtype=bool)
        if done.any():
            index = torch.as_tensor(np.flatnonzero(done), device=self.agent.device)
            self.ctx.mask[index] = False
            self.ctx.states[index] = 0.0
            if self.ctx.critic_states is not None:
                self.ctx.critic_states[index] = 0.0
            self.ctx.actions[index] = 0.0
            self.ctx.timesteps[index] = 0
            self.ctx.rtg[index] = 0.0
            self.t[index] = 0
            self.current_rtg[index] = self._initial_rtg(len(index))


def _env_factory(env: Any, agent: Agent | None) -> tuple[Callable[[], Any] | None, Any]:
    """``(factory, single_env)``: how to make evaluation envs from an id, a factory, a dataset or an env
    (None: the ``agent``'s training env)."""
    import gymnasium as gym

    if env is None:
        env = agent.env_spec if agent is not None else None
        if env is None:
            raise ConfigError(
                f"agent {agent.name if agent is not None else ''!r} does not know its environment: pass env=... "
                "(a gymnasium id, an env, a factory or the dataset)."
            )
    if isinstance(env, str):
        spec: Any = env
        if "gymnasium_robotics" in env or "Maze" in env or "qtkit/" in env:
            from qtkit.data.loading import register_robotics_envs

            register_robotics_envs()  # quietly, before gym.make imports it
        if env.lstrip().startswith("{"):
            from gymnasium.envs.registration import EnvSpec

            spec = EnvSpec.from_json(env)
        return (lambda: gym.make(spec)), None
    if hasattr(env, "make_env"):
        return env.make_env, None
    if isinstance(env, gym.Env):
        return None, env
    if callable(env):
        return env, None
    raise ConfigError(f"cannot evaluate on {env!r}: give a gymnasium id, an env, an env factory or a dataset.")


def _env_name(env: Any, agent: Agent | None) -> str:
    if env is None and agent is not None:
        env = agent.env_spec
    if isinstance(env, str) and env.lstrip().startswith("{"):
        import json

        try:
            return str(json.loads(env).get("id", env))
        except (ValueError, AttributeError):
            return env
    if hasattr(env, "make_env"):
        return f"the env of dataset {getattr(env, 'name', env)}"
    return str(env)


def _make_error(env: Any, agent: Agent | None, exc: Exception) -> ConfigError:
    cause = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
    return ConfigError(
        f"cannot make the evaluation env {_env_name(env, agent)!r}: {cause}. Fix: give a registered gymnasium id "
        "(e.g. --env Pendulum-v1; `python -c 'import gymnasium; gymnasium.pprint_registry()'` lists them), or install "
        "the package that registers it."
    )


def check_eval_env(env: Any, agent: Agent | None = None) -> None:
    """Make (and close) one evaluation env from ``env`` (as :func:`evaluate_agent` takes it), so that a missing
    env fails before any work: a :class:`~qtkit.errors.ConfigError` / :class:`~qtkit.errors.DataError` names it."""
    import gymnasium as gym

    factory, _ = _env_factory(env, agent)
    if factory is None:
        return
    try:
        made = factory()
    except (gym.error.Error, ImportError, ModuleNotFoundError, AttributeError) as exc:
        raise _make_error(env, agent, exc) from None
    made.close()


def env_factory(env: Any) -> Callable[[], Any]:
    """A factory of evaluation envs from a gymnasium id, an EnvSpec JSON, a dataset (``make_env``) or a factory."""
    factory, single = _env_factory(env, None)
    if factory is None:
        return lambda: single
    return factory


def run_episodes(envs: Any, actor: Any, episodes: int, seed: int = 0,
                 ref_scores: tuple[float, float] | None = None, progress: bool = False) -> dict[str, Any]:
    """The evaluation loop shared by agents and peers: ``episodes`` episodes on a gymnasium vector env.

    ``envs``: a ``SyncVectorEnv`` of n envs (SAME_STEP autoreset), reset with seeds ``seed + i``;
    env i runs ``episodes // n`` episodes (+1 for the first ``episodes % n``). ``actor`` has
    ``act(observations [n, obs]) -> actions [n, act]`` and ``observe(rewards [n], dones [n])``; its
    actions are clipped to the action space. Returns ``mean_return``, ``std_return``, ``mean_length``,
    ``episodes``, ``returns`` and, with ``ref_scores = (random, expert)``, ``normalized_score`` and
    ``normalized_std`` (D4RL-style, 0-100). Closes ``envs``.
    """
    from tqdm.auto import tqdm

    from qtkit.data import flatten_observation

    n = envs.num_envs
    space, act_space = envs.single_observation_space, envs.single_action_space
    quota = [episodes // n + (1 if i < episodes % n else 0) for i in range(n)]
    counts, returns, lengths = [0] * n, [], []
    running, steps = np.zeros(n), np.zeros(n, dtype=int)
    observations, _ = envs.reset(seed=[seed + i for i in range(n)])
    bar = tqdm(total=episodes, disable=not progress, desc="evaluate", unit="ep")
    try:
        while sum(counts) < episodes:
            actions = np.asarray(actor.act(np.asarray(flatten_observation(space, observations), dtype=np.float32)))
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
                    bar.update(1)
                running[i], steps[i] = 0.0, 0
    finally:
        bar.close()
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


def evaluate_agent(agent: Agent, env: Any = None, episodes: int = 10, seed: int = 0, num_envs: int | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Run ``episodes`` evaluation episodes (seeded) in parallel environments (see :func:`run_episodes`).

    Returns ``mean_return``, ``std_return``, ``returns`` (list), ``mean_length`` and, when the agent
    knows the dataset's reference scores, ``normalized_score`` and ``normalized_std``.
    """
    import gymnasium as gym

    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}.")
    factory, single = _env_factory(env, agent)
    n = 1 if single is not None else max(1, min(episodes, num_envs or min(episodes, 10)))
    if single is not None:
        envs = gym.vector.SyncVectorEnv([lambda: single], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    else:
        try:
            envs = gym.vector.SyncVectorEnv([factory] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        except (gym.error.Error, ImportError, AttributeError) as exc:  # an unknown id, a missing package
            raise _make_error(env, agent, exc) from None
    space = envs.single_observation_space
    width = agent.shapes["obs_dim"] + int(agent.shapes.get("proprio_dim") or 0)  # frames + proprioceptive vector
    if gym.spaces.flatdim(space) != width:
        envs.close()
        what = f"obs_dim={agent.shapes['obs_dim']}" + (
            f" + proprio_dim={agent.shapes['proprio_dim']}" if agent.shapes.get("proprio_dim") else "")
        raise ShapeMismatchError(
            f"agent {agent.name!r} has {what} but the env's observations flatten to "
            f"{gym.spaces.flatdim(space)} ({space})."
        )
    act_space = envs.single_action_space
    if int(np.prod(act_space.shape)) != agent.shapes["act_dim"]:
        envs.close()
        raise ShapeMismatchError(
            f"agent {agent.name!r} has act_dim={agent.shapes['act_dim']} but the env's action space is {act_space}."
        )
    return run_episodes(envs, Rollout(agent, num_envs=n, seed=seed), episodes, seed=seed,
                        ref_scores=agent.ref_scores, progress=progress)
