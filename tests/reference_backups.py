"""Slow, obviously-correct reference backups: plain Python loops over rows and steps.

Written from the formulas in ALGORITHMS.md §3/§6 and the issue text, not from the fast code, so
the property tests can compare the two. Inputs are tensors or nested lists; outputs are nested
lists of Python floats (float64 arithmetic).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch


def _rows(x: Any) -> list[list[Any]]:
    return x.tolist() if isinstance(x, torch.Tensor) else [list(row) for row in x]


def ref_n_step(
    rewards: Any, next_values: Any, terminals: Any, mask: Any, gamma: float, n: int | None = None
) -> list[list[float]]:
    """``y_t = sum_{k=t..e} gamma^(k-t) r_k + gamma^(e-t+1) (1 - term_e) v_e`` with e as in the spec.

    Walks forward from t one step at a time: add the discounted reward of step k; stop after a
    terminal (no bootstrap); otherwise stop, bootstrapping from ``v_k``, when n rewards have been
    summed or step k+1 is outside the valid run. Invalid t give 0.
    """
    r, v, term, m = _rows(rewards), _rows(next_values), _rows(terminals), _rows(mask)
    out = []
    for b in range(len(m)):
        T = len(m[b])
        row = []
        for t in range(T):
            if not m[b][t]:
                row.append(0.0)
                continue
            total, discount, k = 0.0, 1.0, t
            while True:
                total += discount * float(r[b][k])
                discount *= gamma
                if bool(term[b][k]):
                    break  # the episode ended after step k: nothing to bootstrap from
                summed = k - t + 1
                if (n is not None and summed == n) or k + 1 >= T or not m[b][k + 1]:
                    total += discount * float(v[b][k])
                    break
                k += 1
            row.append(total)
        out.append(row)
    return out


def ref_discounted_returns(rewards: Any, terminals: Any, mask: Any, gamma: float) -> list[list[float]]:
    """``G_t = sum_{k=t..e} gamma^(k-t) r_k`` with e the end of the valid run or the first terminal."""
    r, term, m = _rows(rewards), _rows(terminals), _rows(mask)
    out = []
    for b in range(len(m)):
        T = len(m[b])
        row = []
        for t in range(T):
            total = 0.0
            if m[b][t]:
                for k in range(t, T):
                    if not m[b][k]:
                        break
                    total += gamma ** (k - t) * float(r[b][k])
                    if bool(term[b][k]):
                        break
            row.append(total)
        out.append(row)
    return out


def ref_default_next_valid(mask: Any) -> list[list[bool]]:
    """``next_valid[b, t] = mask[b, t+1]``; False in the last column."""
    m = _rows(mask)
    return [[bool(row[t + 1]) if t + 1 < len(row) else False for t in range(len(row))] for row in m]


def ref_component(
    name: str,
    rewards: Any,
    next_values: Any,
    terminals: Any,
    mask: Any,
    returns: Any,
    gamma: float,
    n: int = 5,
    next_valid: Any = None,
) -> tuple[list[list[float]], list[list[bool]]]:
    """What a registered backup returns: ``(targets, valid)`` as nested lists (the lead's rule)."""
    m, term = _rows(mask), _rows(terminals)
    if name == "mc":
        g = _rows(returns)
        return [[float(g[b][t]) if m[b][t] else 0.0 for t in range(len(m[b]))] for b in range(len(m))], [
            [bool(x) for x in row] for row in m
        ]
    nv = ref_default_next_valid(m) if next_valid is None else _rows(next_valid)
    valid = [
        [bool(m[b][t]) and (bool(nv[b][t]) or bool(term[b][t])) for t in range(len(m[b]))] for b in range(len(m))
    ]
    horizon = {"one-step": 1, "n-step": n, "window": None, "nstep-mc-max": n}[name]
    targets = ref_n_step(rewards, next_values, terminals, valid, gamma, horizon)
    if name == "nstep-mc-max":
        g = _rows(returns)
        targets = [
            [max(targets[b][t], float(g[b][t])) if valid[b][t] else 0.0 for t in range(len(m[b]))]
            for b in range(len(m))
        ]
    return targets, valid


def ref_autoregressive(next_dim_q: torch.Tensor, last_dim_target: torch.Tensor) -> torch.Tensor:
    """``y[..., d] = max_b q[..., d+1, b]`` (d < D-1), ``y[..., D-1] = last``: loops over everything."""
    lead = tuple(next_dim_q.shape[:-2])
    D, bins = next_dim_q.shape[-2:]
    out = torch.zeros((*lead, D), dtype=torch.float64)
    for index in itertools.product(*(range(s) for s in lead)):
        for d in range(D - 1):
            best = -math.inf
            for b in range(bins):
                best = max(best, float(next_dim_q[(*index, d + 1, b)]))
            out[(*index, d)] = best
        out[(*index, D - 1)] = float(last_dim_target[index])
    return out


def make_batch(
    rewards: torch.Tensor,
    terminals: torch.Tensor,
    mask: torch.Tensor,
    returns: torch.Tensor | None = None,
    obs_dim: int = 3,
    act_dim: int = 2,
) -> Any:
    """A :class:`qtkit.data.Batch` around the given ``[B, K]`` tensors (other fields: zeros/ramps)."""
    from qtkit.data import Batch

    B, K = mask.shape
    dtype = rewards.dtype
    if returns is None:
        returns = torch.zeros_like(rewards)
    steps = torch.arange(K).expand(B, K).clone()
    return Batch(
        observations=torch.zeros(B, K, obs_dim, dtype=dtype),
        next_observations=torch.zeros(B, K, obs_dim, dtype=dtype),
        actions=torch.zeros(B, K, act_dim, dtype=dtype),
        rewards=rewards,
        rtg=torch.zeros_like(rewards),
        returns=returns,
        timesteps=steps,
        terminals=terminals.bool(),
        mask=mask.bool(),
    )
