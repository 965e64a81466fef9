"""Bellman backups (kind ``backup``): pure target maths in :mod:`qtkit.backups.functional` and thin
registered components that apply them to a training :class:`~qtkit.data.Batch`
(:mod:`qtkit.backups.components`; importing this package registers them)."""

from qtkit.backups import functional
from qtkit.backups.base import Backup, default_next_valid, target_mask
from qtkit.backups.components import (
    MCBackup,
    NStepBackup,
    NStepMCMaxBackup,
    OneStepBackup,
    WindowBackup,
)
from qtkit.backups.functional import (
    autoregressive_targets,
    discounted_returns,
    mc_lower_bound,
    n_step_targets,
)

__all__ = [
    "Backup",
    "MCBackup",
    "NStepBackup",
    "NStepMCMaxBackup",
    "OneStepBackup",
    "WindowBackup",
    "autoregressive_targets",
    "default_next_valid",
    "discounted_returns",
    "functional",
    "mc_lower_bound",
    "n_step_targets",
    "target_mask",
]
