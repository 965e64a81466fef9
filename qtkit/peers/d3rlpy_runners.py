"""d3rlpy 2.8.0 peers (Decision Transformer, IQL, TD3+BC) trained and evaluated like a qtkit agent.

Each peer is configured as in d3rlpy's own reproduction scripts (``reproductions/offline/*.py``); the
defaults below are those values, and every one can be overridden from a sweep file (``set:``). Training
runs d3rlpy's own update (``algo.update(batch)``) for exactly ``steps`` gradient steps, evaluation uses
qtkit's episodes and seeds (:func:`qtkit.peers.evaluation.evaluate_actor`), and the run folder gets the
files ``agent.fit`` writes (``metrics.csv``, ``summary.json``, ``checkpoint/``), so reports treat peers and
presets alike.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qtkit.errors import CheckpointError, ConfigError, UnknownNameError, UnknownParameterError, did_you_mean

__all__ = ["PEERS", "Peer", "fit_peer", "get_peer", "list_peers", "require_d3rlpy", "resolve_peer_params"]

D3RLPY_VERSION = "2.8.0"
_COMMON = {"device": "auto", "log_every": 100}


@dataclass(frozen=True)
class Peer:
    """A d3rlpy algorithm addressable from a sweep (``peer: NAME``)."""

    name: str
    algo: str  # d3rlpy class name
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    sequence: bool = False  # trajectory windows (DT) rather than transitions


#: Defaults = d3rlpy 2.8.0 reproductions/offline/{decision_transformer,iql,td3_plus_bc}.py.
PEERS: dict[str, Peer] = {
    "d3rlpy-dt": Peer(
        "d3rlpy-dt", "DecisionTransformer", "d3rlpy DecisionTransformer (reproductions/offline/decision_transformer.py)",
        {
            "batch_size": 64, "learning_rate": 1.0e-4, "weight_decay": 1.0e-4, "clip_grad_norm": 0.25,
            "warmup_steps": 10_000, "width": 128, "num_layers": 3, "num_heads": 1, "context_size": 20,
            "max_timestep": 1000, "dropout": 0.1, "reward_scale": 0.001, "target_return": None,
        },
        sequence=True,
    ),
    "d3rlpy-iql": Peer(
        "d3rlpy-iql", "IQL", "d3rlpy IQL (reproductions/offline/iql.py)",
        {
            "batch_size": 256, "actor_learning_rate": 3.0e-4, "critic_learning_rate": 3.0e-4, "gamma": 0.99,
            "tau": 0.005, "n_critics": 2, "expectile": 0.7, "weight_temp": 3.0, "max_weight": 100.0,
            "reward_multiplier": 1000.0, "actor_cosine": True, "hidden": [256, 256],
        },
    ),
    "d3rlpy-td3bc": Peer(
        "d3rlpy-td3bc", "TD3PlusBC", "d3rlpy TD3PlusBC (reproductions/offline/td3_plus_bc.py)",
        {
            "batch_size": 256, "actor_learning_rate": 3.0e-4, "critic_learning_rate": 3.0e-4, "gamma": 0.99,
            "tau": 0.005, "n_critics": 2, "target_smoothing_sigma": 0.2, "target_smoothing_clip": 0.5,
            "alpha": 2.5, "update_actor_interval": 2, "hidden": [256, 256],
        },
    ),
}


def list_peers() -> list[str]:
    """Names of the peers a sweep can run (``peer: NAME``)."""
    return list(PEERS)


def get_peer(name: str) -> Peer:
    """The :class:`Peer` called ``name``; an unknown name lists the peers and suggests close matches."""
    peer = PEERS.get(str(name))
    if peer is None:
        raise UnknownNameError(f"No peer called {name!r}.{did_you_mean(str(name), PEERS)} Peers: {', '.join(PEERS)}.")
    return peer


def resolve_peer_params(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The peer's defaults with ``overrides`` applied; unknown keys raise with suggestions."""
    peer = get_peer(name)
    allowed = {**peer.defaults, **_COMMON}
    params = dict(allowed)
    for key, value in (overrides or {}).items():
        if key not in allowed:
            raise UnknownParameterError(
                f"peer {name!r}: unknown parameter {key!r}.{did_you_mean(key, allowed)} "
                f"Parameters: {', '.join(sorted(allowed))}."
            )
        params[key] = value
    return params


