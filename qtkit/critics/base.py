"""What critics share: the soft (Polyak / EMA) update of a target copy."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online`` for every parameter; buffers are copied.

    ``tau = 1`` copies the online module, ``tau = 0`` leaves the target unchanged. Both modules
    must have the same structure.
    """
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)
