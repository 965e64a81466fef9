"""Twin (ensemble) MLP critic Q(s, a) with a soft-updated target copy (ALGORITHMS.md §3)."""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from qtkit.critics.base import Critic, soft_update
from qtkit.errors import ConfigError
from qtkit.params import OneOf, PositiveInt
from qtkit.registry import register
from qtkit.training.distributed import mean_denominator

ACTIVATIONS: dict[str, type[nn.Module]] = {"mish": nn.Mish, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched matmul: [E, ..., in] -> [E, ..., out]."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        # x: [E, N, in] -> [E, N, out]
        return torch.baddbmm(self.bias, x, self.weight)


@register("critic", "twin-mlp")
class TwinMLPCritic(Critic):
    """An ensemble of MLP Q-functions (twin by default); targets use the min over target members."""

    needs_policy_actions = True

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        ensemble: PositiveInt = 2,
        hidden: PositiveInt | list[PositiveInt] = [256, 256, 256],  # noqa: B006  (read-only default, shown in configs)
        depth: PositiveInt = 3,
        activation: Annotated[str, OneOf(tuple(ACTIVATIONS))] = "mish",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        sizes = [hidden] * depth if isinstance(hidden, int) else list(hidden)
        if not sizes:
            raise ConfigError(f"critic 'twin-mlp': hidden needs at least one layer size, got {hidden!r}.")
        self.obs_dim, self.act_dim, self.ensemble = obs_dim, act_dim, ensemble
        layers: list[nn.Module] = []
        width = obs_dim + act_dim
        for size in sizes:
            layers.append(EnsembleLinear(ensemble, width, size))
            if layer_norm:
                layers.append(nn.LayerNorm(size))
            layers.append(ACTIVATIONS[activation]())
            width = size
        layers.append(EnsembleLinear(ensemble, width, 1))
        self.net = nn.Sequential(*layers)
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)

    def _run(self, net: nn.Module, states: Tensor, actions: Tensor) -> Tensor:
        lead = states.shape[:-1]
        x = torch.cat((states, actions.to(states.dtype)), dim=-1).reshape(1, -1, self.obs_dim + self.act_dim)
        q = net(x.expand(self.ensemble, -1, -1))  # [E, N, 1]
        return q.reshape(self.ensemble, *lead)

    def forward(self, states: Tensor, actions: Tensor) -> Tensor:
        """Q-values of every member: states [..., obs] (standardised), actions [..., act] -> [E, ...]."""
        return self._run(self.net, states, actions)

    @torch.no_grad()
    def target_values(self, states: Tensor, actions: Tensor) -> Tensor:
        """Bootstrap values min_i Q_target_i(s, a): [..., obs], [..., act] -> [...]."""
        return self._run(self.target_net, states, actions).amin(0)

    def score(self, states: Tensor, actions: Tensor) -> Tensor:
        """Candidate scores for samplers: min over target members, [..., obs], [..., act] -> [...]."""
        return self.target_values(states, actions)

    @torch.no_grad()
    def bootstrap(
        self, states: Tensor, next_states: Tensor, policy_actions: Tensor | None, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Bootstrap values of a window from the policy's actions at the next position.

        states [B, K, obs], policy_actions [B, K, act] (from the EMA policy on the same window),
        mask [B, K]. Returns ``next_values [B, K]`` with ``next_values[:, t] = min_i Q'(s_{t+1}, ã_{t+1})``
        and ``next_valid [B, K]`` (False where t+1 is outside the window).
        """
        if policy_actions is None:
            raise ValueError("twin-mlp bootstrap needs the policy's actions for the window.")
        values = self.target_values(states[:, 1:], policy_actions[:, 1:])  # [B, K-1]
        next_values = torch.nn.functional.pad(values, (0, 1))
        next_valid = torch.nn.functional.pad(mask[:, 1:], (0, 1), value=False)
        return next_values, next_valid

    def loss(
        self, states: Tensor, actions: Tensor, targets: Tensor, valid: Tensor, batch: Any = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """TD loss: sum over members of the mean squared error at valid targets (``batch`` is not read)."""
        q = self(states, actions)  # [E, B, K]
        valid = valid.bool()
        count = mean_denominator(valid.sum()).to(q.dtype)  # data-parallel: the global count / N
        # torch.where, not a multiply by the mask: an invalid target may hold anything, NaN included
        errors = torch.where(valid, (q - targets.unsqueeze(0)) ** 2, 0.0)  # [E, B, K]
        per_member = errors.sum(dim=(1, 2)) / count
        return per_member.sum(), {
            "critic_loss": per_member.sum().detach(),
            "q_mean": torch.where(valid, q.detach(), 0.0).sum() / (count * self.ensemble),
        }

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """Polyak update: target <- (1 - tau) * target + tau * online."""
        soft_update(self.target_net, self.net, tau)
