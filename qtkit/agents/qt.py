"""The QT agent family: a sequence policy trained with L_DT + eta * L_Q against a critic.

Decision Transformer is this family with ``eta = 0`` and no critic (ALGORITHMS.md §2-§5). What is the
family's own: its ``train`` parameters (:class:`QTTrainConfig`), its optimisers (policy and critic), the
EMA copy of the policy and the training step, which reads top to bottom like a CORL file (critic update
with the preset's backup, policy update, then target/EMA updates). Fitting, evaluation, acting and
checkpoints are the agent base's (:class:`qtkit.agents.base.Agent`) and the shared loop's (:mod:`qtkit.training`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from torch import Tensor, nn

from qtkit.agents.base import Agent, TrainConfig, make_lr_scheduler
from qtkit.agents.diagnostics import gradient_balance, q_at_data, value_diagnostics
from qtkit.backups.base import Backup
from qtkit.critics.base import Critic, soft_update
from qtkit.data.batch import Batch
from qtkit.encoders import Encoder
from qtkit.errors import ConfigError
from qtkit.params import Interval, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from qtkit.policies.base import BCPolicy, Policy
from qtkit.registry import register
from qtkit.samplers.base import Sampler
from qtkit.training.distributed import mean_denominator, rank_mean


@dataclass
class QTTrainConfig(TrainConfig):
    """Training parameters of the QT family (the ``train`` section of a preset): the shared ones
    (:class:`qtkit.agents.base.TrainConfig`) plus the policy/critic split, eta and the EMA policy."""

    eta: NonNegativeFloat = 1.0  # weight of L_Q; 0 gives Decision Transformer
    critic_lr: PositiveFloat = 3.0e-4
    critic_weight_decay: NonNegativeFloat = 0.0
    critic_grad_clip: PositiveFloat | Literal["grad_clip"] | None = "grad_clip"  # "grad_clip": the policy's clip (reference)
    ema_decay: Annotated[float, Interval(ge=0, lt=1)] = 0.995  # EMA copy of the policy used for bootstrap actions
    ema_every: PositiveInt = 5
    ema_start: NonNegativeInt = 1000  # before this step the EMA copy tracks the policy exactly
    # "shared": the critic reads the policy's encoder features (detached: only the policy loss trains the encoder);
    # "separate": the critic has its own encoder (a copy of the policy's at the start), trained by the critic loss
    critic_encoder: Literal["shared", "separate"] = "shared"


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` holds; what the others hold (NaN included) never counts."""
    mask = mask.bool()
    # data-parallel training: divided by the global count / N, so the ranks' mean is the global batch's mean
    return torch.where(mask, x, 0.0).sum() / mean_denominator(mask.sum()).to(x.dtype)


