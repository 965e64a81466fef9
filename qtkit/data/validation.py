"""Input checks for ``TrajectoryDataset``: array coercion, the flat layout's invariants, clear errors.

Shapes use the dataset's notation (E episodes of T_i steps, N = sum T_i): observations
``[N + E, obs]`` (each episode keeps its final observation), step arrays ``[N, ...]``,
``offsets [E+1]`` (episode i's steps are rows ``offsets[i] .. offsets[i+1] - 1``) and
``obs_offsets = offsets + arange(E + 1)`` (episode i's observations start at ``obs_offsets[i]``).
Every check raises :class:`qtkit.errors.DataError` (``check_gamma``: ``ValueError``) naming the
dataset, episode, step and column at fault; ``name`` is the dataset's name for messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from qtkit.data.spaces import column_name
from qtkit.errors import DataError

__all__ = [
    "as_1d",
    "as_2d",
    "as_flags",
    "as_frames",
    "as_numeric",
    "check_action_space",
    "check_episode",
    "check_episode_ids",
    "check_episode_lengths",
    "check_finite",
    "check_flags_at_ends",
    "check_gamma",
    "check_observation_space",
    "check_step_arrays",
    "describe_row",
    "episode_id_note",
    "first_bad_flag",
    "first_nonfinite",
    "first_nonnumeric",
    "get_field",
]


# ----------------------------------------------------------------------------------- coercion
def describe_row(arr: np.ndarray, index: int) -> str:
    """``row R`` (``row R, column C`` for a 2-D array) of flat position ``index`` in ``arr``."""
    if arr.ndim <= 1:
        return f"row {index}"
    row, col = divmod(index, int(np.prod(arr.shape[1:])) or 1)
    return f"row {row}, column {col}"


def first_nonnumeric(arr: np.ndarray) -> tuple[int, Any] | None:
    """(flat index, value) of the first entry of ``arr`` that is not a real number, or None.

    bool, integer and float arrays are numeric; strings, bytes and complex numbers never are (a string
    ``"1.5"`` is refused too: numbers stored as text are a broken file); an object array is checked entry by entry.
    """
    kind = arr.dtype.kind
    if kind in "biuf":
        return None
    flat = arr.reshape(-1)
    if kind != "O":
        return (0, flat[0].item()) if flat.size else None
    for i, value in enumerate(flat):
        if isinstance(value, bool | np.bool_):
            continue
        if isinstance(value, str | bytes):
            return i, value
        try:
            complex_value = complex(value)
        except (TypeError, ValueError):
            return i, value
        if complex_value.imag != 0:
            return i, value
    return None


def as_numeric(name: str, value: Any, where: str, fix: str = "") -> np.ndarray:
    """``value`` as a real-number array (object arrays of numbers become float64); else :class:`DataError`
    naming ``name``, ``where`` and the first bad row and value."""
    arr = np.asarray(value)
    bad = first_nonnumeric(arr)
    if bad is not None:
        index, item = bad
        raise DataError(
            f"{name}{where} are not numbers: dtype {arr.dtype}, {describe_row(arr, index)} holds {item!r}. "
            + (fix or f"Fix: store {name} as a float array (e.g. np.asarray(x, dtype=np.float32)) before loading.")
        )
    if arr.dtype.kind == "O":
        arr = arr.astype(np.float64)
    return arr


def as_2d(name: str, value: Any, where: str) -> np.ndarray:
    """``value`` as ``[rows, columns]``: ``[n]`` -> ``[n, 1]``, ``[n, d1, d2, ...]`` -> ``[n, d1*d2*...]``.

    ``name`` and ``where`` (e.g. ``" of episode 3"``) make the message for a scalar or a non-numeric array.
    """
    arr = as_numeric(name, value, where)
    if arr.ndim == 0:
        raise DataError(f"{name}{where} is a scalar; it must be an array with one row per step.")
    if arr.ndim == 1:
        return arr.reshape(-1, 1)
    return arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:])))


def as_frames(value: Any, shape: tuple[int, ...] | None, where: str) -> Any:
    """Image observations ``value`` as uint8 frames ``[n, H, W, C]``, checked; else a :class:`DataError`.

    ``shape`` is the space's ``(H, W, C)`` (None: taken from ``value``, which must then be ``[n, H, W, C]``);
    ``[n, H*W*C]`` rows are reshaped to it. uint8 arrays are used as they are (a numpy array is not copied, a
    ``numpy.memmap`` stays mapped); an ``h5py.Dataset`` or :class:`qtkit.data.frames.LazyFrames` stays in its
    file (it must be uint8). Other numbers are accepted only when every value is a whole number in [0, 255]
    (converted to uint8); floats in [0, 1] or above 255, NaN and fractions are refused, naming the row.
    """
    from qtkit.data.frames import LazyFrames

    what = f"image observations{where}"
    if type(value).__module__.startswith("h5py"):
        value = LazyFrames.of(value)
    if isinstance(value, LazyFrames):
        if value.dtype != np.uint8:
            raise DataError(
                f"{what} are stored as {value.dtype} in their file; frames read lazily must be uint8 [n, H, W, C] "
                "(load the dataset with lazy=False to convert them, or rewrite the file with uint8 frames)."
            )
        got = value.shape
    else:
        value = as_numeric("image observations", value, where,
                           fix="Fix: store frames as uint8 [n, H, W, C] (np.asarray(x, dtype=np.uint8)).")
        got = value.shape
    if shape is not None and tuple(got[1:]) != tuple(shape):
        size = int(np.prod(shape))
        if not isinstance(value, LazyFrames) and value.ndim == 2 and value.shape[1] == size:
            value = value.reshape(len(value), *shape)
        else:
            raise DataError(
                f"{what} have shape {tuple(got)} but the observation space is an image {tuple(shape)}; frames must "
                f"be [n, {', '.join(str(s) for s in shape)}] (rank 4, HWC) or flat [n, {size}]."
            )
    elif shape is None and len(got) != 4:
        raise DataError(
            f"{what} have shape {tuple(got)} (rank {len(got)}); image frames must be uint8 [n, H, W, C] (rank 4, "
            "channels last). A grayscale [n, H, W] array needs a channel axis: frames[..., None]."
        )
    if isinstance(value, LazyFrames) or value.dtype == np.uint8:
        return value
    flat = value.reshape(-1)
    if flat.dtype == np.bool_:
        bad = np.zeros(0, dtype=np.int64)
    else:
        bad = np.flatnonzero(~((flat >= 0) & (flat <= 255) & (flat == np.round(flat))))
    if bad.size:
        index = int(bad[0])
        item = flat[index].item()
        hint = (" They look like floats in [0, 1]: store np.round(x * 255).astype(np.uint8)." if
                np.issubdtype(value.dtype, np.floating) and np.nanmax(flat) <= 1.0 else "")
        raise DataError(
            f"{what} must be uint8 values in [0, 255] (dtype uint8, [n, H, W, C]); got dtype {value.dtype} with "
            f"{item!r} at {describe_row(value, index).split(',')[0]}.{hint} Fix: store the frames as uint8."
        )
    return value.astype(np.uint8)


def as_1d(name: str, value: Any, where: str) -> np.ndarray:
    """``value`` as one number per step ``[n]`` (``[n, 1]`` is accepted); any other shape is an error."""
    arr = as_numeric(name, value, where)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{name}{where} must have one value per step, got shape {tuple(arr.shape)}.")
    return arr


def first_bad_flag(arr: np.ndarray) -> tuple[int, Any] | None:
    """(index, value) of the first entry of a numeric flag array that is neither 0 nor 1 (NaN included), or None."""
    if arr.dtype == np.bool_:
        return None
    bad = ~((arr == 0) | (arr == 1))
    if not bad.any():
        return None
    index = int(np.flatnonzero(bad.reshape(-1))[0])
    return index, arr.reshape(-1)[index].item()


def flag_error(name: str, where: str, index: int, value: Any) -> DataError:
    """The :class:`DataError` for a flag that is neither 0/1 nor a bool."""
    return DataError(
        f"{name}{where} must be booleans or 0/1, but row {index} holds {value!r}. A value like 0.5 is neither "
        f"true nor false (qtkit does not guess: before, every non-zero became a flag). Fix: store {name} as booleans "
        f"(e.g. np.asarray(x) > 0.5 if that is what the values mean)."
    )


def as_flags(name: str, value: Any, where: str) -> np.ndarray:
    """``value`` as ``[n]`` bool flags, shapes as :func:`as_1d`: bools, or numbers that are exactly 0 or 1
    (anything else, e.g. 0.5 or 2, is a :class:`DataError` naming the row)."""
    arr = as_1d(name, value, where)
    if arr.dtype == np.bool_:
        return arr
    bad = first_bad_flag(arr)
    if bad is not None:
        raise flag_error(name, where, *bad)
    return arr != 0


def get_field(ep: Any, names: tuple[str, ...], index: int, required: bool = True) -> Any:
    """The first of ``names`` that episode ``ep`` (a mapping or an object) has; None if absent and not ``required``.

    ``index`` is the episode's position, for the message when a required field is missing.
    """
    for name in names:
        if isinstance(ep, Mapping):
            if name in ep:
                return ep[name]
        elif hasattr(ep, name):
            return getattr(ep, name)
    if required:
        present = sorted(ep) if isinstance(ep, Mapping) else [a for a in vars(ep) if not a.startswith("_")]
        raise DataError(
            f"episode {index} has no {names[0]!r} (fields present: {present}); an episode needs observations "
            "[T+1, ...], actions [T, ...] and rewards [T] (terminations/truncations [T] are optional)."
        )
    return None


def check_gamma(gamma: Any) -> float:
    """``gamma`` as a float in [0, 1]; ``ValueError`` for a bool, a non-number or a value outside."""
    if isinstance(gamma, bool) or not isinstance(gamma, int | float | np.floating | np.integer):
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}.")
    g = float(gamma)
    if not 0.0 <= g <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}.")
    return g


# ----------------------------------------------------------------------------------- layout
def first_nonfinite(arr: np.ndarray) -> tuple[int, int, float] | None:
    """(row, column, value) of the first NaN/inf in a 1-D ``[n]`` or 2-D ``[n, d]`` float array, or None.

    The column is -1 for a 1-D array; a non-float array has no NaN/inf.
    """
    if not np.issubdtype(arr.dtype, np.floating):
        return None
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    flat = int(np.flatnonzero(bad.reshape(-1))[0])
    if arr.ndim == 1:
        return flat, -1, float(arr[flat])
    row, col = divmod(flat, arr.shape[1])
    return row, col, float(arr[row, col])


def episode_id_note(ids: np.ndarray | None, ep: int) -> str:
    """``" (id X)"`` when episode ``ep``'s source id ``ids[ep]`` (``ids [E]``) differs from its index, else ``""``."""
    if ids is None or int(ids[ep]) == ep:
        return ""
    return f" (id {int(ids[ep])})"


