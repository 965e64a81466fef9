"""``load_dataset``: Minari datasets, D4RL-style HDF5 files and ``.npz`` files -> ``TrajectoryDataset``.

Specs:

- ``"minari:<dataset_id>"``: a Minari dataset in ``$MINARI_DATASETS_PATH`` (default
  ``~/.minari/datasets``), read with Minari's own API. Nothing is downloaded unless
  ``download=True``; a dataset that is not local raises :class:`~qtkit.errors.DataError` at once,
  listing the local ones. An id without ``-vN`` picks the newest local version.
- a path to a D4RL-style ``.hdf5``/``.h5`` or ``.npz`` file with ``observations, actions, rewards,
  terminals, timeouts`` (optional ``next_observations``, optional ``ref_min_score``,
  ``ref_max_score``, ``env_id`` as HDF5 attributes / datasets or npz keys).
- a ``TrajectoryDataset`` (returned as is, or a copy with the given overrides).

D4RL flat files: an episode ends at a row where ``terminals or timeouts``; rows after the last
such row form a final episode that is treated as truncated. The final observation of an
episode is ``next_observations[last row]`` when the file has ``next_observations``. Without them:

- an episode that ends on a time-out (or the data end) loses its last transition, whose
  observation becomes the episode's final observation (as ``d4rl.qlearning_dataset`` does; a
  one-row such episode is dropped);
- an episode that ends on a termination keeps its terminal transition (its reward and the
  termination matter for Q-learning, and D4RL keeps it too); its final observation, which the
  file does not hold, is a copy of the last observation. It is never bootstrapped from (the
  episode terminated) but it is the ``next_observations`` target of that last step.

Image observations (uint8 ``[H, W, C]``: a Box uint8 space, or a Dict whose image part is chosen with
``observation_key``) are kept uint8. ``lazy`` (default None: automatic above
:data:`LAZY_FRAMES_BYTES` of frames) leaves the frames in their file: Minari and D4RL HDF5 files as h5py
datasets, an uncompressed npz as memory-mapped members; only the other arrays (actions, rewards, flags)
are read. See :mod:`qtkit.data.dataset`.

Files are only read, never modified.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qtkit.data.dataset import DEFAULT_GAMMA, TrajectoryDataset
from qtkit.data.validation import as_numeric, first_bad_flag, first_nonfinite
from qtkit.errors import DataError, did_you_mean

__all__ = ["D4RL_KEYS", "LAZY_FRAMES_BYTES", "load_dataset", "make_env_for"]

#: with ``lazy=None`` image frames larger than this (bytes) stay in their file (2 GiB)
LAZY_FRAMES_BYTES = 2 << 30

#: the keys a D4RL-style flat file must hold
D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
_HDF5_SUFFIXES = (".hdf5", ".h5", ".he5")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def load_dataset(
    spec: str | os.PathLike[str] | TrajectoryDataset,
    *,
    gamma: float | None = None,
    download: bool = False,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    env_id: str | None = None,
    action_low: Any = None,
    action_high: Any = None,
    lazy: bool | None = None,
    observation_key: str | None = None,
    proprio: bool = True,
) -> TrajectoryDataset:
    """Load an offline RL dataset as a :class:`TrajectoryDataset` (see the module docstring for specs).

    ``gamma`` (default 0.99, or what an npz written by qtkit records) is the discount of the
    precomputed returns; ``download=True`` lets Minari download a missing dataset;
    ``ref_min_score``/``ref_max_score``/``env_id`` override what the source records;
    ``action_low``/``action_high`` (scalars or ``[act]``) override the action bounds.

    Image data: ``lazy=True`` keeps the frames in the file (windows read only their rows), ``False`` reads
    them into memory, None (default) is lazy when the frames exceed :data:`LAZY_FRAMES_BYTES`; vector data
    is always read. A lazy npz must be uncompressed (``to_npz(compress=False)``): a compressed one is a
    :class:`DataError` with ``lazy=True``. ``observation_key`` picks the image part of a Dict observation
    space (default ``"pixels"``, or its only image). The vector parts of such a Dict (``"state"`` of
    ``{"pixels", "state"}``) become the dataset's ``proprio`` vector (read into memory, also when the frames
    are lazy), unless ``proprio=False`` (frames only).
    """
    overrides = {k: v for k, v in (("ref_min_score", ref_min_score), ("ref_max_score", ref_max_score),
                                   ("env_id", env_id)) if v is not None}
    for key in ("ref_min_score", "ref_max_score"):
        if key in overrides:
            overrides[key] = float(overrides[key])
    if isinstance(spec, TrajectoryDataset):
        dataset = spec
        if gamma is None and not overrides and action_low is None and action_high is None and (
                proprio or dataset.proprio is None):
            return dataset
    elif isinstance(spec, str) and spec.startswith("minari:"):
        dataset = _load_minari(spec[len("minari:"):].strip(), download=download, gamma=gamma, lazy=lazy,
                               observation_key=observation_key)
    elif isinstance(spec, str | os.PathLike):
        path = Path(os.fspath(spec)).expanduser()
        if not path.exists():
            raise DataError(_missing_path_message(str(spec), path))
        if path.is_dir():
            raise DataError(
                f"{path} is a directory; load_dataset takes a D4RL-style .hdf5/.npz file or 'minari:<dataset_id>' "
                "(Minari datasets are found by id in $MINARI_DATASETS_PATH)."
            )
        kind = _file_kind(path)
        dataset = _load_hdf5(path, gamma, lazy) if kind == "hdf5" else _load_npz(path, gamma, lazy)
    else:
        raise TypeError(
            f"load_dataset takes 'minari:<id>', a path to an .hdf5/.npz file or a TrajectoryDataset, got "
            f"{type(spec).__name__}."
        )
    action_space = None
    if action_low is not None or action_high is not None:
        from gymnasium import spaces

        act_dim = dataset.act_dim
        low = np.broadcast_to(np.asarray(dataset.action_low if action_low is None else action_low, np.float32),
                              (act_dim,))
        high = np.broadcast_to(np.asarray(dataset.action_high if action_high is None else action_high, np.float32),
                               (act_dim,))
        action_space = spaces.Box(low=low.copy(), high=high.copy(), dtype=np.float32)
    if not proprio and dataset.proprio is not None:
        dataset = dataset.without_proprio()
    if gamma is None and not overrides and action_space is None:
        return dataset
    return dataset._clone(gamma=gamma, metadata=overrides, action_space=action_space)


# ------------------------------------------------------------------------------------------ files
def _missing_path_message(text: str, path: Path) -> str:
    msg = f"no such file: {path}. load_dataset takes a path to a D4RL-style .hdf5/.npz file or 'minari:<dataset_id>'."
    if "/" in text or re.search(r"-v\d+$", text):
        try:
            local = local_minari_ids()
        except Exception:
            local = []
        if text in local:
            msg += f" {text!r} is a local Minari dataset: use load_dataset('minari:{text}')."
        else:
            msg += f" If {text!r} is a Minari dataset id, write 'minari:{text}'."
    return msg


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _HDF5_SUFFIXES:
        return "hdf5"
    if suffix == ".npz":
        return "npz"
    with open(path, "rb") as f:
        head = f.read(8)
    if head == _HDF5_MAGIC:
        return "hdf5"
    if head[:2] == b"PK":
        return "npz"
    raise DataError(
        f"{path}: unknown file type (suffix {suffix!r}, neither HDF5 nor npz); load_dataset reads D4RL-style .hdf5 "
        "and .npz files and 'minari:<dataset_id>'."
    )


def _scalar(value: Any) -> Any:
    arr = np.asarray(value)
    if arr.shape not in ((), (1,)):
        return None
    item = arr.reshape(()).item()
    if isinstance(item, bytes):
        item = item.decode()
    return item


def _want_lazy(lazy: bool | None, frame_bytes: int) -> bool:
    """Whether image frames of ``frame_bytes`` stay in their file (``lazy`` None: above LAZY_FRAMES_BYTES)."""
    return frame_bytes > LAZY_FRAMES_BYTES if lazy is None else bool(lazy)


def _is_frames(shape: tuple[int, ...], dtype: Any) -> bool:
    return len(shape) == 4 and np.dtype(dtype) == np.uint8


def _load_hdf5(path: Path, gamma: float | None, lazy: bool | None = None) -> TrajectoryDataset:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: cannot open as HDF5 ({e}).") from None
    keep_open = False
    try:
        present = sorted(f.keys())
        frame_keys = [k for k in ("observations", "next_observations")
                      if isinstance(f.get(k), h5py.Dataset) and _is_frames(f[k].shape, f[k].dtype)]
        keep_open = "observations" in frame_keys and _want_lazy(lazy, int(f["observations"].nbytes))
        arrays: dict[str, Any] = {}
        for key in (*D4RL_KEYS, "next_observations", "proprio", "next_proprio"):
            if key in f and isinstance(f[key], h5py.Dataset):
                arrays[key] = f[key] if keep_open and key in frame_keys else f[key][()]
        extras: dict[str, Any] = {}
        for key in ("ref_min_score", "ref_max_score", "env_id"):
            if key in f.attrs:
                extras[key] = _scalar(f.attrs[key])
            elif key in f and isinstance(f[key], h5py.Dataset) and f[key].size == 1:
                extras[key] = _scalar(f[key][()])
        return _from_flat(arrays, present, extras, path, "hdf5", gamma, keep=[f] if keep_open else [])
    except BaseException:
        keep_open = False
        raise
    finally:
        if not keep_open:
            f.close()


def _load_npz(path: Path, gamma: float | None, lazy: bool | None = None) -> TrajectoryDataset:
    from qtkit.data.frames import memmap_npz_member, npz_member_header

    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as .npz ({e}).") from None
    with npz:
        present = sorted(npz.files)
        mapped: dict[str, Any] = {}
        head = npz_member_header(path, "observations") if lazy is not False and "observations" in npz.files else None
        if head is not None and _is_frames(*head) and _want_lazy(lazy, int(np.prod(head[0])) * head[1].itemsize):
            for key in ("observations", "next_observations"):
                if key in npz.files:
                    mapped[key] = memmap_npz_member(path, key)
            if any(v is None for v in mapped.values()):
                if lazy:
                    raise DataError(
                        f"{path}: the frames are compressed (np.savez_compressed / to_npz(compress=True)), so they "
                        "cannot be read lazily. Re-save the dataset uncompressed (dataset.to_npz(path, "
                        "compress=False)) or load it with lazy=False (it must then fit in memory)."
                    )
                mapped = {}
        arrays = {k: mapped[k] if k in mapped else npz[k]
                  for k in (*D4RL_KEYS, "next_observations", "proprio", "next_proprio") if k in npz.files}
        extras = {k: _scalar(npz[k]) for k in ("ref_min_score", "ref_max_score", "env_id") if k in npz.files}
        saved = json.loads(str(npz["qtkit_metadata"])) if "qtkit_metadata" in npz.files else None
    return _from_flat(arrays, present, extras, path, "npz", gamma, saved, lazy=bool(mapped))


def _numeric(path: Path, key: str, value: Any) -> np.ndarray:
    """The file's array ``key`` as real numbers, or a :class:`DataError` naming the file, key, row and value."""
    kind = "booleans (or 0/1)" if key in ("terminals", "timeouts") else "a float array"
    return as_numeric(f"{path}: {key!r}", value, "", fix=f"Fix: write {key!r} as {kind}.")


