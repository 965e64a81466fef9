"""Image frames of a ``TrajectoryDataset``: uint8 ``[rows, H, W, C]``, in memory or read lazily from a file.

In memory the frames are a numpy array (a ``numpy.memmap`` counts as one: its pages are read by the OS
when touched). :class:`LazyFrames` keeps them in their file instead: row ``j`` of the dataset's frames is
row ``row[j]`` of source ``sources[src[j]]``, where a source is any array-like with numpy slicing, e.g. an
``h5py.Dataset`` (a Minari episode's ``observations``, a D4RL file's ``observations`` or
``next_observations``) or a memory-mapped npz member. Reading rows groups them into runs of consecutive
rows of one source and reads each run as one slice, so a window of K steps costs one or two reads.

:func:`memmap_npz_member` maps an array stored *uncompressed* in an ``.npz`` (``np.savez``,
``TrajectoryDataset.to_npz(compress=False)``) without reading it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LazyFrames", "frames_storage", "memmap_npz_member", "npz_member_header", "take_frames"]


class LazyFrames:
    """Read-only frames ``[n, *frame_shape]`` whose rows live in one or more array-likes (see the module docstring).

    ``sources``: array-likes ``[n_s, *frame_shape]`` of one dtype; ``src [n]`` which source each row comes
    from, ``row [n]`` its row there. ``take(rows)`` reads only the runs of rows it needs.
    """

    def __init__(self, sources: Sequence[Any], src: np.ndarray, row: np.ndarray, keep: Sequence[Any] = ()) -> None:
        self.sources = list(sources)
        self._keep = list(keep)  # objects the sources need alive (an open h5py.File)
        self._src = np.asarray(src, dtype=np.int64)
        self._row = np.asarray(row, dtype=np.int64)
        first = self.sources[0]
        self.frame_shape = tuple(int(s) for s in first.shape[1:])
        self.dtype = np.dtype(first.dtype)

    @classmethod
    def of(cls, array: Any) -> LazyFrames:
        """One array-like ``[n, ...]`` as lazy frames (row j is its row j)."""
        n = len(array)
        return cls([array], np.zeros(n, dtype=np.int64), np.arange(n, dtype=np.int64))

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._src), *self.frame_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.frame_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self._src)

    @property
    def storage(self) -> str:
        """What holds the rows: ``"hdf5"``, ``"memmap"`` or ``"memory"``."""
        kinds = {_storage_of(s) for s in self.sources}
        return "hdf5" if "hdf5" in kinds else ("memmap" if "memmap" in kinds else "memory")

    def take(self, rows: Any) -> np.ndarray:
        """Rows ``rows [m]`` (any order, repeats allowed) as a new array ``[m, *frame_shape]``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"frame rows out of range [0, {n}).")
        rows = rows % n if n else rows
        uniq, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((len(uniq), *self.frame_shape), dtype=self.dtype)
        if len(uniq):
            src, row = self._src[uniq], self._row[uniq]
            cut = np.flatnonzero((np.diff(src) != 0) | (np.diff(row) != 1)) + 1
            starts = np.concatenate([[0], cut])
            stops = np.concatenate([cut, [len(uniq)]])
            for a, b in zip(starts.tolist(), stops.tolist()):
                r = int(row[a])
                out[a:b] = self.sources[int(src[a])][r: r + (b - a)]
        if len(uniq) == len(rows) and np.array_equal(uniq, rows):
            return out
        return out[inverse.reshape(-1)]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        if isinstance(key, int | np.integer):
            return self.take([int(key)])[0]
        return self.take(key)

    def read_all(self) -> np.ndarray:
        """Every row, in memory ``[n, *frame_shape]`` (reads the whole file part)."""
        return self.take(np.arange(len(self)))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read_all()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyFrames(shape={self.shape}, dtype={self.dtype}, storage={self.storage!r}, sources={len(self.sources)})"


def _storage_of(array: Any) -> str:
    if isinstance(array, np.memmap) or isinstance(getattr(array, "base", None), np.memmap):
        return "memmap"
    if type(array).__module__.startswith("h5py"):
        return "hdf5"
    return "memory"


def frames_storage(frames: Any) -> str:
    """``"memory"``, ``"memmap"`` or ``"hdf5"``: where the rows of ``frames`` (an array or LazyFrames) are."""
    if isinstance(frames, LazyFrames):
        return frames.storage
    base = frames
    while base is not None:
        if isinstance(base, np.memmap):
            return "memmap"
        base = getattr(base, "base", None)
    return "memory"


def take_frames(frames: Any, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows [m]`` of ``frames`` (a numpy array or :class:`LazyFrames`) -> ``[m, *frame_shape]``."""
    if isinstance(frames, LazyFrames):
        return frames.take(rows)
    return np.take(frames, rows, axis=0)


def memmap_npz_member(path: str | Path, key: str) -> np.memmap | None:
    """Array ``key`` of the ``.npz`` at ``path`` as a read-only ``numpy.memmap``, without reading it.

    Returns None when the member is compressed (``np.savez_compressed``) or not a plain C/Fortran array
    (object arrays), so the caller can read it the ordinary way or say why it cannot be lazy.
    """
    name = key if key.endswith(".npy") else f"{key}.npy"
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(name)
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran else "C")


def npz_member_header(path: str | Path, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` of array ``key`` of an ``.npz`` (compressed or not), read from its header only."""
    name = key if key.endswith(".npy") else f"{key}.npy"
    try:
        with zipfile.ZipFile(path) as zf:
            if name not in zf.namelist():
                return None
            with zf.open(name) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None  # the ordinary reader reports what is wrong with the file
    return tuple(int(s) for s in shape), np.dtype(dtype)
