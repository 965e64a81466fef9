"""``ar-greedy``: act with an autoregressive critic's decoding (greedy, ε-greedy or Boltzmann per dimension)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from qtkit.critics.base import AutoregressiveCritic, Critic
from qtkit.errors import ConfigError
from qtkit.params import NonNegativeFloat, UnitInterval
from qtkit.registry import register
from qtkit.samplers.base import RolloutContext, Sampler

if TYPE_CHECKING:
    from qtkit.policies.base import Policy


@register("sampler", "ar-greedy")
class ARGreedySampler(Sampler):
    """Decode the action dimension by dimension from an ``ar-q`` critic (no policy forward pass).

    ``temperature > 0``: sample each dimension's bin from ``softmax(Q / temperature)`` (then feed it back);
    0: argmax. ``epsilon``: with this probability a dimension's bin is uniform instead. Randomness comes
    only from the ``generator`` passed to :meth:`select`; with both at 0 it is deterministic and the
    generator is not touched.
    """

    needs_critic = True
    num_rows = 1

    def __init__(self, epsilon: UnitInterval = 0.0, temperature: NonNegativeFloat = 0.0) -> None:
        self.epsilon, self.temperature = float(epsilon), float(temperature)

    def _chooser(self, generator: torch.Generator) -> Callable[[Tensor, int], Tensor]:
        """The per-dimension choice ``choose(q [E, bins], dim) -> bins [E]`` given to ``critic.decode``."""

        def choose(q: Tensor, dim: int) -> Tensor:
            """``q [E, bins]`` -> bins ``[E]`` for one dimension."""
            if self.temperature > 0:
                probs = torch.softmax(q.float().cpu() / self.temperature, dim=-1)
                chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                chosen = q.argmax(dim=-1).cpu()
            if self.epsilon > 0:
                explore = torch.rand(q.shape[0], generator=generator) < self.epsilon
                uniform = torch.randint(0, q.shape[-1], (q.shape[0],), generator=generator)
                chosen = torch.where(explore, uniform, chosen)
            return chosen.to(q.device)

        return choose

    @torch.no_grad()
    def select(
        self, policy: Policy, critic: Critic | None, ctx: RolloutContext, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``(actions [E, act], zeros [E] long)`` from the last ``critic.state_window`` states of ``ctx``."""
        if not isinstance(critic, AutoregressiveCritic):
            raise ConfigError("sampler 'ar-greedy' decodes actions from an autoregressive critic ('ar-q'); "
                              f"this agent has {type(critic).__name__ if critic is not None else 'none'}.")
        w = int(critic.state_window)
        states, mask = ctx.critic_view()[:, -w:], ctx.mask[:, -w:]
        choose = None if self.temperature == 0 and self.epsilon == 0 else self._chooser(generator)
        bins, _ = critic.decode(states, mask, choose)
        actions = critic.undiscretize(bins)
        return actions, torch.zeros(ctx.num_envs, dtype=torch.long, device=actions.device)
