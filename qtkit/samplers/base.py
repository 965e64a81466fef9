"""What samplers share: the rolling evaluation context and candidate helpers (ALGORITHMS.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import repeat
from torch import Tensor


@dataclass
class RolloutContext:
    """The last K steps of E parallel episodes, left-padded so the current step sits at index K-1.

    states [E, K, obs] standardised; actions [E, K, act] executed (the current step's is zero);
    timesteps [E, K] long; mask [E, K] bool; rtg [E, N, K]: each of the sampler's N candidate rows
    keeps its own (scaled) return-to-go history.
    """

    states: Tensor
    actions: Tensor
    timesteps: Tensor
    mask: Tensor
    rtg: Tensor

    @property
    def num_envs(self) -> int:
        return int(self.states.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.rtg.shape[1])


class Sampler:
    """Base of samplers: turns a rollout context into one action per environment.

    Subclasses set ``needs_critic``, implement :meth:`select` and, for several rows, :meth:`initial_rtg`.
    ``targets`` are return targets in raw reward units; the agent fills them from the dataset when
    a preset leaves them empty.
    """

    needs_critic: bool = False
    num_rows: int = 1

    def initial_rtg(self, num_envs: int, targets: list[float], rtg_scale: float, generator: torch.Generator) -> Tensor:
        """Scaled initial return-to-go of every candidate row: [E, N]. Default: one row at the first target."""
        return torch.full((num_envs, 1), float(targets[0]) / rtg_scale)

    def select(
        self, policy: torch.nn.Module, critic: torch.nn.Module | None, ctx: RolloutContext, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return ``(actions [E, act], chosen row [E])`` for the current step."""
        raise NotImplementedError


def candidate_actions(policy: torch.nn.Module, ctx: RolloutContext) -> Tensor:
    """Run the policy once on all E * N candidate rows; return their current actions [E, N, act].

    States, actions and timesteps are shared by the rows of an environment (expanded, not copied);
    only the return-to-go differs.
    """
    E, N = ctx.num_envs, ctx.num_rows
    states = repeat(ctx.states, "e k d -> (e n) k d", n=N)
    actions = repeat(ctx.actions, "e k d -> (e n) k d", n=N)
    timesteps = repeat(ctx.timesteps, "e k -> (e n) k", n=N)
    mask = repeat(ctx.mask, "e k -> (e n) k", n=N)
    rtg = ctx.rtg.reshape(E * N, -1)
    predicted, _ = policy(states, actions, rtg, timesteps, mask)
    return predicted[:, -1].reshape(E, N, -1)


def choose(scores: Tensor, selection: str, temperature: float, generator: torch.Generator) -> Tensor:
    """Pick one row per environment from scores [E, N]: ``argmax`` or ``softmax`` (sampled)."""
    if selection == "argmax" or temperature <= 0:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores.float() / temperature, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(scores.device)
