"""Bellman targets as pure, vectorised functions (ALGORITHMS.md §3, §6).

Every tensor is a ``[B, T]`` window: B rows, each T consecutive steps of one episode.
``mask[b, t]`` is True at valid positions; valid positions are contiguous (padding may sit on
either side). Values at invalid positions (NaN and inf included) never reach a valid output,
and invalid outputs are 0. (Beyond that contract, a row with gaps is treated as independent
runs: no sum crosses an invalid position.)

How it is computed: a target is a chain of one-step maps ``x -> r_t + gamma * x`` that stops at
a terminal, at the end of the valid run, or after n steps. :func:`_compose` joins an m-step chain
with the chain that starts m steps later, so an n-step target takes O(log n) vectorised steps
(binary powering); nothing loops over the batch or over time. The chains never read a value
they do not use (``torch.where``, not multiplication by 0), so NaN or inf in a position that does
not belong to a target cannot reach it.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor


def _shapes(name_to_tensor: dict[str, object]) -> str:
    return ", ".join(
        f"{k} {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}" for k, v in name_to_tensor.items()
    )


def _check_window(name_to_tensor: dict[str, Tensor], mask: Tensor, gamma: float) -> None:
    """Raise ``ValueError`` naming the argument (and the shapes received) for malformed input."""
    everything = {**name_to_tensor, "mask": mask}
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(
            f"mask must be a bool tensor, got {got} (received {_shapes(everything)}); use mask.bool() or mask > 0."
        )
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)} (received {_shapes(everything)}).")
    for name, tensor in name_to_tensor.items():
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__} (received {_shapes(everything)}).")
        if tensor.shape != mask.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but mask has {tuple(mask.shape)}; all inputs must be "
                f"the same [B, T] (received {_shapes(everything)})."
            )
    rewards = name_to_tensor.get("rewards")
    if rewards is not None and not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got dtype {rewards.dtype}; use rewards.float().")
    try:
        g = float(gamma)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}.") from None
    if not 0.0 <= g <= 1.0:  # also rejects NaN
        raise ValueError(f"gamma must be in [0, 1], got gamma={gamma!r} (received {_shapes(everything)}).")


def _check_n(n: int | None) -> int | None:
    if n is None:
        return None
    try:
        if isinstance(n, bool):
            raise TypeError
        value = operator.index(n)
    except TypeError:
        raise ValueError(f"n must be an int >= 1 or None (no limit), got n={n!r}.") from None
    if value < 1:
        raise ValueError(f"n must be an int >= 1 or None (no limit), got n={n!r}.")
    return value


def _as_bool(terminals: Tensor) -> Tensor:
    return terminals if terminals.dtype == torch.bool else terminals != 0


def _shift(x: Tensor, m: int) -> Tensor:
    """``out[:, t] = x[:, t + m]``, zero (False) past the end of the row."""
    T = x.shape[1]
    if m >= T:
        return torch.zeros_like(x)
    return torch.nn.functional.pad(x[:, m:], (0, m))


def _compose(
    first: tuple[Tensor, Tensor, int], second: tuple[Tensor, Tensor, int], gamma: float, need_go_on: bool = True
) -> tuple[Tensor, Tensor, int]:
    """Join an m-step chain with the k-step chain that starts m steps later.

    A chain is ``(S, go_on, m)``: ``S[:, t]`` is the m-step partial target from t (rewards of the
    steps taken, plus the bootstrap if the chain stopped early); ``go_on[:, t]`` says the chain
    did not stop, i.e. it may continue at t + m.
    """
    s1, c1, m = first
    s2, c2, k = second
    s = torch.add(s1, torch.where(c1, _shift(s2, m), s2.new_zeros(())), alpha=gamma**m)
    c = c1 & _shift(c2, m) if need_go_on else c1
    return s, c, m + k


def _chain(first: Tensor, go_on: Tensor, gamma: float, steps: int, need_go_on: bool) -> tuple[Tensor, Tensor]:
    """``steps`` one-step maps composed by binary powering: O(log steps) vectorised compositions."""
    acc: tuple[Tensor, Tensor, int] | None = None
    power = (first, go_on, 1)
    while True:
        last = steps < 2
        if steps & 1:
            acc = power if acc is None else _compose(acc, power, gamma, need_go_on or not last)
        steps >>= 1
        if steps == 0:
            break
        power = _compose(power, power, gamma)
    assert acc is not None
    return acc[0], acc[1]


def _one_step(
    rewards: Tensor, next_values: Tensor | None, terminals: Tensor, mask: Tensor, gamma: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The one-step maps ``(first, go_on, one_step)``, all ``[B, T]`` and free of invalid values.

    ``go_on[:, t]``: t is valid, not terminal and t+1 is valid (the sum may continue to t+1).
    ``one_step[:, t]``: the 1-step target ``r_t + gamma * (1 - terminals_t) * next_values_t``
    (``r_t`` alone with no ``next_values``), 0 where t is invalid.
    ``first[:, t]``: ``r_t`` where the sum goes on, else ``one_step[:, t]`` (the chain ends at t).
    """
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    r = torch.where(mask, rewards, zero)
    alive = mask & ~_as_bool(terminals)
    go_on = alive & _shift(mask, 1)
    if next_values is None:
        return r, go_on, r
    one_step = torch.add(r, torch.where(alive, next_values.to(rewards.dtype), zero), alpha=gamma)
    return torch.where(go_on, r, one_step), go_on, one_step


