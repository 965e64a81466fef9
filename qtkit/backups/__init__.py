"""Bellman backups (kind ``backup``): pure target maths in :mod:`qtkit.backups.functional` and thin
registered components that apply them to a training :class:`~qtkit.data.Batch`."""

from qtkit.backups import functional

__all__ = ["functional"]