def _rows(value: Any) -> np.ndarray:
    """``[n, ...]`` -> ``[n, prod(...)]`` (``[n]`` -> ``[n, 1]``)."""
    arr = np.asarray(value)
    if arr.ndim <= 1:
        return arr.reshape(-1, 1)
    return arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:])))


def _from_flat(
    arrays: Mapping[str, np.ndarray],
    present: list[str],
    extras: Mapping[str, Any],
    path: Path,
    source: str,
    gamma: float | None,
    saved: Mapping[str, Any] | None = None,
    keep: list[Any] | None = None,
    lazy: bool = False,
) -> TrajectoryDataset:
    """Split D4RL-style flat arrays into episodes (see the module docstring).

    Image frames (``observations [n, H, W, C]``) are gathered through a row map, so ``arrays`` may hold
    h5py datasets or memmaps for them (``keep``: the open file; ``lazy``: memmaps to keep mapped): a
    :class:`~qtkit.data.frames.LazyFrames` then stays in the file.
    """
    missing = [k for k in D4RL_KEYS if k not in arrays]
    if missing:
        raise DataError(
            f"{path} has no {', '.join(repr(k) for k in missing)} (keys present: {present}). A D4RL-style file "
            f"needs {', '.join(D4RL_KEYS)} (next_observations optional); a file without time-outs can add "
            "timeouts = zeros_like(terminals)."
        )
    numeric = {key: arrays[key] if _in_file(arrays[key]) else _numeric(path, key, arrays[key])
               for key in (*D4RL_KEYS, "next_observations") if key in arrays}
    saved_obs_space = _saved_spaces(saved, path)[0] if saved else None
    image = _flat_image(numeric["observations"], saved_obs_space)
    lazy = lazy or bool(keep)
    obs = numeric["observations"] if image else _rows(numeric["observations"])
    act = _rows(numeric["actions"])
    flat = {"observations": obs, "actions": act}
    for key in ("rewards", "terminals", "timeouts"):
        arr = numeric[key]
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise DataError(f"{path}: {key!r} must have one value per row, got shape {arr.shape}.")
        flat[key] = arr
    for key in ("terminals", "timeouts"):
        bad = first_bad_flag(flat[key])
        if bad is not None:
            row, value = bad
            raise DataError(
                f"{path}: {key!r} must be booleans or 0/1, but row {row} holds {value!r}. A value like 0.5 is "
                f"neither true nor false (qtkit does not guess which {'termination' if key == 'terminals' else 'time-out'}"
                f"s are real). Fix: write {key!r} as booleans (e.g. np.asarray(x) > 0.5 if that is what "
                "the values mean)."
            )
    nxt = None
    if "next_observations" in numeric:
        nxt = numeric["next_observations"] if image else _rows(numeric["next_observations"])
        flat["next_observations"] = nxt
    n = len(obs)
    sizes = {k: len(v) for k, v in flat.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(
            f"{path}: length mismatch, {', '.join(f'{k} has {v} rows' for k, v in sizes.items())}; every key of a "
            "D4RL-style file has one row per transition."
        )
    if n == 0:
        raise DataError(f"{path} is empty: it holds 0 transitions.")
    if nxt is not None and tuple(nxt.shape[1:]) != tuple(obs.shape[1:]):
        what = "shape" if image else "columns"
        raise DataError(
            f"{path}: next_observations has {what} {tuple(nxt.shape[1:])} but observations has {tuple(obs.shape[1:])}."
        )

    terminals = flat["terminals"] != 0
    timeouts = flat["timeouts"] != 0
    ends = np.flatnonzero(terminals | timeouts)
    trailing = len(ends) == 0 or ends[-1] != n - 1
    if trailing:
        ends = np.append(ends, n - 1)
    starts = np.concatenate([[0], ends[:-1] + 1])

    # NaN/inf: name the file row, the episode and the step
    for key in ("observations", "next_observations", "actions", "rewards"):
        if key not in flat:
            continue
        arr = flat[key]
        if image and key.endswith("observations"):  # uint8 (or in a file): only float frames can hold NaN
            if not (isinstance(arr, np.ndarray) and arr.dtype.kind == "f"):
                continue
            arr = _rows(arr)
        bad = first_nonfinite(arr)
        if bad is None:
            continue
        row, col, value = bad
        ep = int(np.searchsorted(starts, row, side="right") - 1)
        step = row - int(starts[ep])
        column = f", column {col}" if col >= 0 else ""
        raise DataError(
            f"{path}: {key!r} holds {value} at row {row} (episode {ep}, step {step}{column}). Clean the file (drop "
            "or repair that episode) before loading: qtkit does not train on NaN/inf."
        )

    ep_terminal = terminals[ends]
    prop_all = None
    if image:
        prop_rows = None
        if "proprio" in arrays:  # image + vector observations (qtkit's npz): the proprioceptive rows
            prop_rows = tuple(None if k not in arrays else _rows(_numeric(path, k, arrays[k]))
                              for k in ("proprio", "next_proprio"))
            if len(prop_rows[0]) != n:
                raise DataError(f"{path}: 'proprio' has {len(prop_rows[0])} rows but there are {n} transitions.")
        obs_all, lengths, step_keep, final_rule, prop_all = _flat_frames(
            obs, nxt, ends, starts, ep_terminal, n, lazy, keep, prop_rows)
    elif nxt is not None:
        lengths = ends - starts + 1
        final_obs = nxt[ends]
        step_keep = np.ones(n, dtype=bool)
        obs_all = np.insert(obs, ends + 1, final_obs, axis=0)
        final_rule = "next_observations"
    else:
        # time-out / trailing episodes drop their last transition; terminal ones keep it
        lengths = np.where(ep_terminal, ends - starts + 1, ends - starts)
        step_keep = np.ones(n, dtype=bool)
        step_keep[ends[~ep_terminal]] = False
        counts = np.ones(n, dtype=np.int64)
        counts[ends[ep_terminal]] = 2  # the placeholder final observation of a terminal episode
        dropped = np.flatnonzero(lengths == 0)  # one-row episodes ending on a time-out
        counts[starts[dropped]] = 0
        step_keep[starts[dropped]] = False
        obs_all = np.repeat(obs, counts, axis=0)
        final_rule = "last transition dropped (time-outs); terminal observation repeated (terminations)"
    kept = lengths > 0
    lengths = lengths[kept]
    ep_terminal = ep_terminal[kept]
    ep_timeout = timeouts[ends][kept]
    N = int(lengths.sum())
    last = np.cumsum(lengths) - 1
    term = np.zeros(N, dtype=bool)
    trunc = np.zeros(N, dtype=bool)
    term[last] = ep_terminal
    trunc[last] = ep_timeout | ~ep_terminal  # a trailing episode without flags is truncated

    metadata: dict[str, Any] = {}
    obs_space = act_space = None
    ids = None
    saved_gamma = None
    if saved:
        metadata.update(saved.get("metadata") or {})
        saved_gamma = saved.get("gamma")
        obs_space, act_space = saved_obs_space, _saved_spaces(saved, path)[1]
        ids = saved.get("episode_ids")
        if ids is not None and len(ids) != len(lengths):
            ids = None
    metadata.update({
        "source": source,
        "path": str(path),
        "dataset_id": metadata.get("dataset_id") or path.stem,
        "final_observation": final_rule,
    })
    for key in ("ref_min_score", "ref_max_score"):
        if extras.get(key) is not None:
            metadata[key] = float(extras[key])
    if extras.get("env_id"):
        metadata["env_id"] = str(extras["env_id"])
    if not kept.all():
        metadata["dropped_episodes"] = int((~kept).sum())  # one-row episodes ending on a time-out
    g = gamma if gamma is not None else (saved_gamma if saved_gamma is not None else DEFAULT_GAMMA)
    return TrajectoryDataset(
        obs_all, act[step_keep], flat["rewards"][step_keep], term, trunc, lengths,
        observation_space=obs_space, action_space=act_space, metadata=metadata, gamma=g, episode_ids=ids,
        proprio=prop_all,
    )


def _in_file(value: Any) -> bool:
    """Whether ``value`` is an array left in its file (h5py dataset, memmap), not to be read whole."""
    return type(value).__module__.startswith("h5py") or isinstance(value, np.memmap)


def _flat_image(observations: Any, saved_space: Any) -> bool:
    """Whether a flat file's ``observations`` are image frames: its saved space is an image, or uint8 [n, H, W, C]."""
    from qtkit.data.spaces import image_shape

    if saved_space is not None:
        return image_shape(saved_space) is not None
    return _is_frames(tuple(observations.shape), observations.dtype)


def _flat_frames(
    obs: Any, nxt: Any, ends: np.ndarray, starts: np.ndarray, ep_terminal: np.ndarray, n: int, lazy: bool,
    keep: list[Any] | None, proprio: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> tuple[Any, np.ndarray, np.ndarray, str, np.ndarray | None]:
    """Image frames of a flat file in the dataset layout ``[N + E, H, W, C]`` (the rules of the module docstring),
    as a row map over ``obs``/``nxt``: returns ``(frames, lengths, step_keep, final_rule, proprio)``; frames stay a
    :class:`LazyFrames` in the file when ``lazy``, else they are read into memory. ``proprio``: the file's
    ``(proprio, next_proprio)`` rows, put in the same layout (in memory; None: none)."""
    from qtkit.data.frames import LazyFrames

    rows = np.arange(n, dtype=np.int64)
    step_keep = np.ones(n, dtype=bool)
    if nxt is not None:
        lengths = ends - starts + 1
        src = np.insert(np.zeros(n, dtype=np.int64), ends + 1, 1)
        row = np.insert(rows, ends + 1, ends)
        frames = LazyFrames([obs, nxt], src, row, keep=keep or ())
        rule = "next_observations"
        if proprio is not None and proprio[1] is None:
            raise DataError("the file has 'proprio' but no 'next_proprio' to go with its next_observations.")
        prop = None if proprio is None else LazyFrames(list(proprio), src, row).read_all()
    else:
        lengths = np.where(ep_terminal, ends - starts + 1, ends - starts)
        step_keep[ends[~ep_terminal]] = False
        counts = np.ones(n, dtype=np.int64)
        counts[ends[ep_terminal]] = 2
        dropped = np.flatnonzero(lengths == 0)
        counts[starts[dropped]] = 0
        step_keep[starts[dropped]] = False
        row = np.repeat(rows, counts)
        frames = LazyFrames([obs], np.zeros(len(row), dtype=np.int64), row, keep=keep or ())
        rule = "last transition dropped (time-outs); terminal observation repeated (terminations)"
        prop = None if proprio is None else np.asarray(proprio[0])[row]
    return (frames if lazy else frames.read_all()), lengths, step_keep, rule, prop


def _saved_spaces(saved: Mapping[str, Any], path: Path) -> tuple[Any, Any]:
    from qtkit.data.spaces import space_from_json

    out = []
    for key in ("observation_space", "action_space"):
        text = saved.get(key)
        try:
            out.append(space_from_json(text) if text else None)
        except (DataError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: qtkit_metadata holds an unreadable {key} ({e}).") from None
    return out[0], out[1]


# ----------------------------------------------------------------------------------------- minari
def local_minari_ids(*, missing_ok: bool = False) -> list[str]:
    """The ids of the Minari datasets on this machine, sorted. ``missing_ok``: an empty list (instead of an
    ImportError) when minari is not installed or cannot list them."""
    try:
        import minari

        return sorted(minari.list_local_datasets())
    except Exception:
        if missing_ok:
            return []
        raise


def _datasets_root() -> str:
    return os.environ.get("MINARI_DATASETS_PATH") or os.path.join(os.path.expanduser("~"), ".minari", "datasets")


def _resolve_minari_id(dataset_id: str, local: list[str]) -> str | None:
    if dataset_id in local:
        return dataset_id
    if re.search(r"-v\d+$", dataset_id):
        return None
    versions = [(int(m.group(1)), d) for d in local if (m := re.fullmatch(re.escape(dataset_id) + r"-v(\d+)", d))]
    return max(versions)[1] if versions else None


def _load_minari(
    dataset_id: str, download: bool, gamma: float | None, lazy: bool | None = None, observation_key: str | None = None,
) -> TrajectoryDataset:
    if not dataset_id:
        raise DataError("empty Minari dataset id; write 'minari:<dataset_id>', e.g. 'minari:D4RL/pointmaze/umaze-v2'.")
    import minari

    local = local_minari_ids()
    resolved = _resolve_minari_id(dataset_id, local)
    if resolved is None:
        if not download:
            listing = ", ".join(local) if local else "none"
            raise DataError(
                f"Minari dataset {dataset_id!r} is not in the local Minari folder {_datasets_root()} "
                f"(local datasets: {listing}).{did_you_mean(dataset_id, local)} Download it with "
                f"`minari download {dataset_id}` or load_dataset('minari:{dataset_id}', download=True); set "
                "MINARI_DATASETS_PATH if your datasets live elsewhere."
            )
        try:
            minari.download_dataset(dataset_id)
        except Exception as e:
            raise DataError(f"could not download Minari dataset {dataset_id!r}: {e}") from None
        resolved = _resolve_minari_id(dataset_id, local_minari_ids()) or dataset_id
    try:
        mds = minari.load_dataset(resolved)
    except Exception as e:
        raise DataError(f"Minari could not load dataset {resolved!r}: {e}") from None

    meta = mds.storage.metadata
    metadata: dict[str, Any] = {
        "source": "minari",
        "dataset_id": resolved,
        "path": str(mds.storage.data_path),
        "minari_version": meta.get("minari_version"),
    }
    for key in ("ref_min_score", "ref_max_score"):
        if meta.get(key) is not None:
            metadata[key] = float(meta[key])
    for key in ("env_spec", "eval_env_spec"):
        if meta.get(key):
            metadata[key] = str(meta[key])
    for key in ("eval_env_spec", "env_spec"):  # the evaluation env's id
        if metadata.get(key):
            try:
                metadata["env_id"] = str(json.loads(metadata[key])["id"])
                break
            except (ValueError, KeyError, TypeError):
                continue
    g = DEFAULT_GAMMA if gamma is None else gamma
    try:
        from qtkit.data.dataset import _select_image_key
        from qtkit.data.spaces import image_shape

        space = mds.observation_space
        key = _select_image_key(space, None, observation_key)
        image = image_shape(space.spaces[key] if key is not None else space)
        if image is not None:
            frames = (int(mds.total_steps) + int(mds.total_episodes)) * int(np.prod(image))
            if _want_lazy(lazy, frames):
                return _minari_lazy(mds, key, metadata, g)
        return TrajectoryDataset.from_episodes(
            mds.iterate_episodes(), observation_space=space, action_space=mds.action_space,
            metadata=metadata, gamma=g, observation_key=key,
        )
    except DataError as e:
        raise DataError(f"Minari dataset {resolved!r}: {e}") from None


def _minari_lazy(mds: Any, key: str | None, metadata: dict[str, Any], gamma: float) -> TrajectoryDataset:
    """A Minari dataset whose frames stay in its ``main_data.hdf5`` (one h5py dataset per episode); the actions,
    rewards and flags are read."""
    import h5py

    from qtkit.data.frames import LazyFrames

    path = Path(str(mds.storage.data_path)) / "main_data.hdf5"
    if not path.is_file():
        raise DataError(
            f"lazy loading reads Minari's hdf5 backend ({path} is missing: this dataset uses another backend); "
            "load it with lazy=False."
        )
    f = h5py.File(path, "r")
    try:
        ids = [int(i) for i in mds.episode_indices]
        from qtkit.data.dataset import proprio_space_of
        from qtkit.data.spaces import flatten_observation, observation_parts

        space = mds.observation_space
        proprio_space = proprio_space_of(space, key) if key is not None else None
        sources, act, rew, term, trunc, lengths, prop = [], [], [], [], [], [], []
        for i in ids:
            group = f[f"episode_{i}"]
            obs = group["observations"]
            if proprio_space is not None:  # the vector parts are small: read them
                prop.append(flatten_observation(proprio_space, {k: obs[k][()] for k in proprio_space.spaces}))
            if key is not None:
                obs = obs[key]
            T = len(group["rewards"])
            if len(obs) != T + 1:
                raise DataError(f"episode {i} has {len(obs)} observations for {T} steps (expected {T + 1}).")
            sources.append(obs)
            act.append(np.asarray(group["actions"][()]).reshape(T, -1))
            rew.append(group["rewards"][()])
            term.append(group["terminations"][()])
            trunc.append(group["truncations"][()])
            lengths.append(T)
        lengths_arr = np.asarray(lengths, dtype=np.int64)
        src = np.repeat(np.arange(len(ids), dtype=np.int64), lengths_arr + 1)
        starts = np.concatenate([[0], np.cumsum(lengths_arr + 1)[:-1]])
        row = np.arange(int(src.size), dtype=np.int64) - np.repeat(starts, lengths_arr + 1)
        if proprio_space is not None:
            metadata = {**metadata, "observation_parts": observation_parts(space, key)}
        return TrajectoryDataset(
            LazyFrames(sources, src, row, keep=[f]), np.concatenate(act), np.concatenate(rew),
            np.concatenate(term), np.concatenate(trunc), lengths_arr,
            observation_space=space.spaces[key] if key is not None else space, action_space=mds.action_space,
            metadata={**metadata, **({"observation_key": key} if key is not None else {})}, gamma=gamma,
            episode_ids=ids, proprio=np.concatenate(prop) if prop else None,
        )
    except BaseException:
        f.close()
        raise


# -------------------------------------------------------------------------------------------- env
def register_robotics_envs() -> None:
    """Register gymnasium-robotics' envs (PointMaze...), without its import-time notice about Adroit
    reward versions (printed to stderr; it concerns envs qtkit does not use), and qtkit's D4RL maze2d
    evaluation envs ``qtkit/Maze2D-*-v0`` (:mod:`qtkit.data.makers.maze2d`)."""
    import contextlib
    import io
    import sys

    import gymnasium as gym

    if "gymnasium_robotics" in sys.modules:
        import gymnasium_robotics
    else:
        with contextlib.redirect_stderr(io.StringIO()):
            import gymnasium_robotics
    gym.register_envs(gymnasium_robotics)
    from qtkit.data.makers.maze2d import register_maze2d_envs

    register_maze2d_envs()


def _make_by_id(env_id: str, name: str, **kwargs: Any) -> Any:
    import gymnasium as gym

    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as first:
        try:  # maze / fetch / adroit envs are registered by gymnasium-robotics
            register_robotics_envs()
            return gym.make(env_id, **kwargs)
        except Exception:
            raise DataError(
                f"cannot make env {env_id!r} for dataset {name}: {first}. Install the package that registers it, "
                "or pass env_id=... to qtkit.data.load_dataset."
            ) from None


def make_env_for(dataset: TrajectoryDataset, **kwargs: Any) -> Any:
    """The evaluation env of ``dataset`` (see :meth:`TrajectoryDataset.make_env`)."""
    md = dataset.metadata
    described = " ".join(str(md.get(k) or "") for k in ("env_id", "env_spec", "eval_env_spec", "dataset_id"))
    if "gymnasium_robotics" in described or "maze" in described.lower():
        register_robotics_envs()  # quietly, before gym.make or minari import it
    if md.get("source") == "minari" and md.get("dataset_id"):
        try:
            import minari

            if md["dataset_id"] in minari.list_local_datasets():
                return minari.load_dataset(md["dataset_id"]).recover_environment(eval_env=True, **kwargs)
        except ValueError:  # no env_spec recorded: fall through to env_id / error
            pass
    for key in ("eval_env_spec", "env_spec"):
        text = md.get(key)
        if text:
            import gymnasium as gym
            from gymnasium.envs.registration import EnvSpec

            try:
                spec = EnvSpec.from_json(str(text))
            except Exception:
                continue
            return gym.make(spec, **kwargs)
    if md.get("env_id"):
        return _make_by_id(str(md["env_id"]), dataset.name, **kwargs)
    raise DataError(
        f"dataset {dataset.name} records no environment (no env_spec or env_id in its metadata), so make_env cannot "
        "build one. Pass env_id='Hopper-v5' (for example) to qtkit.data.load_dataset, or build the env yourself "
        "with gymnasium.make(...)."
    )
