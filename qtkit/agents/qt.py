"""The QT agent family: a sequence policy trained with L_DT + eta * L_Q against a critic.

Decision Transformer is this family with ``eta = 0`` and no critic (ALGORITHMS.md §2-§5).
The training step (:meth:`QTAgent.train_step`) reads top to bottom: critic update with the
preset's backup, policy update, then target/EMA updates.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from qtkit.agents.base import Agent, TrainConfig, lr_schedule_update, make_lr_scheduler
from qtkit.agents.diagnostics import gradient_balance, q_at_data, value_diagnostics
from qtkit.critics.base import soft_update
from qtkit.data.batch import Batch
from qtkit.errors import CheckpointError, ConfigError, ShapeMismatchError, TrainingError
from qtkit.registry import register


@dataclass
class QTTrainConfig(TrainConfig):
    """Training parameters of the QT family (the ``train`` section of a preset): the shared ones
    (:class:`qtkit.agents.base.TrainConfig`) plus the policy/critic split, eta and the EMA policy."""

    eta: float = 1.0  # weight of L_Q; 0 gives Decision Transformer
    critic_lr: float = 3.0e-4
    critic_weight_decay: float = 0.0
    critic_grad_clip: float | Literal["grad_clip"] | None = "grad_clip"  # "grad_clip": the policy's clip (reference)
    ema_decay: float = 0.995  # EMA copy of the policy used for bootstrap actions
    ema_every: int = 5
    ema_start: int = 1000  # before this step the EMA copy tracks the policy exactly


def keep_freed_memory() -> bool:
    """glibc only, once per process: keep freed blocks in the heap instead of handing them back to the kernel.

    By default every allocation over 32 MiB (a reference-size activation) is a fresh ``mmap`` whose
    pages are faulted in and zeroed at every training step (~250k-620k page faults, 1-2.5 s of system
    time per reference CPU step): ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, 2 GiB)``
    make them reuse the heap (0 faults after ~3 steps; benchmarks/RESULTS.md). Process-wide and
    permanent: the process keeps its peak heap until it exits. ``QTKIT_MALLOC=default`` skips it.
    Returns whether it was applied.
    """
    import ctypes
    import os
    import sys

    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux") or os.environ.get("QTKIT_MALLOC") == "default":
        return _MALLOC_TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        _MALLOC_TUNED = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        _MALLOC_TUNED = False
    return _MALLOC_TUNED


_MALLOC_TUNED = False


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` holds; what the others hold (NaN included) never counts."""
    mask = mask.bool()
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1).to(x.dtype)