def require_d3rlpy() -> Any:
    """Import d3rlpy (quietly: old ``gym`` prints a banner) or say which extra to install."""
    from qtkit.data.makers import MissingExtraError

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import d3rlpy
    except ImportError as exc:
        raise MissingExtraError(
            f"The d3rlpy peers (d3rlpy-dt, d3rlpy-iql, d3rlpy-td3bc) need d3rlpy {D3RLPY_VERSION}, which is not "
            f"installed. Install the optional extra: pip install 'qtkit[bench]' (pinned: -c constraints.txt)."
        ) from exc
    return d3rlpy


def _device(wanted: str) -> str:
    import torch

    if wanted == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu:0"
    return wanted if ":" in wanted else f"{wanted}:0"


def _action_scaler(d3rlpy: Any, dataset: Any) -> Any:
    """d3rlpy's policies act in [-1, 1] (tanh); other action bounds get a MinMax scaler."""
    low, high = np.asarray(dataset.action_low, dtype=np.float64), np.asarray(dataset.action_high, dtype=np.float64)
    if np.allclose(low, -1.0) and np.allclose(high, 1.0):
        return None
    return d3rlpy.preprocessing.MinMaxActionScaler(minimum=low, maximum=high)


def _make_algo(d3rlpy: Any, peer: Peer, params: dict[str, Any], dataset: Any, steps: int) -> Any:
    device = _device(str(params["device"]))
    action_scaler = _action_scaler(d3rlpy, dataset)
    if peer.name == "d3rlpy-dt":
        longest = int(np.max(dataset.episode_lengths)) + 1
        return d3rlpy.algos.DecisionTransformerConfig(
            batch_size=int(params["batch_size"]),
            learning_rate=float(params["learning_rate"]),
            optim_factory=d3rlpy.optimizers.GPTAdamWFactory(
                weight_decay=float(params["weight_decay"]), clip_grad_norm=params["clip_grad_norm"],
                lr_scheduler_factory=d3rlpy.optimizers.WarmupSchedulerFactory(warmup_steps=max(1, int(params["warmup_steps"]))),
            ),
            encoder_factory=d3rlpy.models.VectorEncoderFactory([int(params["width"])], exclude_last_activation=True),
            observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
            action_scaler=action_scaler,
            reward_scaler=d3rlpy.preprocessing.MultiplyRewardScaler(float(params["reward_scale"])),
            context_size=int(params["context_size"]),
            num_heads=int(params["num_heads"]),
            num_layers=int(params["num_layers"]),
            attn_dropout=float(params["dropout"]), resid_dropout=float(params["dropout"]),
            embed_dropout=float(params["dropout"]),
            max_timestep=max(int(params["max_timestep"]), longest, 1001),
        ).create(device=device)
    encoder = d3rlpy.models.VectorEncoderFactory([int(h) for h in params["hidden"]])
    common = {
        "batch_size": int(params["batch_size"]), "gamma": float(params["gamma"]), "tau": float(params["tau"]),
        "n_critics": int(params["n_critics"]), "actor_encoder_factory": encoder, "critic_encoder_factory": encoder,
        "action_scaler": action_scaler,
    }
    if peer.name == "d3rlpy-iql":
        actor_optim = d3rlpy.optimizers.AdamFactory(
            lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=steps) if params["actor_cosine"] else None,
        )
        return d3rlpy.algos.IQLConfig(
            actor_learning_rate=float(params["actor_learning_rate"]),
            critic_learning_rate=float(params["critic_learning_rate"]),
            actor_optim_factory=actor_optim,
            expectile=float(params["expectile"]), weight_temp=float(params["weight_temp"]),
            max_weight=float(params["max_weight"]),
            reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=float(params["reward_multiplier"])),
            value_encoder_factory=encoder,
            **common,
        ).create(device=device)
    if peer.name == "d3rlpy-td3bc":
        return d3rlpy.algos.TD3PlusBCConfig(
            actor_learning_rate=float(params["actor_learning_rate"]),
            critic_learning_rate=float(params["critic_learning_rate"]),
            target_smoothing_sigma=float(params["target_smoothing_sigma"]),
            target_smoothing_clip=float(params["target_smoothing_clip"]),
            alpha=float(params["alpha"]), update_actor_interval=int(params["update_actor_interval"]),
            observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
            **common,
        ).create(device=device)
    raise UnknownNameError(f"no d3rlpy runner for peer {peer.name!r}")  # pragma: no cover