def check_episode_lengths(episode_lengths: Any, name: str) -> np.ndarray:
    """``episode_lengths [E]`` as int64, checked: 1-D integers, E >= 1, every T_i >= 1."""
    lengths = np.asarray(episode_lengths)
    if lengths.ndim != 1 or not (np.issubdtype(lengths.dtype, np.integer) or lengths.size == 0):
        raise DataError(f"episode_lengths of {name} must be a 1-D integer array, got {lengths!r}.")
    lengths = lengths.astype(np.int64)
    if len(lengths) == 0:
        raise DataError(f"dataset {name} is empty: it has no episodes. Check the source (file, Minari id).")
    short = np.flatnonzero(lengths < 1)
    if short.size:
        raise DataError(
            f"episode {int(short[0])} of {name} has {int(lengths[short[0]])} steps; every episode needs at "
            "least one step (one action and two observations). Drop empty episodes before loading."
        )
    return lengths


def check_step_arrays(
    obs: np.ndarray,
    act: np.ndarray,
    rew: np.ndarray,
    term: np.ndarray,
    trunc: np.ndarray,
    lengths: np.ndarray,
    name: str,
) -> None:
    """Row counts and widths of the flat arrays against ``lengths [E]`` (sum N).

    ``obs [N + E, obs]``, ``act [N, act]``, ``rew``/``term``/``trunc [N]``; obs and act need a column.
    """
    E, N = len(lengths), int(lengths.sum())
    expected = {"observations": (len(obs), N + E), "actions": (len(act), N), "rewards": (len(rew), N),
                "terminations": (len(term), N), "truncations": (len(trunc), N)}
    wrong = {k: v for k, v in expected.items() if v[0] != v[1]}
    if wrong:
        got = ", ".join(f"{k} has {a} rows (expected {b})" for k, (a, b) in wrong.items())
        raise DataError(
            f"length mismatch in {name}: {got}. With {E} episodes of {N} steps in all, there must be N "
            "actions/rewards/terminations/truncations and N + E observations (each episode keeps its final "
            "observation)."
        )
    if act.shape[1] == 0 or obs.shape[1] == 0:
        raise DataError(f"{name}: observations and actions need at least one column, got {obs.shape}, {act.shape}.")


