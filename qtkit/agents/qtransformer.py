"""The Q-Transformer agent: an autoregressive Q-function is both the learner and the policy.

ALGORITHMS.md §6. There is no separate policy network: the ``ar-argmax`` policy (or the
``ar-greedy`` sampler) decodes the critic's per-dimension argmax. What is the family's own: its
``train`` parameters, the critic's optimiser and the training step, the critic update alone, with
the preset's backup (``nstep-mc-max`` by default) giving the last dimension's target. Fitting,
evaluation, checkpoints and resuming are the agent base's and the shared loop's, as for the QT family
(a sibling: neither subclasses the other).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qtkit.agents.base import Agent, TrainConfig, make_lr_scheduler
from qtkit.agents.diagnostics import q_at_data, value_diagnostics
from qtkit.backups.base import Backup
from qtkit.critics.base import AutoregressiveCritic, Critic
from qtkit.data.batch import Batch
from qtkit.encoders import Encoder
from qtkit.errors import ConfigError
from qtkit.params import NonNegativeFloat, PositiveFloat, PositiveInt
from qtkit.policies.base import CriticPolicy, Policy
from qtkit.registry import register
from qtkit.samplers.base import Sampler


@dataclass
class QTransformerTrainConfig(TrainConfig):
    """Training parameters of the Q-Transformer agent: the shared ones (:class:`qtkit.agents.base.TrainConfig`)
    with the critic's defaults. ``lr``, ``weight_decay`` and ``grad_clip`` are the critic's; ``rtg_scale``
    only serves the rollout's return-to-go bookkeeping (the critic ignores it)."""

    batch_size: PositiveInt = 128
    context: PositiveInt = 8  # the n-step sums stay inside a window: use K >= n
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: PositiveFloat | None = 10.0
    rtg_scale: PositiveFloat = 1.0


@register("agent", "qtransformer")
class QTransformerAgent(Agent):
    """Q-Transformer: an ``ar-q`` critic trained by autoregressive TD + conservative regularisation."""

    TrainConfig = QTransformerTrainConfig
    critic: AutoregressiveCritic

    def __init__(self, config: dict[str, Any], policy: Policy, critic: Critic | None = None,
                 backup: Backup | None = None, sampler: Sampler | None = None, encoder: Encoder | None = None) -> None:
        if not isinstance(critic, AutoregressiveCritic):
            raise ConfigError(
                f"preset {config.get('name')!r}: agent 'qtransformer' needs an autoregressive critic with "
                f"greedy() (critic 'ar-q'), got {type(critic).__name__ if critic is not None else 'none'}."
            )
        super().__init__(config, policy, critic, backup, sampler, encoder)
        if isinstance(policy, CriticPolicy):
            policy.attach(critic)
        self._critic_loss: Any = critic.loss  # torch.compile'd when train.compile (compile_modules)

    def make_optimizers(self, total_steps: int) -> None:
        from timm.optim import create_optimizer_v2

        tc = self.train_config
        fused = {"fused": True} if tc.optimizer.lower() in ("adam", "adamw") else {}  # one kernel per step
        # the critic is the learner: its optimiser also trains the encoder (if it has weights)
        self.critic_optimizer = create_optimizer_v2(self.with_encoder(self.critic.net), opt=tc.optimizer, lr=tc.lr,
                                                    weight_decay=tc.weight_decay,
                                                    filter_bias_and_bn=not tc.decay_all_parameters, **fused)
        self.critic_scheduler = make_lr_scheduler(self.critic_optimizer, tc, total_steps, tc.lr)
        self.policy_optimizer = self.policy_scheduler = None
        self._total_steps = total_steps

    def compile_modules(self) -> None:
        """Route the critic's training loss through ``torch.compile`` (weights and checkpoints unchanged)."""
        self._critic_loss = torch.compile(self.critic.loss, **self.compile_options())

    def train_step(self, batch: Batch, diagnose: bool = False) -> dict[str, float]:
        """One gradient step: targets from the target network and the backup, then the critic update.

        ``diagnose``: also return Q at the data's actions against Monte-Carlo returns (:mod:`qtkit.agents.diagnostics`).
        """
        tc = self.train_config
        assert self.backup is not None
        states, next_states = self.encode_batch(batch)  # features [B, K, F] (flat: standardised observations)

        # 1. Last-dimension targets: the backup bootstrapped with max_b Q̄_1(s', b) (every step has s').
        with torch.no_grad(), self.autocast():
            next_values, next_valid = self.critic.bootstrap(states, next_states, None, batch.mask)
            targets, valid = self.backup(batch, next_values.float(), next_valid)  # [B, K] each

        # 2. Critic: per-dimension TD (+ Monte-Carlo lower bound) + conservative term, then polyak.
        with self.autocast():
            loss, metrics = self._critic_loss(states, batch.actions, targets, valid, batch=batch)
        self.step_optimizer(self.critic_optimizer, self.critic_scheduler, loss,
                            self.with_encoder(self.critic).parameters(), tc.grad_clip, "critic")
        self.step += 1
        self.critic.update_target(tc.tau)
        metrics["target_valid_frac"] = valid.float().mean()
        if diagnose:
            with torch.no_grad():
                metrics.update(value_diagnostics(q_at_data(self.critic, states, batch.actions), batch.returns,
                                                   batch.mask))
        return self.step_metrics(metrics, diagnose)
