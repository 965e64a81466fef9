"""Datasets: loading (Minari, D4RL HDF5, npz), training windows, and datasets qtkit makes itself.

>>> from qtkit.data import load_dataset
>>> ds = load_dataset("minari:D4RL/pointmaze/umaze-v2")          # or a .hdf5 / .npz path
>>> batch = ds.sample_windows(256, 20, generator=0, rtg_scale=10)  # a Batch of [256, 20, ...] tensors

Importing this package does not import minari, gymnasium or h5py (they load when used), nor
``qtkit.data.makers`` (``make_dataset``/``list_makers`` are resolved on first access).
"""

from __future__ import annotations

from typing import Any

from qtkit.data.batch import Batch
from qtkit.data.dataset import DEFAULT_GAMMA, Episode, TrajectoryDataset
from qtkit.data.loading import load_dataset
from qtkit.data.scores import D4RL_REFERENCE_SCORES, normalized_score
from qtkit.data.spaces import flat_layout, flatten_observation

__all__ = [
    "D4RL_REFERENCE_SCORES",
    "DEFAULT_GAMMA",
    "Batch",
    "Episode",
    "TrajectoryDataset",
    "flat_layout",
    "flatten_observation",
    "list_makers",
    "load_dataset",
    "make_dataset",
    "normalized_score",
]

_LAZY = {"make_dataset": "qtkit.data.makers", "list_makers": "qtkit.data.makers"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qtkit.data' has no attribute {name!r}")
