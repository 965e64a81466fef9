"""What samplers share: the rolling evaluation context and candidate helpers (ALGORITHMS.md §5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from qtkit.critics.base import Critic
    from qtkit.policies.base import Policy


@dataclass
class RolloutContext:
    """The last K steps of E parallel episodes, left-padded so the current step sits at index K-1.

    states [E, K, obs] standardised; actions [E, K, act] executed (the current step's is zero);
    timesteps [E, K] long; mask [E, K] bool; rtg [E, N, K]: each of the sampler's N candidate rows
    keeps its own (scaled) return-to-go history. critic_states [E, K, F'] (None: the critic reads ``states``):
    the features of the critic's own encoder (QT's ``critic_encoder: separate``); read them with
    :meth:`critic_view`.
    """

    states: Tensor
    actions: Tensor
    timesteps: Tensor
    mask: Tensor
    rtg: Tensor
    critic_states: Tensor | None = None

    def critic_view(self) -> Tensor:
        """The state features ``[E, K, F]`` the critic scores: ``critic_states`` when the critic has its own
        encoder, else ``states``."""
        return self.states if self.critic_states is None else self.critic_states

    @property
    def num_envs(self) -> int:
        return int(self.states.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.rtg.shape[1])


class Sampler:
    """Base of samplers: turns a rollout context into one action per environment.

    Subclasses set ``needs_critic``, implement :meth:`select` and, for several rows, :meth:`initial_rtg`.
    ``targets`` are return targets in raw reward units; when a preset leaves them empty (None), the agent
    takes ``target_fractions`` of the dataset's best episode return instead.
    """

    needs_critic: bool = False
    num_rows: int = 1
    #: Return targets in raw reward units, or None: ``target_fractions`` of the dataset's best return.
    targets: list[float] | None = None
    target_fractions: Sequence[float] = (1.0,)

    def initial_rtg(self, num_envs: int, targets: list[float], rtg_scale: float, generator: torch.Generator) -> Tensor:
        """Scaled initial return-to-go of every candidate row: [E, N]. Default: one row at the first target."""
        return torch.full((num_envs, 1), float(targets[0]) / rtg_scale)

    def select(
        self, policy: Policy, critic: Critic | None, ctx: RolloutContext, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return ``(actions [E, act], chosen row [E])`` for the current step."""
        raise NotImplementedError


def candidate_actions(policy: Policy, ctx: RolloutContext) -> Tensor:
    """Run the policy once on the E * N candidate rows; return their current actions [E, N, act].

    States, actions and timesteps are shared by the rows of an environment; only the return-to-go
    differs. Rows of one environment with identical return-to-go histories (e.g. ``noise_std`` 0)
    are computed once, and a policy with ``supports_last_only`` computes the last position only.
    """
    E, N = ctx.num_envs, ctx.num_rows
    rtg = ctx.rtg.reshape(E * N, -1)
    env = torch.arange(E, device=rtg.device).repeat_interleave(N)  # the environment of every row
    inverse = None
    if N > 1:
        keys = torch.cat((env.unsqueeze(-1).to(rtg.dtype), rtg), dim=-1)
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
        if unique.shape[0] < E * N:
            env, rtg = unique[:, 0].long(), unique[:, 1:]
        else:
            inverse = None
    states, actions = ctx.states[env], ctx.actions[env]
    timesteps, mask = ctx.timesteps[env], ctx.mask[env]
    if policy.supports_last_only:
        predicted, _ = policy(states, actions, rtg, timesteps, mask, last_only=True)
    else:
        predicted, _ = policy(states, actions, rtg, timesteps, mask)
    predicted = predicted[:, -1]
    if inverse is not None:
        predicted = predicted[inverse]
    return predicted.reshape(E, N, -1)


def choose(scores: Tensor, selection: str, temperature: float, generator: torch.Generator) -> Tensor:
    """Pick one row per environment from scores [E, N]: ``argmax`` or ``softmax`` (sampled)."""
    if selection == "argmax" or temperature <= 0:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores.float() / temperature, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(scores.device)
