"""Bellman targets as pure, vectorised functions (ALGORITHMS.md §3, §6).

Every tensor is a ``[B, T]`` window: B rows, each T consecutive steps of one episode.
``mask[b, t]`` is True at valid positions; valid positions are contiguous (padding may sit on
either side). Values at invalid positions (NaN and inf included) never reach a valid output,
and invalid outputs are 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_window(name_to_tensor: dict[str, Tensor], mask: Tensor, gamma: float) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor, got {got}; use mask.bool() or mask > 0.")
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}.")
    for name, tensor in name_to_tensor.items():
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}.")
        if tensor.shape != mask.shape:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in name_to_tensor.items())
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but mask has {tuple(mask.shape)}; all "
                f"inputs must be [B, T] (got {shapes}, mask {tuple(mask.shape)})."
            )
    g = float(gamma)
    if not 0.0 <= g <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}.")


def _as_bool(terminals: Tensor) -> Tensor:
    return terminals if terminals.dtype == torch.bool else terminals != 0


def _horizon_end(terminals: Tensor, mask: Tensor, n: int | None) -> Tensor:
    """``e[b, t]``: the last position summed into the target of ``t`` (only meaningful where valid).

    e is the smallest of: t + n - 1, the last valid position of the row, and the first
    terminal at or after t.
    """
    B, T = mask.shape
    idx = torch.arange(T, device=mask.device).expand(B, T)
    big = torch.full_like(idx, T - 1)
    last_valid = torch.where(mask, idx, torch.full_like(idx, -1)).amax(dim=1, keepdim=True)
    term_idx = torch.where(terminals & mask, idx, big)
    # first terminal at or after t: reverse cumulative minimum of terminal indices
    next_term = term_idx.flip(1).cummin(dim=1).values.flip(1)
    end = torch.minimum(last_valid.expand(B, T), next_term)
    if n is not None:
        end = torch.minimum(end, idx + (n - 1))
    return end


def n_step_targets(
    rewards: Tensor,
    next_values: Tensor,
    terminals: Tensor,
    mask: Tensor,
    gamma: float,
    n: int | None = None,
) -> Tensor:
    """n-step Bellman targets ``y[B, T]``.

    ``next_values[b, t]`` is the bootstrap value of the state reached after step t. For a valid
    t, with e the last position such that t..e are all valid, ``e - t + 1 <= n`` (no limit when
    ``n is None``), stopping at the first terminal at or after t::

        y_t = sum_{k=t..e} gamma^(k-t) r_k + gamma^(e-t+1) * (1 - terminals[e]) * next_values[e]

    Invalid positions are 0.
    """
    _check_window({"rewards": rewards, "next_values": next_values, "terminals": terminals}, mask, gamma)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be an int >= 1 or None, got {n!r}.")
    B, T = mask.shape
    if T == 0:
        return torch.zeros_like(rewards)
    dtype = rewards.dtype
    term = _as_bool(terminals) & mask
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    r = torch.where(mask, rewards, zero)
    v = torch.where(mask, next_values.to(dtype), zero)

    end = _horizon_end(term, mask, n)  # [B, T]
    idx = torch.arange(T, device=mask.device)
    length = (end - idx + 1).clamp(min=1)  # steps summed, [B, T]
    horizon = T if n is None else min(n, T)

    # windows[b, t, h] = r[b, t + h] (zero past the end of the row)
    padded = torch.nn.functional.pad(r, (0, horizon - 1))
    windows = padded.unfold(1, horizon, 1)  # [B, T, horizon]
    h = torch.arange(horizon, device=mask.device)
    discounts = torch.pow(torch.as_tensor(float(gamma), dtype=dtype, device=rewards.device), h.to(dtype))
    inside = h.view(1, 1, horizon) < length.unsqueeze(-1)
    reward_sum = (torch.where(inside, windows, zero) * discounts).sum(-1)

    end_c = end.clamp(0, T - 1)
    boot_value = v.gather(1, end_c)
    boot_alive = ~term.gather(1, end_c)
    boot_discount = torch.pow(torch.as_tensor(float(gamma), dtype=dtype, device=rewards.device), length.to(dtype))
    bootstrap = torch.where(boot_alive, boot_discount * boot_value, zero)
    return torch.where(mask, reward_sum + bootstrap, zero)


def discounted_returns(rewards: Tensor, terminals: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Discounted Monte-Carlo returns ``G[B, T]``: :func:`n_step_targets` with no bootstrap.

    ``G_t = r_t + gamma * (1 - terminals_t) * G_{t+1}`` over the valid run; invalid positions are 0.
    Computed with a backward recurrence (O(T) steps), so it suits whole episodes.
    """
    _check_window({"rewards": rewards, "terminals": terminals}, mask, gamma)
    B, T = mask.shape
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    r = torch.where(mask, rewards, zero)
    alive = (~(_as_bool(terminals) & mask)).to(rewards.dtype)
    valid = mask.to(rewards.dtype)
    out = torch.zeros_like(r)
    running = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    g = float(gamma)
    for t in range(T - 1, -1, -1):
        # an invalid position resets the running return (nothing crosses padding)
        running = (r[:, t] + g * alive[:, t] * running) * valid[:, t]
        out[:, t] = running
    return out


def mc_lower_bound(targets: Tensor, returns: Tensor) -> Tensor:
    """Q-Transformer's Monte-Carlo lower bound: ``max(targets, returns)`` elementwise."""
    if targets.shape != returns.shape:
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} but returns has {tuple(returns.shape)}; they must match."
        )
    return torch.maximum(targets, returns.to(targets.dtype))


def autoregressive_targets(next_dim_q: Tensor, last_dim_target: Tensor) -> Tensor:
    """Per-dimension targets ``y[..., D]`` of an autoregressive Q-function (ALGORITHMS.md §6).

    ``next_dim_q[..., D, bins]``: the target network's Q-values of every dimension, teacher-forced
    on the dataset prefix. ``y[..., d] = max_b next_dim_q[..., d+1, b]`` for ``d < D-1`` and
    ``y[..., D-1] = last_dim_target[...]`` (no reward, no discount between dimensions).
    """
    if next_dim_q.dim() < 2:
        raise ValueError(f"next_dim_q must be [..., D, bins], got shape {tuple(next_dim_q.shape)}.")
    if last_dim_target.shape != next_dim_q.shape[:-2]:
        raise ValueError(
            f"last_dim_target has shape {tuple(last_dim_target.shape)} but next_dim_q "
            f"{tuple(next_dim_q.shape)} needs {tuple(next_dim_q.shape[:-2])} (its leading dims)."
        )
    inner = next_dim_q[..., 1:, :].amax(dim=-1)  # [..., D-1]
    return torch.cat([inner, last_dim_target.to(next_dim_q.dtype).unsqueeze(-1)], dim=-1)