def n_step_targets(
    rewards: Tensor,
    next_values: Tensor,
    terminals: Tensor,
    mask: Tensor,
    gamma: float,
    n: int | None = None,
) -> Tensor:
    """n-step Bellman targets ``y[B, T]``.

    ``rewards``, ``next_values`` ``[B, T]`` float, ``terminals`` ``[B, T]`` (bool or 0/1),
    ``mask`` ``[B, T]`` bool. ``next_values[b, t]`` is the bootstrap value of the state reached
    after step t. For a valid t, with e the last position such that t..e are all valid,
    ``e - t + 1 <= n`` (no limit when ``n is None``), stopping at the first terminal at or after t::

        y_t = sum_{k=t..e} gamma^(k-t) r_k + gamma^(e-t+1) * (1 - terminals[e]) * next_values[e]

    Invalid positions are 0. The dtype and device of ``rewards`` are kept.
    """
    _check_window({"rewards": rewards, "next_values": next_values, "terminals": terminals}, mask, gamma)
    n = _check_n(n)
    g = float(gamma)
    T = mask.shape[1]
    if T == 0:
        return torch.zeros_like(rewards)
    first, go_on, one_step = _one_step(rewards, next_values, terminals, mask, g)
    steps = T if n is None else min(n, T)
    if steps == 1:
        return one_step
    if steps == T:  # no chain is T steps long: each one stopped early and holds its own bootstrap
        targets, _ = _chain(first, go_on, g, T, need_go_on=False)
        return targets
    # y^(n)_t = (n-1 steps from t) then, if the chain is still going, the 1-step target of t+n-1
    head, still_going = _chain(first, go_on, g, steps - 1, need_go_on=True)
    zero = torch.zeros((), dtype=head.dtype, device=head.device)
    return torch.add(head, torch.where(still_going, _shift(one_step, steps - 1), zero), alpha=g ** (steps - 1))


def discounted_returns(rewards: Tensor, terminals: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Discounted Monte-Carlo returns ``G[B, T]``: :func:`n_step_targets` with no bootstrap.

    ``G_t = r_t + gamma * (1 - terminals_t) * G_{t+1}`` over the valid run (``G_{t+1} = 0`` past
    its end); invalid positions are 0. O(log T) vectorised steps, so it suits whole episodes
    (``[num_episodes, max_len]`` with right padding).
    """
    _check_window({"rewards": rewards, "terminals": terminals}, mask, gamma)
    g = float(gamma)
    T = mask.shape[1]
    if T == 0:
        return torch.zeros_like(rewards)
    first, go_on, _ = _one_step(rewards, None, terminals, mask, g)
    returns, _ = _chain(first, go_on, g, T, need_go_on=False)  # no chain is T steps long
    return returns


def mc_lower_bound(targets: Tensor, returns: Tensor) -> Tensor:
    """Q-Transformer's Monte-Carlo lower bound: ``max(targets, returns)`` elementwise (any shape)."""
    if not isinstance(targets, Tensor) or not isinstance(returns, Tensor):
        raise ValueError(
            f"targets and returns must be tensors, got {type(targets).__name__} and {type(returns).__name__}."
        )
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
    ``next_dim_q[..., 0, :]`` is not used.
    """
    if not isinstance(next_dim_q, Tensor) or not isinstance(last_dim_target, Tensor):
        raise ValueError(
            f"next_dim_q and last_dim_target must be tensors, got {type(next_dim_q).__name__} and "
            f"{type(last_dim_target).__name__}."
        )
    if next_dim_q.dim() < 2 or next_dim_q.shape[-2] < 1 or next_dim_q.shape[-1] < 1:
        raise ValueError(
            f"next_dim_q must be [..., D, bins] with D >= 1 and bins >= 1, got shape {tuple(next_dim_q.shape)}."
        )
    if last_dim_target.shape != next_dim_q.shape[:-2]:
        raise ValueError(
            f"last_dim_target has shape {tuple(last_dim_target.shape)} but next_dim_q "
            f"{tuple(next_dim_q.shape)} needs {tuple(next_dim_q.shape[:-2])} (its leading dims)."
        )
    inner = next_dim_q[..., 1:, :].amax(dim=-1)  # [..., D-1]
    return torch.cat([inner, last_dim_target.to(next_dim_q.dtype).unsqueeze(-1)], dim=-1)
