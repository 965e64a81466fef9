"""The registered samplers: rtg-grid (QT), single-rtg (DT), gaussian (perturb and score)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from qtkit.errors import ConfigError
from qtkit.params import FiniteFloat, NonNegativeFloat, PositiveInt
from qtkit.registry import register
from qtkit.samplers.base import RolloutContext, Sampler, candidate_actions, choose

if TYPE_CHECKING:
    from qtkit.critics.base import Critic
    from qtkit.policies.base import Policy


@register("sampler", "rtg-grid")
class RTGGridSampler(Sampler):
    """QT inference: N candidate rows over a list of return targets, scored by the critic."""

    needs_critic = True

    def __init__(
        self,
        candidates: PositiveInt = 50,
        targets: list[FiniteFloat] | None = None,
        target_fractions: list[FiniteFloat] = [1.0, 0.75, 0.5],  # noqa: B006
        noise_std: NonNegativeFloat = 0.1,
        q_rtg_row: bool = False,
        selection: Literal["argmax", "softmax"] = "softmax",
        temperature: NonNegativeFloat = 1.0,
        rtg_scale: float = 1.0,
    ) -> None:
        self.num_rows = candidates
        self.targets = targets
        self.target_fractions = target_fractions
        self.noise_std = noise_std
        self.q_rtg_row = q_rtg_row
        self.selection = selection
        self.temperature = temperature
        self.rtg_scale = rtg_scale

    def initial_rtg(self, num_envs: int, targets: list[float], rtg_scale: float, generator: torch.Generator) -> Tensor:
        """Targets repeated to N rows; rows past the first target set get N(0, noise_std²) on their RTG."""
        base = torch.tensor(targets, dtype=torch.float32) / rtg_scale
        rows = base.repeat((self.num_rows + len(targets) - 1) // len(targets))[: self.num_rows]
        noise = torch.randn(num_envs, self.num_rows, generator=generator) * self.noise_std
        noise[:, : len(targets)] = 0.0
        return rows.unsqueeze(0) + noise

    @torch.no_grad()
    def select(
        self, policy: Policy, critic: Critic | None, ctx: RolloutContext, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        actions = candidate_actions(policy, ctx)  # [E, N, act]
        if critic is None:
            raise ConfigError("sampler 'rtg-grid' scores candidates with a critic; this agent has none.")
        state = ctx.critic_view()[:, -1:].expand(-1, ctx.num_rows, -1)
        scores = critic.score(state, actions)  # [E, N]
        row = choose(scores, self.selection, self.temperature, generator)
        if self.q_rtg_row:
            # the last row follows the critic: its current RTG becomes the best candidate's Q, converted
            # from raw reward units into the policy's scaled RTG units (the reference mixes the two).
            ctx.rtg[:, -1, -1] = scores.amax(dim=-1) / self.rtg_scale
        return actions[torch.arange(ctx.num_envs), row], row


@register("sampler", "single-rtg")
class SingleRTGSampler(Sampler):
    """Plain Decision Transformer: one return target, the policy's action, no critic."""

    def __init__(self, target: FiniteFloat | None = None, target_fraction: FiniteFloat = 1.0) -> None:
        self.target = target
        self.target_fraction = target_fraction
        self.targets = None if target is None else [target]
        self.target_fractions = [target_fraction]

    @torch.no_grad()
    def select(
        self, policy: Policy, critic: Critic | None, ctx: RolloutContext, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        actions = candidate_actions(policy, ctx)[:, 0]
        return actions, torch.zeros(ctx.num_envs, dtype=torch.long, device=actions.device)


@register("sampler", "gaussian")
class GaussianSampler(Sampler):
    """The policy's action plus Gaussian perturbations (clipped to the bounds), picked by the critic."""

    needs_critic = True

    def __init__(
        self,
        candidates: PositiveInt = 50,
        std: NonNegativeFloat = 0.1,
        target: FiniteFloat | None = None,
        target_fraction: FiniteFloat = 1.0,
        selection: Literal["argmax", "softmax"] = "argmax",
        temperature: NonNegativeFloat = 1.0,
    ) -> None:
        self.candidates, self.std = candidates, std
        self.targets = None if target is None else [target]
        self.target_fractions = [target_fraction]
        self.selection, self.temperature = selection, temperature

    @torch.no_grad()
    def select(
        self, policy: Policy, critic: Critic | None, ctx: RolloutContext, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        if critic is None:
            raise ConfigError("sampler 'gaussian' scores candidates with a critic; this agent has none.")
        mean = candidate_actions(policy, ctx)[:, 0]  # [E, act]
        noise = torch.randn(mean.shape[0], self.candidates, mean.shape[-1], generator=generator) * self.std
        noise[:, 0] = 0.0  # the unperturbed action is always a candidate
        low, high = policy.action_low, policy.action_high
        actions = torch.maximum(torch.minimum(mean.unsqueeze(1) + noise.to(mean), high), low)
        state = ctx.critic_view()[:, -1:].expand(-1, self.candidates, -1)
        row = choose(critic.score(state, actions), self.selection, self.temperature, generator)
        return actions[torch.arange(mean.shape[0]), row], row
