"""``ar-argmax``: the Q-Transformer's policy, the autoregressive argmax of an attached ``ar-q`` critic."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from qtkit.critics.base import AutoregressiveCritic
from qtkit.errors import ConfigError
from qtkit.policies.base import CriticPolicy
from qtkit.registry import register


@register("policy", "ar-argmax")
class ARArgmaxPolicy(CriticPolicy):
    """The greedy action of an autoregressive critic (``undiscretize(critic.greedy(s))``); no parameters.

    The agent attaches its critic once after building (:meth:`attach`). The critic is stored outside
    the module tree (not a submodule), so the policy's ``state_dict`` holds only the action bounds and
    the weights are saved once, under the critic. ``forward`` mirrors :class:`qtkit.policies.GPTPolicy`
    so generic code paths (candidate samplers, evaluation) keep working; it is deterministic.
    """

    def __init__(self, obs_dim: int, act_dim: int, action_low: Sequence[float], action_high: Sequence[float]) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.register_buffer("action_low", torch.as_tensor(list(action_low), dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(list(action_high), dtype=torch.float32))
        self.__dict__["_critic"] = None  # not an nn.Module attribute: no duplicated weights

    def attach(self, critic: AutoregressiveCritic) -> ARArgmaxPolicy:  # type: ignore[override]
        """Use ``critic`` (an :class:`~qtkit.critics.base.AutoregressiveCritic`: ``histories``, ``greedy``,
        ``undiscretize``) for every action."""
        if not isinstance(critic, AutoregressiveCritic):
            raise ConfigError(
                "policy 'ar-argmax' needs an autoregressive critic with histories(), greedy() and undiscretize() "
                f"(critic 'ar-q'), got {type(critic).__name__}."
            )
        self.__dict__["_critic"] = critic
        return self

    @property
    def critic(self) -> AutoregressiveCritic:
        """The attached critic (raises if none)."""
        critic = self.__dict__.get("_critic")
        if critic is None:
            raise ConfigError(
                "policy 'ar-argmax' has no critic: the agent must call policy.attach(critic) after building "
                "(use it with critic 'ar-q')."
            )
        return critic

    @torch.no_grad()
    def act(self, states: Tensor, mask: Tensor | None = None) -> Tensor:
        """Greedy actions for ``states [B, obs]`` or histories ``[B, w, obs]`` (``mask [B, w]``) -> ``[B, act]``."""
        bins, _ = self.critic.greedy(states, mask)
        return self.critic.undiscretize(bins)

    @torch.no_grad()
    def forward(
        self,
        states: Tensor,
        actions: Tensor | None = None,
        rtg: Tensor | None = None,
        timesteps: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, None]:
        """Greedy action at every position of a window (GPTPolicy's signature; ``actions``, ``rtg`` and
        ``timesteps`` are ignored): ``states [B, K, obs]``, ``mask [B, K]`` -> ``(actions [B, K, act], None)``.

        Position t decodes from its own history (the critic's ``state_window`` states up to t); padded
        positions (``mask`` False) get the centre of the action box.
        """
        critic = self.critic
        hist, hist_mask = critic.histories(states, mask)  # [B, K, w, obs], [B, K, w] | None
        valid = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device) if mask is None else mask.bool()
        low, high = self.action_low.to(states.device), self.action_high.to(states.device)
        out = ((low + high) / 2).expand(*states.shape[:2], self.act_dim).clone()
        if valid.any():
            rows = hist[valid]
            bins, _ = critic.greedy(rows, None if hist_mask is None else hist_mask[valid])
            out[valid] = critic.undiscretize(bins).to(out.dtype)
        return out, None
