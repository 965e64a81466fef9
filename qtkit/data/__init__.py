"""Datasets: loading (Minari, D4RL HDF5, npz), training windows, and datasets qtkit makes itself."""

from qtkit.data.batch import Batch

__all__ = ["Batch"]