class _Setup:
    """A built d3rlpy algorithm with its replay buffer and batch sampler."""

    def __init__(self, name: str, dataset: Any, steps: int, params: dict[str, Any], seed: int) -> None:
        from qtkit.peers.convert import to_mdp_dataset

        d3rlpy = require_d3rlpy()
        self.d3rlpy, self.peer, self.params = d3rlpy, get_peer(name), params
        d3rlpy.seed(seed)
        with contextlib.redirect_stdout(io.StringIO()):
            self.buffer = to_mdp_dataset(dataset, keep_final_observation=not self.peer.sequence)
            self.algo = _make_algo(d3rlpy, self.peer, params, dataset, steps)
            from d3rlpy.algos.utility import build_scalers_with_trajectory_slicer, build_scalers_with_transition_picker

            if self.peer.sequence:
                build_scalers_with_trajectory_slicer(self.algo, self.buffer)
            else:
                build_scalers_with_transition_picker(self.algo, self.buffer)
            self.algo.build_with_dataset(self.buffer)

    def sample(self) -> Any:
        size = self.algo.config.batch_size
        if self.peer.sequence:
            return self.buffer.sample_trajectory_batch(size, length=self.algo.config.context_size)
        return self.buffer.sample_transition_batch(size)


class _QActor:
    """Greedy actions of a d3rlpy Q-learning algorithm for a batch of environments."""

    def __init__(self, algo: Any) -> None:
        self.algo = algo

    def act(self, observations: np.ndarray) -> np.ndarray:
        return np.asarray(self.algo.predict(observations.astype(np.float32)), dtype=np.float32)

    def observe(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        pass


class _DTActor:
    """One d3rlpy ``StatefulTransformerWrapper`` per environment (d3rlpy's own DT evaluation path)."""

    def __init__(self, algo: Any, num_envs: int, target_return: float) -> None:
        self.wrappers = [algo.as_stateful_wrapper(target_return=target_return) for _ in range(num_envs)]
        self.last_rewards = np.zeros(num_envs)

    def act(self, observations: np.ndarray) -> np.ndarray:
        return np.stack([
            np.asarray(w.predict(observations[i].astype(np.float32), float(self.last_rewards[i])), dtype=np.float32)
            for i, w in enumerate(self.wrappers)
        ])

    def observe(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.last_rewards = np.asarray(rewards, dtype=np.float64).copy()
        for i in np.flatnonzero(dones):
            self.wrappers[i].reset()
            self.last_rewards[i] = 0.0


def _save(directory: Path, setup: _Setup, state: dict[str, Any]) -> None:
    """Checkpoint folder (d3rlpy ``save_model`` + resume state), swapped in atomically."""
    import torch

    from qtkit.fileio import atomic_directory

    with atomic_directory(directory) as tmp:
        setup.algo.save_model(str(tmp / "model.d3"))
        torch.save(state, tmp / "state.pt")
        (tmp / "peer.json").write_text(json.dumps({"peer": setup.peer.name, "params": setup.params}, default=str))


def _load(directory: Path, setup: _Setup) -> dict[str, Any]:
    import torch

    if not all((directory / f).is_file() for f in ("model.d3", "state.pt", "peer.json")):
        raise CheckpointError(f"peer checkpoint {str(directory)!r} is incomplete (model.d3, state.pt, peer.json).")
    saved = json.loads((directory / "peer.json").read_text())
    if saved.get("peer") != setup.peer.name or json.loads(json.dumps(setup.params, default=str)) != saved.get("params"):
        raise CheckpointError(f"cannot resume from {str(directory)!r}: it was made by {saved.get('peer')!r} with other "
                              "parameters; start a new run folder.")
    setup.algo.load_model(str(directory / "model.d3"))
    state = torch.load(directory / "state.pt", weights_only=False)
    setup.algo._grad_step = int(state["grad_step"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    return state


class _PeerLearner:
    """A d3rlpy algorithm as the shared loop's learner (:class:`qtkit.training.Trainable`): d3rlpy's own update
    is the training step, evaluation uses qtkit's episodes and seeds, checkpoints are :func:`_save` folders."""

    def __init__(self, setup: _Setup, ref_scores: tuple[float, float] | None, target_return: float) -> None:
        self.setup, self.ref_scores, self.target_return = setup, ref_scores, target_return
        self.step = 0
        self.eval_history: list[dict[str, Any]] = []
        self._sums: dict[str, float] = {}  # losses since the last logged step
        self._count = 0

    def train_step(self, batch: Any, diagnose: bool = False) -> dict[str, float]:
        """``algo.update(batch)``; on the steps the loop logs (``diagnose``), the mean losses since the last one."""
        losses = self.setup.algo.update(batch)
        self.step += 1
        self._count += 1
        for key, value in losses.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
        if not diagnose:
            return {}
        means = {k: v / self._count for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        return means

    def _actor(self, n: int) -> Any:
        if self.setup.peer.sequence:
            return _DTActor(self.setup.algo, n, self.target_return)
        return _QActor(self.setup.algo)

    def evaluate(self, env: Any, episodes: int, seed: int) -> dict[str, Any]:
        from qtkit.peers.evaluation import evaluate_actor

        return evaluate_actor(self._actor, env, episodes=episodes, seed=seed, ref_scores=self.ref_scores)

    def train_mode(self) -> None:
        """Nothing to switch: d3rlpy's ``update`` sets its own modes."""

    def save(self, directory: Path) -> None:
        import torch

        _save(directory, self.setup, {
            "step": self.step, "grad_step": self.setup.algo.grad_step, "eval_history": self.eval_history,
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
            "torch_rng": torch.get_rng_state(),
        })


def fit_peer(
    name: str,
    dataset: Any,
    steps: int,
    *,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    eval_env: Any = None,
    eval_every: int | None = None,
    eval_episodes: int = 10,
    log_dir: str | Path | None = None,
    resume: str | Path | None = None,
    checkpoint_every: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train peer ``name`` for ``steps`` gradient steps on a ``TrajectoryDataset``; same contract as ``agent.fit``.

    Evaluates on ``eval_env`` (a dataset, env id or factory) every ``eval_every`` steps and at the end with
    ``eval_episodes`` episodes seeded ``seed + 10000 + i`` (as qtkit agents do); returns and writes
    ``{"steps", "final", "best", "metrics", "evaluations"}`` (``summary.json``, ``metrics.csv``, ``checkpoint/``).
    The schedule, logging (losses averaged over each ``log_every`` steps, as d3rlpy logs them), results and
    files are the shared training loop's (:func:`qtkit.training.train`).
    """
    from qtkit.training import Schedule, train

    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}.")
    params = resolve_peer_params(name, params)
    setup = _Setup(name, dataset, steps, params, seed)
    lo, hi = dataset.metadata.get("ref_min_score"), dataset.metadata.get("ref_max_score")
    ref = (float(lo), float(hi)) if lo is not None and hi is not None else None
    target = params.get("target_return")
    target = float(np.max(dataset.episode_returns)) if target is None else float(target)
    learner = _PeerLearner(setup, ref, target)
    if resume is not None and Path(resume).is_dir():
        state = _load(Path(resume), setup)
        learner.step, learner.eval_history = int(state["step"]), list(state["eval_history"])
    schedule = Schedule(steps=steps, log_every=max(1, int(params["log_every"])), eval_every=eval_every,
                        eval_episodes=eval_episodes, eval_seed=seed + 10_000, checkpoint_every=checkpoint_every)
    return train(learner, setup.sample, schedule, eval_env=eval_env, log_dir=log_dir, progress=progress)