def check_episode_ids(episode_ids: Any, num_episodes: int, name: str) -> np.ndarray:
    """``episode_ids`` as ``[E]`` int64 (``0 .. E-1`` when None); one id per episode."""
    if episode_ids is None:
        return np.arange(num_episodes, dtype=np.int64)
    ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
    if len(ids) != num_episodes:
        raise DataError(f"{name}: {len(ids)} episode ids for {num_episodes} episodes.")
    return ids


def check_observation_space(observation_space: Any, obs_dim: int, name: str) -> None:
    """A gymnasium ``observation_space`` (None: nothing to check) must flatten to ``obs_dim`` values."""
    if observation_space is None:
        return
    from gymnasium import spaces

    if spaces.flatdim(observation_space) != obs_dim:
        raise DataError(
            f"{name}: the observation space {observation_space} flattens to {spaces.flatdim(observation_space)}"
            f" values but the observations have {obs_dim} columns."
        )


def check_finite(
    obs: np.ndarray,
    act: np.ndarray,
    rew: np.ndarray,
    offsets: np.ndarray,
    obs_offsets: np.ndarray,
    lengths: np.ndarray,
    ids: np.ndarray | None,
    observation_space: Any,
    name: str,
) -> None:
    """No NaN/inf in ``obs [N + E, obs]``, ``act [N, act]``, ``rew [N]``.

    The first one is reported with its episode (and source id from ``ids [E]``), step (noting the
    final observation) and column (with the Dict key from ``observation_space`` for observations).
    """
    checks = (("observations", obs, obs_offsets), ("actions", act, offsets), ("rewards", rew, offsets))
    for key, arr, offs in checks:
        bad = first_nonfinite(arr)
        if bad is None:
            continue
        row, col, value = bad
        ep = int(np.searchsorted(offs, row, side="right") - 1)
        step = row - int(offs[ep])
        final = " (the final observation)" if key == "observations" and step == lengths[ep] else ""
        part = ""
        if col >= 0:
            sub = column_name(observation_space, col) if key == "observations" else ""
            part = f", column {col}" + (f" = key {sub}" if sub else "")
        raise DataError(
            f"{key} of {name} contain {value} at episode {ep}{episode_id_note(ids, ep)}, step {step}{final}{part}. "
            "Clean the data (drop or repair that episode) before loading: qtkit does not train on NaN/inf."
        )


