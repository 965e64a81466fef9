"""The Decision-Transformer / QT policy (ALGORITHMS.md §2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from qtkit.backbones.base import hidden_at
from qtkit.errors import ConfigError
from qtkit.params import DropoutRate, NonNegativeFloat, PositiveInt
from qtkit.policies.base import BCPolicy
from qtkit.registry import register
from qtkit.training.distributed import mean_denominator


def check_bounded(action_low: Sequence[float], action_high: Sequence[float], who: str) -> tuple[Tensor, Tensor]:
    """Action bounds as tensors; unbounded (infinite) bounds raise a ConfigError naming ``who``."""
    low = torch.as_tensor(list(action_low), dtype=torch.float32)
    high = torch.as_tensor(list(action_high), dtype=torch.float32)
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ConfigError(
            f"{who} needs a bounded action space (it maps actions into [action_low, action_high]), got "
            f"action_low={low.tolist()}, action_high={high.tolist()}. Clip the env's actions "
            "(gymnasium.wrappers.ClipAction) or pass finite action_low/action_high to qtkit.build."
        )
    return low, high


@register("policy", "gpt")
class GPTPolicy(BCPolicy):
    """DT tokens (R̂_t, s_t, a_t) + timestep embedding -> causal backbone -> tanh action from s_t."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        backbone: nn.Module,
        max_timestep: PositiveInt = 1000,
        predict_next_state: bool = True,
        next_state_weight: NonNegativeFloat = 1.0,
        embed_dropout: DropoutRate = 0.1,
    ) -> None:
        super().__init__()
        low, high = check_bounded(action_low, action_high, "policy 'gpt'")
        width = int(backbone.width)
        self.obs_dim, self.act_dim, self.max_timestep = obs_dim, act_dim, max_timestep
        self.predict_next_state = predict_next_state
        self.next_state_weight = next_state_weight
        self.backbone = backbone
        self.embed_timestep = nn.Embedding(max_timestep, width)
        # GPT-2's init for position embeddings (as d3rlpy's DT). nn.Embedding's default N(0, 1) gives every token a
        # random vector ~sqrt(width) long that swamps the state/return embeddings until training shrinks it:
        # measured at 400 steps on pointmaze-umaze-sparse (dt-gpt, 2 seeds), normalised 11.1 / 10.9 -> 21.8 / 28.5.
        nn.init.normal_(self.embed_timestep.weight, std=0.02)
        self.embed_return = nn.Linear(1, width)
        self.embed_state = nn.Linear(obs_dim, width)
        self.embed_action = nn.Linear(act_dim, width)
        self.embed_ln = nn.LayerNorm(width)
        self.embed_drop = nn.Dropout(embed_dropout)
        self.action_head = nn.Linear(width, act_dim)
        self.next_state_head = nn.Linear(width, obs_dim) if predict_next_state else None
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)

    #: ``forward`` takes ``predict_next`` and ``last_only`` (see :attr:`qtkit.policies.base.Policy.supports_last_only`).
    supports_last_only = True

    def forward(
        self,
        states: Tensor,
        actions: Tensor,
        rtg: Tensor,
        timesteps: Tensor,
        mask: Tensor | None = None,
        *,
        predict_next: bool = True,
        last_only: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Predict actions for every position of a window.

        states [B, K, obs] (standardised), actions [B, K, act] (the dataset's; the action at a
        position is never seen by that position's prediction), rtg [B, K] (scaled),
        timesteps [B, K] (long, clamped to max_timestep - 1), mask [B, K] bool or None.
        Returns ``(actions [B, K, act] within the bounds, next-state prediction [B, K, obs] or None)``.

        ``predict_next=False`` skips the next-state head (returns None for it) and ``last_only=True``
        returns the last position's action only (``[B, 1, act]``, no next state): with a causal
        backbone the tokens that feed no requested output are not computed (the last layer runs at
        the read tokens only, and the final action token is dropped when no next state is asked for).
        The requested outputs equal those of the full pass.
        """
        t = self.embed_timestep(timesteps.clamp(0, self.max_timestep - 1))
        tokens = torch.stack(
            (
                self.embed_return(rtg.unsqueeze(-1).to(states.dtype)) + t,
                self.embed_state(states) + t,
                self.embed_action(actions) + t,
            ),
            dim=2,
        )  # [B, K, 3, W]
        b, k = tokens.shape[:2]
        tokens = rearrange(tokens, "b k three w -> b (k three) w")
        token_mask = None if mask is None else rearrange(torch.stack((mask,) * 3, dim=2), "b k three -> b (k three)")
        with_next = self.next_state_head is not None and predict_next and not last_only
        causal = bool(getattr(self.backbone, "causal", True))
        if causal and not with_next:  # the last action token only feeds its own next-state prediction
            tokens = tokens[:, :-1]
            token_mask = None if token_mask is None else token_mask[:, :-1]
        tokens = self.embed_drop(self.embed_ln(tokens))
        # the action head reads the state tokens (3i + 1), the next-state head the action tokens (3i + 2)
        if last_only:
            positions = torch.tensor([3 * k - 2], device=tokens.device)
        elif with_next:
            positions = torch.arange(3 * k, device=tokens.device).view(k, 3)[:, 1:].reshape(-1)
        else:
            positions = torch.arange(1, 3 * k, 3, device=tokens.device)
        hidden = hidden_at(self.backbone, tokens, token_mask, positions)  # [B, k, W] or [B, 2k, W] or [B, 1, W]
        if with_next:
            hidden = hidden.view(b, k, 2, -1)
            state_hidden, action_hidden = hidden[:, :, 0], hidden[:, :, 1]
        else:
            state_hidden, action_hidden = hidden, None
        squashed = torch.tanh(self.action_head(state_hidden))
        low, high = self.action_low.to(squashed.dtype), self.action_high.to(squashed.dtype)
        action = low + (squashed + 1.0) * 0.5 * (high - low)
        next_state = None
        if action_hidden is not None and self.next_state_head is not None:
            next_state = self.next_state_head(action_hidden)
        return action, next_state

    def bc_loss(
        self,
        predicted_actions: Tensor,
        predicted_next_states: Tensor | None,
        actions: Tensor,
        next_states: Tensor,
        mask: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """L_DT as the reference's ``F.mse_loss``: the MEAN over valid positions AND dimensions.

        predicted_actions, actions [B, K, act]; predicted_next_states, next_states [B, K, obs] (standardised);
        mask [B, K] (valid positions, contiguous per row). The action term averages (â - a)² over valid
        positions and action dimensions, so ``eta`` does not depend on the action size. The next-state term
        (weight ``next_state_weight``) averages over observation dimensions and only over positions t whose
        next state is inside the window (t and t + 1 valid): the last position of a window has none, as
        in the reference (``states[:, 1:]`` against ``state_preds[:, :-1]``).
        """
        valid = mask.bool()
        # data-parallel training: the global batch's count / N, so the ranks' mean is the global mean
        count = mean_denominator(valid.sum()).to(predicted_actions.dtype)
        errors = ((predicted_actions - actions) ** 2).mean(-1)  # [B, K]
        action_loss = torch.where(valid, errors, 0.0).sum() / count  # padding (even NaN) never counts
        metrics = {"bc_loss": action_loss.detach()}
        loss = action_loss
        if predicted_next_states is not None and self.next_state_weight > 0:
            has_next = valid[:, :-1] & valid[:, 1:]  # [B, K-1]
            state_errors = ((predicted_next_states[:, :-1] - next_states[:, :-1]) ** 2).mean(-1)  # [B, K-1]
            state_loss = torch.where(has_next, state_errors, 0.0).sum() / mean_denominator(has_next.sum()).to(count)
            loss = loss + self.next_state_weight * state_loss
            metrics["next_state_loss"] = state_loss.detach()
        return loss, metrics