@register("agent", "qt")
class QTAgent(Agent):
    """QT / Decision Transformer: GPT-style policy, optional twin critic, n-step backups."""

    TrainConfig = QTTrainConfig
    policy: BCPolicy
    train_config: QTTrainConfig

    def __init__(self, config: dict[str, Any], policy: Policy, critic: Critic | None = None,
                 backup: Backup | None = None, sampler: Sampler | None = None, encoder: Encoder | None = None) -> None:
        if not isinstance(policy, BCPolicy):
            raise ConfigError(
                f"preset {config.get('name')!r}: agent 'qt' trains its policy by behaviour cloning, but policy "
                f"{type(policy).__name__} has no bc_loss(). Policy 'ar-argmax' decodes an 'ar-q' critic: use it "
                "with agent: qtransformer (see preset 'qtransformer')."
            )
        super().__init__(config, policy, critic, backup, sampler, encoder)
        if self.train_config.critic_encoder == "separate":
            if critic is None or not any(True for _ in self.encoder.parameters()):
                what = "has no critic" if critic is None else f"has an encoder without weights ({type(self.encoder).__name__})"
                raise ConfigError(
                    f"preset {config.get('name')!r}: train.critic_encoder='separate' gives the critic its own copy of "
                    f"the encoder, but this agent {what}. Use critic_encoder='shared' (the default), or an image "
                    "encoder (encoder: conv / timm) and a critic."
                )
            # the critic's own encoder: the same architecture and initial weights, then its own training (critic loss)
            self.critic_encoder = copy.deepcopy(self.encoder)
        # a critic that bootstraps from the policy's actions gets them from an EMA copy of the policy
        self.ema_policy: BCPolicy | None = None
        if critic is not None and critic.needs_policy_actions:
            self.ema_policy = copy.deepcopy(policy).eval().requires_grad_(False)
        self._policy_forward: Any = policy  # torch.compile'd forward passes when train.compile (compile_modules)
        self._critic_forward: Any = critic

    def modules(self) -> dict[str, nn.Module]:
        out = super().modules()
        if self.critic_encoder is not None:
            out["critic_encoder"] = self.critic_encoder
        if self.ema_policy is not None:
            out["ema_policy"] = self.ema_policy
        return out

    # ------------------------------------------------------------------ optimisers
    def make_optimizers(self, total_steps: int) -> None:
        from timm.optim import create_optimizer_v2

        tc = self.train_config

        # torch's fused Adam/AdamW (CPU and CUDA): the same update in one kernel over all parameters
        # instead of a Python loop of small ops (reference policy, CPU: clip + step 46 ms -> 15 ms)
        fused = {"fused": True} if tc.optimizer.lower() in ("adam", "adamw") else {}
        groups = {"filter_bias_and_bn": not tc.decay_all_parameters}
        # the policy's optimiser also trains the encoder (if it has weights): the critic reads its features detached
        self.policy_optimizer = create_optimizer_v2(self.with_encoder(self.policy), opt=tc.optimizer,
                                                    lr=tc.lr, weight_decay=tc.weight_decay, **groups, **fused)
        self.policy_scheduler = make_lr_scheduler(self.policy_optimizer, tc, total_steps, tc.lr)
        if self.critic is not None:
            # with a separate critic encoder, the critic's optimiser trains it
            critic_net = self.critic.net if self.critic_encoder is None else nn.ModuleDict(
                {"module": self.critic.net, "encoder": self.critic_encoder})
            self.critic_optimizer = create_optimizer_v2(
                critic_net, opt=tc.optimizer, lr=tc.critic_lr, weight_decay=tc.critic_weight_decay, **groups,
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
        self._policy_forward = torch.compile(self.policy, **self.compile_options())
        self._critic_forward = torch.compile(self.critic, **self.compile_options()) if self.critic is not None else None

    # ------------------------------------------------------------------ training
    def train_step(self, batch: Batch, diagnose: bool = False) -> dict[str, float]:
        """One gradient step on a batch of windows: critic, then policy, then targets and EMA.

        ``diagnose``: also return the value diagnostics (:mod:`qtkit.agents.diagnostics`: Q at the data's
        actions against Monte-Carlo returns, L_Q's gradient against L_DT's); the update is the same.
        """
        tc = self.train_config
        states, next_states = self.encode_batch(batch)  # features [B, K, F] (flat: standardised observations)
        actions, rtg, timesteps, mask = batch.actions, batch.rtg, batch.timesteps, batch.mask
        metrics: dict[str, Tensor] = {}

        # 1. Critic: targets from the preset's backup, bootstrapped through the EMA policy (eval mode).
        if self.critic is not None:
            assert self.backup is not None
            if self.critic_encoder is None:  # shared: the policy's encoder features; the critic loss does not train it
                critic_states, critic_next_states = states.detach(), next_states
            else:  # separate: the critic's own encoder, trained by the critic loss below
                critic_states = self.encode(batch.observations, batch.proprio, encoder=self.critic_encoder)
                with torch.no_grad():
                    critic_next_states = self.encode(batch.next_observations, batch.next_proprio,
                                                     encoder=self.critic_encoder)
            with torch.no_grad(), self.autocast():
                if self.backup.needs_next_values:
                    bootstrap_actions = None
                    if self.ema_policy is not None:
                        # actions only: the GPT policy then skips its next-state outputs (same actions)
                        only_actions = {"predict_next": False} if self.ema_policy.supports_last_only else {}
                        bootstrap_actions = self.ema_policy(states, actions, rtg, timesteps, mask, **only_actions)[0].float()
                    next_values, next_valid = self.critic.bootstrap(critic_states, critic_next_states, bootstrap_actions,
                                                                    mask)
                else:  # e.g. Monte-Carlo targets: no bootstrap, no EMA forward pass
                    next_values, next_valid = torch.zeros_like(batch.rewards), mask
                targets, valid = self.backup(batch, next_values.float(), next_valid)  # [B, K] each
            with self.autocast():
                critic_loss, critic_metrics = self.critic.loss(critic_states, actions, targets, valid, batch=batch)
            critic_clip = tc.grad_clip if tc.critic_grad_clip == "grad_clip" else tc.critic_grad_clip
            critic_parameters = list(self.critic.parameters())
            if self.critic_encoder is not None:
                critic_parameters += list(self.critic_encoder.parameters())
            self.step_optimizer(self.critic_optimizer, self.critic_scheduler, critic_loss, critic_parameters,
                                critic_clip, "critic")
            critic_states = critic_states.detach()  # below, the critic only scores (L_Q, diagnostics)
            metrics.update(critic_metrics)
            metrics["target_valid_frac"] = valid.float().mean()
            if diagnose:
                with torch.no_grad():
                    metrics.update(value_diagnostics(q_at_data(self.critic, critic_states, actions), batch.returns,
                                                     mask))

        # 2. Policy: behaviour cloning (+ next-state prediction) + eta * normalised Q term.
        with self.autocast():
            predicted, predicted_next = self._policy_forward(states, actions, rtg, timesteps, mask)
            loss, policy_metrics = self.policy.bc_loss(predicted, predicted_next, actions, next_states, mask)
            if self.critic is not None and tc.eta > 0:
                # L_Q = -mean Q_i(s, â) / sg(mean |Q_j(s, â)|), members i, j drawn from the agent's generator
                trainable = [p for p in self.critic.parameters() if p.requires_grad]  # not the target copy
                for p in trainable:
                    p.requires_grad_(False)  # L_Q's gradient reaches the policy only
                q = self._critic_forward(critic_states, predicted)  # [E, B, K]
                for p in trainable:
                    p.requires_grad_(True)
                members = torch.randperm(q.shape[0], generator=self.generator)
                i, j = int(members[0]), int(members[-1])
                scale = rank_mean(_masked_mean(q[j].abs(), mask).detach())  # the global batch's mean |Q_j|
                q_loss = -_masked_mean(q[i], mask) / scale.clamp(min=1e-6)
                q_term = tc.eta * q_loss
                if diagnose:
                    metrics.update(gradient_balance(loss, q_term, self.policy.parameters()))
                loss = loss + q_term
                metrics["q_loss"] = q_loss.detach()
        self.step_optimizer(self.policy_optimizer, self.policy_scheduler, loss,
                            self.with_encoder(self.policy).parameters(), tc.grad_clip, "policy")
        metrics.update(policy_metrics)
        metrics["policy_loss"] = loss.detach()

        # 3. Targets: soft critic target update every step; EMA policy every ema_every steps.
        self.step += 1
        if self.critic is not None:
            self.critic.update_target(tc.tau)
        if self.ema_policy is not None and self.step % tc.ema_every == 0:
            self._update_ema()
        return self.step_metrics(metrics, diagnose)

    @torch.no_grad()
    def _update_ema(self) -> None:
        assert self.ema_policy is not None
        tc = self.train_config
        decay = tc.ema_decay if self.step >= tc.ema_start else 0.0
        soft_update(self.ema_policy, self.policy, 1.0 - decay)
