"""Registered backup components (kind ``backup``): ``one-step``, ``n-step``, ``window``, ``mc``,
``nstep-mc-max`` (ALGORITHMS.md §3).

Each is built with ``gamma`` (from the preset's ``train.gamma``) and called as
``backup(batch, next_values, next_valid=None) -> (targets, valid)``, all ``[B, K]``:

- ``batch``: a :class:`qtkit.data.Batch` (rewards, terminals, mask, returns...).
- ``next_values[b, t]``: the bootstrap value of the state reached after step t (from the critic).
- ``next_valid[b, t]`` (bool): where ``next_values`` is actually available. Default:
  ``mask[:, t+1]`` (the next state lies inside the window) and False at t = K-1, the case of
  QT's twin critic, whose bootstrap action comes from the policy run on the same window. A
  critic that can bootstrap every step (it has ``next_observations``) passes ``batch.mask``.

Validity rule (all bootstrapping backups)::

    valid   = mask & (next_valid | terminals)
    targets = n_step_targets(rewards, next_values, terminals, valid, gamma, n)

With the default ``next_valid`` (or ``batch.mask``) only trailing positions of a row's valid run
lack a next value, so ``valid`` is still a contiguous run; with any other ``next_valid`` the
sums simply never cross an invalid position. Consequences:

- a step whose bootstrap state lies outside the window has no target (``valid`` False, target
  0), never a silent bootstrap from 0;
- a terminal step is valid without a next value: its target is its reward (and the steps before
  it sum that reward, unlike the reference code, which drops it);
- an n-step horizon that would need an unavailable bootstrap is shortened to the last
  available one. With the default ``next_valid`` and no limit on n this is ``window``: each
  step sums the rewards up to the step before the window's last state, then adds
  ``gamma^len * V(last state)``, as the reference QT code does.

``next_values`` is never read where it is not used (NaN there is harmless), nor at terminal
steps (the bootstrap is always masked by the termination flag, unlike the reference's 1-step
branch). ``mc`` needs no next values (``needs_next_values = False``): its targets are the
precomputed discounted returns ``batch.returns`` wherever ``batch.mask`` holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from qtkit.backups.base import Backup, target_mask
from qtkit.backups.functional import _check_n, mc_lower_bound, n_step_targets
from qtkit.errors import ConfigError
from qtkit.params import PositiveInt
from qtkit.registry import register

if TYPE_CHECKING:
    from qtkit.data import Batch

__all__ = ["MCBackup", "NStepBackup", "NStepMCMaxBackup", "OneStepBackup", "WindowBackup"]


def _check_horizon(n: int, component: str) -> int:
    """``n`` as checked by the functional core (an int >= 1), with a ConfigError naming the backup."""
    try:
        value = _check_n(n)
    except ValueError:
        value = None
    if value is None:
        raise ConfigError(
            f"backup {component!r}: parameter n must be an int >= 1 (the number of rewards summed), got {n!r}. "
            "Use 'one-step' for n = 1 or 'window' for no limit."
        )
    return value


class _Bootstrapped(Backup):
    """Shared maths of the backups that bootstrap: n-step targets on the valid mask."""

    #: Rewards summed before the bootstrap (None: up to the last available one).
    horizon: int | None = None

    def _n_step(self, batch: Batch, next_values: Tensor | None, next_valid: Tensor) -> tuple[Tensor, Tensor]:
        assert next_values is not None
        valid = target_mask(batch.mask, batch.terminals, next_valid)
        targets = n_step_targets(batch.rewards, next_values, batch.terminals, valid, self.gamma, self.horizon)
        return targets, valid

    def targets(self, batch: Batch, next_values: Tensor | None, next_valid: Tensor) -> tuple[Tensor, Tensor]:
        return self._n_step(batch, next_values, next_valid)


@register("backup", "one-step")
class OneStepBackup(_Bootstrapped):
    """One-step TD target r_t + gamma * (1 - terminal_t) * V(s_{t+1})."""

    horizon = 1

    def __init__(self, gamma: float) -> None:
        super().__init__(gamma)


@register("backup", "n-step")
class NStepBackup(_Bootstrapped):
    """n-step target: n discounted rewards, then the bootstrap value (shortened at the window's end)."""

    def __init__(self, gamma: float, n: PositiveInt = 5) -> None:
        super().__init__(gamma)
        self.horizon = _check_horizon(n, self.name)

    @property
    def n(self) -> int:
        assert self.horizon is not None
        return self.horizon

    def _hparams(self) -> dict[str, object]:
        return {"gamma": self.gamma, "n": self.n}


@register("backup", "window")
class WindowBackup(_Bootstrapped):
    """Reference QT target: discounted rewards to the window's end, then its last state's value."""

    horizon = None

    def __init__(self, gamma: float) -> None:
        super().__init__(gamma)


@register("backup", "mc")
class MCBackup(Backup):
    """Monte-Carlo target: the precomputed discounted return G_t (no bootstrap)."""

    needs_next_values: ClassVar[bool] = False

    def __init__(self, gamma: float) -> None:
        super().__init__(gamma)

    def targets(self, batch: Batch, next_values: Tensor | None, next_valid: Tensor) -> tuple[Tensor, Tensor]:
        mask = batch.mask
        returns = batch.returns.to(batch.rewards.dtype)
        zero = torch.zeros((), dtype=returns.dtype, device=returns.device)
        return torch.where(mask, returns, zero), mask


@register("backup", "nstep-mc-max")
class NStepMCMaxBackup(NStepBackup):
    """Q-Transformer target: max of the n-step target and the Monte-Carlo return G_t."""

    def targets(self, batch: Batch, next_values: Tensor | None, next_valid: Tensor) -> tuple[Tensor, Tensor]:
        targets, valid = self._n_step(batch, next_values, next_valid)
        zero = torch.zeros((), dtype=targets.dtype, device=targets.device)
        return torch.where(valid, mc_lower_bound(targets, batch.returns), zero), valid