def check_flags_at_ends(
    term: np.ndarray,
    trunc: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    ids: np.ndarray | None,
    name: str,
) -> None:
    """``term``/``trunc [N]`` bool may be True only at an episode's last step (row ``offsets[i+1] - 1``)."""
    last = offsets[1:] - 1
    for key, flags in (("terminations", term), ("truncations", trunc)):
        inner = flags.copy()
        inner[last] = False
        if inner.any():
            row = int(np.flatnonzero(inner)[0])
            ep = int(np.searchsorted(offsets, row, side="right") - 1)
            raise DataError(
                f"{key}[{row - int(offsets[ep])}] of episode {ep}{episode_id_note(ids, ep)} in {name} is True before the "
                f"episode's last step ({int(lengths[ep]) - 1}); an episode ends at its first termination or "
                "truncation: split it there."
            )


def check_episode(
    index: int,
    obs: np.ndarray,
    act: np.ndarray,
    rew: np.ndarray,
    term: np.ndarray,
    trunc: np.ndarray,
    columns: tuple[int, int] | None,
) -> None:
    """One in-memory episode ``index`` of T = len(rew) >= 1 steps: ``obs [T+1, obs]``, ``act [T, act]``,
    ``term``/``trunc [T]``, and the same (obs, act) widths as the first episode (``columns``; None for it)."""
    T = len(rew)
    sizes = {"observations": len(obs), "actions": len(act), "terminations": len(term), "truncations": len(trunc)}
    want = {"observations": T + 1, "actions": T, "terminations": T, "truncations": T}
    if T < 1 or any(sizes[k] != want[k] for k in sizes):
        got = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise DataError(
            f"episode {index} has mismatched lengths: rewards {T}, {got}. An episode of T >= 1 steps needs T+1 "
            "observations (the final one kept), T actions, T rewards, T terminations/truncations."
        )
    if columns is not None and (obs.shape[1] != columns[0] or act.shape[1] != columns[1]):
        raise DataError(
            f"episode {index} has {obs.shape[1]} observation and {act.shape[1]} action columns but episode 0 has "
            f"{columns[0]} and {columns[1]}; every episode must share the same spaces."
        )


def check_action_space(action_space: Any, act_dim: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A gymnasium Box of ``act_dim`` dimensions with finite bounds, low < high: its ``(low, high)`` ``[act]`` float32."""
    from gymnasium import spaces

    if not isinstance(action_space, spaces.Box):
        raise DataError(
            f"{name}: action space {action_space} is not continuous (Box); qtkit's policies and critics "
            "need bounded continuous actions."
        )
    if int(np.prod(action_space.shape)) != act_dim:
        raise DataError(
            f"{name}: the action space {action_space} has {int(np.prod(action_space.shape))} dimensions but "
            f"the actions have {act_dim} columns."
        )
    low = np.asarray(action_space.low, dtype=np.float32).reshape(-1)
    high = np.asarray(action_space.high, dtype=np.float32).reshape(-1)
    if not (np.isfinite(low).all() and np.isfinite(high).all()) or (low >= high).any():
        raise DataError(
            f"{name}: the action space {action_space} must have finite bounds with low < high; pass "
            "action_low=..., action_high=... to qtkit.data.load_dataset (or action_space=Box(...))."
        )
    return low, high