@register("agent", "qt")
class QTAgent(Agent):
    """QT / Decision Transformer: GPT-style policy, optional twin critic, n-step backups."""

    TrainConfig = QTTrainConfig

    def __init__(self, config: dict[str, Any], policy: Any = None, critic: Any = None,
                 backup: Any = None, sampler: Any = None) -> None:
        if type(self) is QTAgent and not callable(getattr(policy, "bc_loss", None)):
            raise ConfigError(
                f"preset {config.get('name')!r}: agent 'qt' trains its policy by behaviour cloning, but policy "
                f"{type(policy).__name__} has no bc_loss(). Policy 'ar-argmax' decodes an 'ar-q' critic: use it "
                "with agent: qtransformer (see preset 'qtransformer')."
            )
        super().__init__(config, policy, critic, backup, sampler)
        tc = self.train_config
        obs_dim = self.shapes["obs_dim"]
        self.obs_mean = torch.zeros(obs_dim)
        self.obs_std = torch.ones(obs_dim)
        self.return_targets: list[float] | None = None  # raw units, set from the dataset at fit
        self.ref_scores: tuple[float, float] | None = None
        self.ema_policy: nn.Module | None = None
        if critic is not None and getattr(critic, "needs_policy_actions", False):
            self.ema_policy = copy.deepcopy(policy).eval().requires_grad_(False)
        self.step = 0
        self.generator = torch.Generator().manual_seed(tc.seed)
        torch.manual_seed(tc.seed)
        self.policy_optimizer: torch.optim.Optimizer | None = None
        self.critic_optimizer: torch.optim.Optimizer | None = None
        self.policy_scheduler: Any = None
        self.critic_scheduler: Any = None
        self._total_steps: int | None = None
        self._eval_history: list[dict[str, Any]] = []
        self._rollout: Any = None
        self.env_spec: str | None = None  # the dataset's env (id or EnvSpec JSON), for evaluate()
        self.dataset_id: str | None = None  # the training dataset's id, for error messages
        self._policy_forward: Any = policy  # torch.compile'd forward passes when train.compile (see compile_modules)
        self._critic_forward: Any = critic

    # ------------------------------------------------------------------ set-up
    def modules(self) -> dict[str, nn.Module]:
        out = super().modules()
        if self.ema_policy is not None:
            out["ema_policy"] = self.ema_policy
        return out

    def resolve_device(self) -> torch.device:
        wanted = self.train_config.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(wanted)
        if device.type == "cuda" and self.train_config.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return device

    def autocast(self) -> Any:
        enabled = self.train_config.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def check_dataset(self, dataset: Any) -> None:
        """Agent and dataset must agree on observation and action sizes (names both shapes)."""
        for key in ("obs_dim", "act_dim"):
            mine, theirs = self.shapes[key], int(getattr(dataset, key))
            if mine != theirs:
                raise ShapeMismatchError(
                    f"agent {self.name!r} was built with {key}={mine} but dataset "
                    f"{dataset.metadata.get('dataset_id', dataset)!r} has {key}={theirs}. Build the agent "
                    "with qtkit.build(..., dataset=dataset) so the shapes come from the data."
                )

    def prepare(self, dataset: Any) -> None:
        """Take observation statistics, return targets and reference scores from the dataset."""
        self.check_dataset(dataset)
        self.obs_mean = torch.tensor(np.array(dataset.obs_mean), dtype=torch.float32)
        self.obs_std = torch.tensor(np.array(dataset.obs_std), dtype=torch.float32)
        best = float(np.max(dataset.episode_returns))
        targets = getattr(self.sampler, "targets", None)
        fractions = getattr(self.sampler, "target_fractions", [1.0])
        self.return_targets = list(targets) if targets else [best * f for f in fractions]
        lo, hi = dataset.metadata.get("ref_min_score"), dataset.metadata.get("ref_max_score")
        self.ref_scores = (float(lo), float(hi)) if lo is not None and hi is not None else None
        self.dataset_id = dataset.metadata.get("dataset_id")
        spec = dataset.metadata.get("eval_env_spec") or dataset.metadata.get("env_spec") or dataset.metadata.get("env_id")
        self.env_spec = spec.to_json() if hasattr(spec, "to_json") else spec
        if callable(getattr(self.critic, "prepare", None)):
            self.critic.prepare(dataset)  # e.g. ar-q resolves its conservative floor from the rewards

    def _make_optimizers(self, total_steps: int) -> None:
        from timm.optim import create_optimizer_v2

        tc = self.train_config

        # torch's fused Adam/AdamW (CPU and CUDA): the same update in one kernel over all parameters
        # instead of a Python loop of small ops (reference policy, CPU: clip + step 46 ms -> 15 ms)
        fused = {"fused": True} if tc.optimizer.lower() in ("adam", "adamw") else {}
        groups = {"filter_bias_and_bn": not tc.decay_all_parameters}
        self.policy_optimizer = create_optimizer_v2(self.policy, opt=tc.optimizer, lr=tc.lr, weight_decay=tc.weight_decay,
                                                    **groups, **fused)
        self.policy_scheduler = make_lr_scheduler(self.policy_optimizer, tc, total_steps, tc.lr)
        if self.critic is not None:
            self.critic_optimizer = create_optimizer_v2(
                self.critic.net, opt=tc.optimizer, lr=tc.critic_lr, weight_decay=tc.critic_weight_decay, **groups,
                **fused,
            )
            self.critic_scheduler = make_lr_scheduler(self.critic_optimizer, tc, total_steps, tc.critic_lr)
        self._total_steps = total_steps

    def compile_modules(self) -> None:
        """Route the training forward passes of the policy and critic through ``torch.compile``.

        The modules themselves stay uncompiled (weights, state dicts and checkpoints are unchanged);
        only the calls in :meth:`train_step` go through the compiled wrappers. On CPU, inductor needs
        a C++ compiler; the first steps pay the compilation.
        """
        self._policy_forward = torch.compile(self.policy)
        self._critic_forward = torch.compile(self.critic) if self.critic is not None else None

    def standardize(self, observations: Tensor) -> Tensor:
        return (observations - self.obs_mean.to(observations)) / self.obs_std.to(observations)

    # ------------------------------------------------------------------ training
    def train_step(self, batch: Batch, diagnose: bool = False) -> dict[str, float]:
        """One gradient step on a batch of windows: critic, then policy, then targets and EMA.

        ``diagnose``: also return the value diagnostics (:mod:`qtkit.agents.diagnostics`: Q at the data's
        actions against Monte-Carlo returns, L_Q's gradient against L_DT's); the update is the same.
        """
        tc = self.train_config
        states = self.standardize(batch.observations)
        next_states = self.standardize(batch.next_observations)
        actions, rtg, timesteps, mask = batch.actions, batch.rtg, batch.timesteps, batch.mask
        metrics: dict[str, Tensor] = {}

        # 1. Critic: targets from the preset's backup, bootstrapped through the EMA policy (eval mode).
        if self.critic is not None:
            with torch.no_grad(), self.autocast():
                if self.backup.needs_next_values:
                    bootstrap_actions = None
                    if self.ema_policy is not None:
                        # actions only: the GPT policy then skips its next-state outputs (same actions)
                        only_actions = {"predict_next": False} if getattr(self.ema_policy, "supports_last_only", False) else {}
                        bootstrap_actions = self.ema_policy(states, actions, rtg, timesteps, mask, **only_actions)[0].float()
                    next_values, next_valid = self.critic.bootstrap(states, next_states, bootstrap_actions, mask)
                else:  # e.g. Monte-Carlo targets: no bootstrap, no EMA forward pass
                    next_values, next_valid = torch.zeros_like(batch.rewards), mask
                targets, valid = self.backup(batch, next_values.float(), next_valid)
            with self.autocast():
                critic_loss, critic_metrics = self.critic.loss(states, actions, targets, valid, batch=batch)
            critic_clip = tc.grad_clip if tc.critic_grad_clip == "grad_clip" else tc.critic_grad_clip
            self._step_optimizer(self.critic_optimizer, self.critic_scheduler, critic_loss, self.critic.parameters(),
                                 critic_clip, "critic")
            metrics.update(critic_metrics)
            metrics["target_valid_frac"] = valid.float().mean()
            if diagnose:
                with torch.no_grad():
                    metrics.update(value_diagnostics(q_at_data(self.critic, states, actions), batch.returns, mask))

        # 2. Policy: behaviour cloning (+ next-state prediction) + eta * normalised Q term.
        with self.autocast():
            predicted, predicted_next = self._policy_forward(states, actions, rtg, timesteps, mask)
            loss, policy_metrics = self.policy.bc_loss(predicted, predicted_next, actions, next_states, mask)
            if self.critic is not None and tc.eta > 0:
                trainable = [p for p in self.critic.parameters() if p.requires_grad]  # not the target copy
                for p in trainable:
                    p.requires_grad_(False)  # L_Q's gradient reaches the policy only
                q = self._critic_forward(states, predicted)  # [E, B, K]
                for p in trainable:
                    p.requires_grad_(True)
                members = torch.randperm(q.shape[0], generator=self.generator)
                i, j = int(members[0]), int(members[-1])
                q_loss = -_masked_mean(q[i], mask) / _masked_mean(q[j].abs(), mask).detach().clamp(min=1e-6)
                q_term = tc.eta * q_loss
                if diagnose:
                    metrics.update(gradient_balance(loss, q_term, self.policy.parameters()))
                loss = loss + q_term
                metrics["q_loss"] = q_loss.detach()
        self._step_optimizer(self.policy_optimizer, self.policy_scheduler, loss, self.policy.parameters(),
                             tc.grad_clip, "policy")
        metrics.update(policy_metrics)
        metrics["policy_loss"] = loss.detach()

        # 3. Targets: soft critic target update every step; EMA policy every ema_every steps.
        self.step += 1
        if self.critic is not None:
            self.critic.update_target(tc.tau)
        if self.ema_policy is not None and self.step % tc.ema_every == 0:
            self._update_ema()
        return {k: float(v) for k, v in metrics.items()}

    def _step_optimizer(self, optimizer: torch.optim.Optimizer | None, scheduler: Any, loss: Tensor,
                        parameters: Any, clip: float | None, what: str) -> None:
        if optimizer is None:
            raise TrainingError("optimizers are created by fit(); call agent.fit(dataset, steps) to train.")
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite {what} loss ({float(loss.detach())}) at step {self.step}; the step was not applied. "
                "Lower the learning rate or eta, check the dataset for extreme values, or raise grad clipping."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()
        lr_schedule_update(scheduler, self.step + 1, self.train_config.lr_update_every)

    @torch.no_grad()
    def _update_ema(self) -> None:
        assert self.ema_policy is not None
        tc = self.train_config
        decay = tc.ema_decay if self.step >= tc.ema_start else 0.0
        soft_update(self.ema_policy, self.policy, 1.0 - decay)

    def fit(
        self,
        dataset: Any,
        steps: int | None = None,
        *,
        eval_env: Any = None,
        eval_every: int | None = None,
        eval_episodes: int | None = None,
        log_dir: str | Path | None = None,
        resume: str | Path | None = None,
        checkpoint_every: int | None = None,
        until: int | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Train for ``steps`` gradient steps (default ``train.steps``) on ``dataset``.

        Evaluates on ``eval_env`` every ``eval_every`` steps and at the end; writes metrics (CSV,
        TensorBoard) and a checkpoint to ``log_dir``; ``resume`` continues a checkpoint exactly.
        ``until`` stops early at that step (the LR schedule still spans ``steps``), e.g. to train in chunks.
        Returns ``{"final": eval or None, "best": eval or None, "steps": n, "metrics": rows}``.
        """
        from qtkit.agents.logger import MetricsLogger

        if isinstance(dataset, str):
            from qtkit.data import load_dataset

            dataset = load_dataset(dataset)
        tc = self.train_config
        if getattr(dataset, "gamma", tc.gamma) != tc.gamma:  # Monte-Carlo returns must use the agent's discount
            dataset = dataset.with_gamma(tc.gamma)
        total = int(steps if steps is not None else tc.steps)
        if resume is not None:
            self._restore(resume, dataset)
            total = self._total_steps or total
        else:
            self.prepare(dataset)
            self.to(self.resolve_device())
            self._make_optimizers(total)
        if self.device.type == "cpu":
            keep_freed_memory()
        if tc.compile and self._policy_forward is self.policy:
            self.compile_modules()
        eval_episodes = eval_episodes or tc.eval_episodes
        logger = MetricsLogger(log_dir, total=total, start=self.step, progress=progress)
        history: list[dict[str, Any]] = self._eval_history if resume is not None else []
        self.policy.train()
        if self.critic is not None:
            self.critic.train()
        try:
            stop = min(total, until) if until is not None else total
            while self.step < stop:
                batch = dataset.sample_windows(tc.batch_size, tc.context, self.generator, rtg_scale=tc.rtg_scale)
                batch = batch.to(self.device)
                diagnose = (self.step + 1) % tc.log_every == 0 or self.step + 1 >= stop
                try:
                    metrics = self.train_step(batch, diagnose=diagnose)
                except TrainingError as exc:
                    where = f" The last good checkpoint is in {log_dir}." if log_dir else ""
                    raise TrainingError(f"{exc}{where}") from None
                logger.advance()
                done = self.step >= stop
                if self.step % tc.log_every == 0 or done:
                    logger.log(self.step, metrics)
                if eval_env is not None and ((eval_every and self.step % eval_every == 0) or done):
                    result = self.evaluate(eval_env, episodes=eval_episodes, seed=tc.seed + 10_000)
                    self.policy.train()  # evaluation leaves the modules in eval mode: back to training (dropout)
                    if self.critic is not None:
                        self.critic.train()
                    history.append({"step": self.step, **{k: v for k, v in result.items() if k != "returns"}})
                    logger.log(self.step, {f"eval_{k}": v for k, v in result.items() if isinstance(v, float)})
                if log_dir is not None and (done or (checkpoint_every and self.step % checkpoint_every == 0)):
                    self._eval_history = history
                    self.save(Path(log_dir) / "checkpoint")
        finally:
            logger.close()
        self._eval_history = history
        scored = [h for h in history if h.get("normalized_score") is not None] or history
        key = "normalized_score" if scored and scored[0].get("normalized_score") is not None else "mean_return"
        final = history[-1] if history else None
        best = max(scored, key=lambda h: h[key]) if scored else None
        summary = {"steps": self.step, "final": final, "best": best, "metrics": logger.rows, "evaluations": history}
        if log_dir is not None:
            import json

            from qtkit.checkpoint import atomic_write_text

            atomic_write_text(Path(log_dir) / "summary.json", json.dumps(
                {k: v for k, v in summary.items() if k != "metrics"}, indent=2, default=float))
        return summary

    # ------------------------------------------------------------------ acting
    def evaluate(self, env: Any = None, episodes: int = 10, seed: int = 0, num_envs: int | None = None,
                 progress: bool = False, normalized: bool | None = None) -> dict[str, Any]:
        """Run ``episodes`` episodes with the sampler; mean/std return and normalised score.

        ``normalized``: None reports the normalised score when the training dataset had reference
        scores; True requires it (a :class:`~qtkit.errors.DataError` names the dataset otherwise).
        """
        from qtkit.agents.evaluation import evaluate_agent

        if normalized and self.ref_scores is None:
            from qtkit.errors import DataError

            raise DataError(
                f"agent {self.name!r} cannot report a normalised score: its training dataset "
                f"{self.dataset_id or '(unknown)'!r} has no reference scores (ref_min_score / ref_max_score). "
                "Load the dataset with qtkit.data.load_dataset(..., ref_min_score=R_random, ref_max_score=R_expert) "
                "before fit, or evaluate raw returns (normalized=None)."
            )
        return evaluate_agent(self, env, episodes=episodes, seed=seed, num_envs=num_envs, progress=progress)

    def rollout(self, num_envs: int = 1, seed: int = 0) -> Any:
        """A stateful acting context for ``num_envs`` environments (see :class:`~qtkit.agents.evaluation.Rollout`)."""
        from qtkit.agents.evaluation import Rollout

        return Rollout(self, num_envs=num_envs, seed=seed)

    def act(self, observations: Any, rollout: Any = None) -> np.ndarray:
        """Actions for one observation ``[obs]`` or a batch ``[E, obs]`` (numpy). Keeps the context in
        ``rollout`` (default: an internal one, reset by :meth:`reset`); call ``rollout.observe(rewards, dones)``
        after each env step so the return-to-go histories advance."""
        obs = np.asarray(observations, dtype=np.float32)
        single = obs.ndim == 1
        obs = obs[None] if single else obs
        if rollout is None:
            if getattr(self, "_rollout", None) is None or self._rollout.num_envs != obs.shape[0]:
                self._rollout = self.rollout(num_envs=obs.shape[0], seed=self.train_config.seed)
            rollout = self._rollout
        action = rollout.act(obs)
        return action[0] if single else action

    def reset(self) -> None:
        self._rollout = None

    # ------------------------------------------------------------------ checkpoints
    def _weights(self) -> dict[str, Tensor]:
        weights = self.state_dict()
        weights["obs_mean"] = self.obs_mean
        weights["obs_std"] = self.obs_std
        return weights

    def _state(self) -> dict[str, Any]:
        def opt(o: Any) -> Any:
            return None if o is None else o.state_dict()

        return {
            "step": self.step,
            "total_steps": self._total_steps,
            "return_targets": self.return_targets,
            "ref_scores": self.ref_scores,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "policy_optimizer": opt(self.policy_optimizer),
            "critic_optimizer": opt(self.critic_optimizer),
            "policy_scheduler": opt(self.policy_scheduler),
            "critic_scheduler": opt(self.critic_scheduler),
            "eval_history": self._eval_history,
            "env_spec": self.env_spec,
            "dataset_id": self.dataset_id,
        }

    def save(self, directory: str | Path) -> Path:
        """Save config (YAML), weights (safetensors) and the resume state, atomically."""
        from qtkit.checkpoint import save_checkpoint

        return save_checkpoint(directory, self.config, self._weights(), self._state())

    def load_weights(self, weights: dict[str, Tensor], state: dict[str, Any]) -> None:
        self.obs_mean = weights.pop("obs_mean")
        self.obs_std = weights.pop("obs_std")
        self.load_state_dict(weights)
        self.return_targets = state.get("return_targets")
        self.ref_scores = tuple(state["ref_scores"]) if state.get("ref_scores") else None
        self.step = int(state.get("step", 0))
        self._eval_history = list(state.get("eval_history") or [])
        self.env_spec = state.get("env_spec")
        self.dataset_id = state.get("dataset_id")

    def _restore(self, directory: str | Path, dataset: Any) -> None:
        from qtkit.checkpoint import read_checkpoint

        config, weights, state = read_checkpoint(directory)
        mine = {k: v for k, v in self.config.items() if k not in ("description",)}
        theirs = {k: v for k, v in config.items() if k not in ("description",)}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise CheckpointError(
                f"cannot resume {self.name!r} from {str(directory)!r}: the checkpoint was made by preset "
                f"{config.get('name')!r} with a different config (differs in: {', '.join(diff)}). Resume with "
                f"qtkit.load({str(directory)!r}).fit(...), or start a new run."
            )
        self.check_dataset(dataset)
        self.load_weights(weights, state)
        self.to(self.resolve_device())
        self._make_optimizers(int(state["total_steps"]))
        for name in ("policy_optimizer", "critic_optimizer", "policy_scheduler", "critic_scheduler"):
            target, saved = getattr(self, name), state.get(name)
            if target is not None and saved is not None:
                target.load_state_dict(saved)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

