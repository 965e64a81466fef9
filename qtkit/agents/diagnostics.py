"""Value diagnostics logged during training: has the critic learned anything, and how hard does L_Q pull?

Computed every ``log_every`` steps (they cost one extra critic pass, and for QT two extra backward passes
through the policy), written with the other metrics to ``metrics.csv`` and TensorBoard:

- ``q_data``: mean over valid positions (and critic members) of Q(s_t, a_t) at the dataset's actions.
- ``mc_return``: mean discounted Monte-Carlo return G_t of the same positions (for a truncated episode a
  lower estimate of the behaviour policy's value).
- ``q_bias`` = mean(Q - G) and ``q_mc_corr``: Pearson correlation of Q and G over those positions. A critic
  that has learned ranks positions like their returns (correlation near 1); a correlation near 0 says the
  Q term steers the policy by noise.
- ``lq_grad_ratio`` (QT with eta > 0): ||grad of eta * L_Q|| / ||grad of L_DT|| over the policy's parameters,
  and ``lq_grad_cos``, the cosine between the two gradients (negative: L_Q pulls against imitation).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def q_at_data(critic: nn.Module, states: Tensor, actions: Tensor) -> Tensor:
    """Q of every critic member at the given actions, in eval mode (no dropout): ``[E, B, K]``.

    Eval mode also keeps the diagnostic pass from drawing dropout masks from the global RNG, so a run
    with diagnostics trains bit-identically to one without.
    """
    was_training = critic.training
    critic.eval()
    try:
        return critic(states, actions)
    finally:
        critic.train(was_training)


@torch.no_grad()
def value_diagnostics(q: Tensor, returns: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Q at the dataset's actions against the Monte-Carlo returns of the same positions.

    q [E, B, K] (every critic member) or [B, K]; returns [B, K] (discounted G_t); mask [B, K] (valid).
    Returns ``q_data``, ``mc_return``, ``q_bias`` and ``q_mc_corr`` (0-d tensors; the correlation is NaN
    with fewer than two valid positions or a constant input).
    """
    q = q.float().mean(0) if q.dim() == returns.dim() + 1 else q.float()
    valid = mask.bool()
    qv, gv = q[valid], returns.float()[valid]
    if qv.numel() == 0:
        nan = torch.tensor(float("nan"))
        return {"q_data": nan, "mc_return": nan, "q_bias": nan, "q_mc_corr": nan}
    dq, dg = qv - qv.mean(), gv - gv.mean()
    denominator = (dq.square().sum() * dg.square().sum()).sqrt()
    corr = (dq * dg).sum() / denominator if denominator > 0 else torch.tensor(float("nan"))
    return {"q_data": qv.mean(), "mc_return": gv.mean(), "q_bias": (qv - gv).mean(), "q_mc_corr": corr}


def gradient_balance(bc_loss: Tensor, q_term: Tensor, parameters: Iterable[Tensor]) -> dict[str, Tensor]:
    """How L_Q's gradient compares with L_DT's on the policy: ``lq_grad_ratio`` and ``lq_grad_cos``.

    bc_loss: L_DT (0-d, with its graph); q_term: eta * L_Q (0-d, with its graph); both keep their graphs
    (``retain_graph``), so the caller's ``backward`` of their sum still works and is unchanged.
    """
    params = [p for p in parameters if p.requires_grad]
    g_bc = torch.autograd.grad(bc_loss, params, retain_graph=True, allow_unused=True)
    g_q = torch.autograd.grad(q_term, params, retain_graph=True, allow_unused=True)
    flat_bc = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(g_bc, params)])
    flat_q = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(g_q, params)])
    norm_bc, norm_q = flat_bc.norm(), flat_q.norm()
    cos = (flat_bc @ flat_q) / (norm_bc * norm_q) if norm_bc > 0 and norm_q > 0 else torch.tensor(float("nan"))
    ratio = norm_q / norm_bc if norm_bc > 0 else torch.tensor(float("inf"))
    return {"lq_grad_ratio": ratio.detach(), "lq_grad_cos": cos.detach()}
