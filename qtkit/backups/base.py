"""The ``Backup`` base class: what every registered backup component shares.

A backup is called as ``backup(batch, next_values, next_valid=None) -> (targets, valid)``, all
``[B, K]``. See :mod:`qtkit.backups.components` for the validity rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from qtkit.errors import ConfigError

if TYPE_CHECKING:
    from qtkit.data import Batch


def default_next_valid(mask: Tensor) -> Tensor:
    """``next_valid[B, K]`` when the caller gives none: ``mask[:, t+1]``, False at t = K-1.

    The next state is available only inside the window (QT's twin critic, whose bootstrap action
    comes from the policy run on the same window).
    """
    out = torch.zeros_like(mask)
    out[:, :-1] = mask[:, 1:]
    return out


def target_mask(mask: Tensor, terminals: Tensor, next_valid: Tensor) -> Tensor:
    """Where a target is defined, ``[B, K]`` bool: ``mask & (next_valid | terminals)``.

    A valid step whose bootstrap value is missing has no target, unless it is terminal (then it
    needs none).
    """
    term = terminals if terminals.dtype == torch.bool else terminals != 0
    return mask & (next_valid | term)


class Backup:
    """Base class of backup components: holds ``gamma`` and checks the call's inputs."""

    #: False for backups that ignore ``next_values`` (the agent may skip computing them).
    needs_next_values: ClassVar[bool] = True

    def __init__(self, gamma: float) -> None:
        name = getattr(type(self), "registered_name", type(self).__name__)
        try:
            g = float(gamma)
        except (TypeError, ValueError):
            raise ConfigError(f"backup {name!r}: gamma must be a number in [0, 1], got {gamma!r}.") from None
        if not 0.0 <= g <= 1.0:
            raise ConfigError(
                f"backup {name!r}: gamma must be in [0, 1], got {gamma!r}. Set train.gamma (e.g. 0.99)."
            )
        self.gamma = g

    @property
    def name(self) -> str:
        """The registered name (``"n-step"``...)."""
        return getattr(type(self), "registered_name", type(self).__name__)

    def _hparams(self) -> dict[str, object]:
        return {"gamma": self.gamma}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._hparams().items())
        return f"{type(self).__name__}({params})"

    def __call__(
        self, batch: Batch, next_values: Tensor | None = None, next_valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Targets and their validity, ``(targets [B, K] float, valid [B, K] bool)``.

        ``next_values[B, K]``: bootstrap value of the state after step t (ignored when
        ``needs_next_values`` is False). ``next_valid[B, K]`` bool: where ``next_values`` is
        available; by default :func:`default_next_valid` of ``batch.mask``. Invalid targets are 0.
        """
        mask = batch.mask
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"backup {self.name!r}: batch.mask must be a [B, K] bool tensor, got {got}.")
        if next_valid is None:
            next_valid = default_next_valid(mask)
        elif not isinstance(next_valid, Tensor) or next_valid.dtype != torch.bool or next_valid.shape != mask.shape:
            got = f"{next_valid.dtype} {tuple(next_valid.shape)}" if isinstance(next_valid, Tensor) else next_valid
            raise ValueError(
                f"backup {self.name!r}: next_valid must be a bool tensor shaped like batch.mask "
                f"{tuple(mask.shape)}, got {got}."
            )
        if self.needs_next_values:
            if next_values is None:
                raise ValueError(
                    f"backup {self.name!r} bootstraps: pass next_values [B, K] (the value of the state after "
                    f"each step), got None."
                )
            if not isinstance(next_values, Tensor) or next_values.shape != mask.shape:
                got = tuple(next_values.shape) if isinstance(next_values, Tensor) else type(next_values).__name__
                raise ValueError(
                    f"backup {self.name!r}: next_values must be [B, K] = {tuple(mask.shape)}, got {got}."
                )
        return self.targets(batch, next_values, next_valid)

    def targets(self, batch: Batch, next_values: Tensor | None, next_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Compute ``(targets, valid)`` from checked inputs (subclasses implement this)."""
        raise NotImplementedError
