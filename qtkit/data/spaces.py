"""Observation flattening shared by datasets and evaluation, and a small JSON form of spaces.

Flattening follows ``gymnasium.spaces.flatten`` exactly: a ``Dict`` space is flattened in the
order of its keys as the space stores them (gymnasium sorts the keys of a dict it is built
from, so PointMaze/AntMaze give ``achieved_goal, desired_goal, observation``), a ``Tuple`` in
index order, a ``Box`` row-major, a ``Discrete`` as a one-hot vector. Unlike
``gymnasium.spaces.flatten`` the functions here also take a *batch* of observations (leading
dimensions are kept), e.g. a vector env's ``{key: [n_envs, ...]}``.

gymnasium is imported inside the functions so that importing ``qtkit.data`` stays light.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from qtkit.errors import DataError

__all__ = [
    "flat_layout",
    "flatten_observation",
    "image_key",
    "image_shape",
    "observation_parts",
    "space_from_json",
    "space_to_json",
]


def _leaf_batch_shape(arr: np.ndarray, event_shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    n = len(event_shape)
    if arr.ndim < n or tuple(arr.shape[arr.ndim - n:]) != tuple(event_shape):
        raise DataError(
            f"observation{where} has shape {tuple(arr.shape)}, which does not end with the space's shape "
            f"{tuple(event_shape)}; pass one observation of that shape or a batch [..., *{tuple(event_shape)}]."
        )
    return tuple(arr.shape[: arr.ndim - n])


def _flatten(space: Any, obs: Any, where: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Flatten ``obs`` under ``space``: (array [*batch, flatdim] float32, batch shape)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        if not isinstance(obs, dict):
            raise DataError(
                f"observation{where} is a {type(obs).__name__} but the observation space is a Dict with keys "
                f"{list(space.spaces)}; pass a dict (one observation or a batch per key)."
            )
        missing = [k for k in space.spaces if k not in obs]
        if missing:
            raise DataError(f"observation{where} has no key(s) {missing}; the space has keys {list(space.spaces)}.")
        parts = [_flatten(sub, obs[key], f"{where}[{key!r}]") for key, sub in space.spaces.items()]
    elif isinstance(space, spaces.Tuple):
        if not isinstance(obs, tuple | list) or len(obs) != len(space.spaces):
            raise DataError(f"observation{where} must be a tuple of {len(space.spaces)} parts for space {space}.")
        parts = [_flatten(sub, part, f"{where}[{i}]") for i, (sub, part) in enumerate(zip(space.spaces, obs))]
    elif isinstance(space, spaces.Discrete):
        arr = np.asarray(obs).astype(np.int64) - int(space.start)
        out = np.zeros((*arr.shape, int(space.n)), dtype=np.float32)
        np.put_along_axis(out, arr[..., None], 1.0, axis=-1)
        return out, tuple(arr.shape)
    elif isinstance(space, spaces.Box | spaces.MultiBinary):
        if isinstance(obs, dict):
            raise DataError(
                f"observation{where} is a dict (keys {list(obs)}) but the observation space is {space}; "
                "this dataset stores flat observations, so flatten them before passing them in."
            )
        arr = np.asarray(obs, dtype=np.float32)
        batch = _leaf_batch_shape(arr, tuple(space.shape), where)
        return arr.reshape(*batch, int(np.prod(space.shape, dtype=np.int64))), batch
    else:
        raise DataError(
            f"observation space {type(space).__name__} is not supported; qtkit flattens Box, Dict, Tuple, "
            "Discrete and MultiBinary observations."
        )
    batch = parts[0][1]
    for _, b in parts[1:]:
        if b != batch:
            raise DataError(
                f"observation{where}: the parts have different batch shapes ({batch} vs {b}); every key must "
                "carry the same leading (batch) dimensions."
            )
    return np.concatenate([p[0] for p in parts], axis=-1), batch


def flatten_observation(space: Any, obs: Any) -> np.ndarray:
    """Flatten one observation (-> ``[obs]``) or a batch (``[*batch, ...]`` -> ``[*batch, obs]``), float32.

    The order is ``gymnasium.spaces.flatten``'s (Dict: the space's key order); evaluation calls the
    same function, so a dataset's columns and an env's observations always line up.
    """
    if hasattr(obs, "detach") and hasattr(obs, "cpu"):  # a torch tensor
        obs = obs.detach().cpu().numpy()
    return _flatten(space, obs, "")[0]


def image_shape(space: Any) -> tuple[int, int, int] | None:
    """``(H, W, C)`` when ``space`` is an image space, a ``Box`` of dtype uint8 with three dimensions; else None.

    Image observations are kept uint8 ``[..., H, W, C]`` (HWC, as gymnasium and Minari store them) and never
    flattened to floats by a dataset (see :mod:`qtkit.data.dataset`).
    """
    from gymnasium import spaces

    if isinstance(space, spaces.Box) and np.dtype(space.dtype) == np.uint8 and len(space.shape) == 3:
        return (int(space.shape[0]), int(space.shape[1]), int(space.shape[2]))
    return None


def image_key(space: Any) -> str | None:
    """The key of the image part of a ``Dict`` space (``"pixels"`` when it is one of several images), else None."""
    from gymnasium import spaces

    if not isinstance(space, spaces.Dict):
        return None
    keys = [k for k, sub in space.spaces.items() if image_shape(sub) is not None]
    if not keys:
        return None
    return "pixels" if "pixels" in keys else str(keys[0])


def observation_parts(space: Any, key: str) -> list[list[Any]]:
    """The parts of a Dict observation that mixes image ``key`` with vector parts, in flattening order:
    ``[[name, size, role], ...]`` with ``role`` ``"image"`` (the frames, ``size = H * W * C``) or ``"proprio"``
    (a vector part, flattened; the proprioceptive vector is these parts concatenated in this order). E.g.
    ``{"pixels": Box(0, 255, (64, 64, 3), uint8), "state": Box(-inf, inf, (4,))}`` ->
    ``[["pixels", 12288, "image"], ["state", 4, "proprio"]]``. A second image part is a :class:`DataError`.
    """
    from gymnasium import spaces

    out: list[list[Any]] = []
    for name, sub in space.spaces.items():
        if name == key:
            out.append([str(name), int(spaces.flatdim(sub)), "image"])
        elif image_shape(sub) is not None:
            raise DataError(
                f"the observation space has two image parts ({key!r} and {name!r}); qtkit reads one image and "
                f"vector parts (e.g. {{'pixels', 'state'}})."
            )
        else:
            out.append([str(name), int(spaces.flatdim(sub)), "proprio"])
    return out


def split_flat_observation(flat: np.ndarray, parts: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``flat [..., D]`` (a Dict observation flattened in ``parts``' order, :func:`observation_parts`) ->
    (``frames [..., H * W * C]``, ``proprio [..., P]``): the image columns and the vector columns concatenated."""
    frames, proprio, start = None, [], 0
    for _, size, role in parts:
        piece = flat[..., start:start + int(size)]
        if role == "image":
            frames = piece
        else:
            proprio.append(piece)
        start += int(size)
    if frames is None or start != flat.shape[-1]:
        raise DataError(f"a flat observation of {flat.shape[-1]} columns does not match the parts {parts}.")
    return frames, np.concatenate(proprio, axis=-1) if proprio else flat[..., :0]


def flat_layout(space: Any) -> list[tuple[str, int]]:
    """``[(name, size), ...]``: which named part of the observation each run of flat columns holds.

    A Box gives ``[("", n)]``; a Dict gives its keys in flattening order, e.g.
    ``[("achieved_goal", 2), ("desired_goal", 2), ("observation", 4)]``.
    """
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        out: list[tuple[str, int]] = []
        for key, sub in space.spaces.items():
            out += [(f"{key}.{name}" if name else str(key), size) for name, size in flat_layout(sub)]
        return out
    if isinstance(space, spaces.Tuple):
        out = []
        for i, sub in enumerate(space.spaces):
            out += [(f"{i}.{name}" if name else str(i), size) for name, size in flat_layout(sub)]
        return out
    return [("", int(spaces.flatdim(space)))]


def column_name(space: Any, column: int) -> str:
    """The part of a flat observation that ``column`` belongs to, e.g. ``"'desired_goal'[1]"`` ('' for a Box)."""
    if space is None:
        return ""
    start = 0
    for name, size in flat_layout(space):
        if column < start + size:
            return f"{name!r}[{column - start}]" if name else ""
        start += size
    return ""


def _space_to_obj(space: Any) -> dict[str, Any]:
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": np.asarray(space.low, dtype=np.float64).reshape(-1).tolist(),
            "high": np.asarray(space.high, dtype=np.float64).reshape(-1).tolist(),
        }
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": [[k, _space_to_obj(s)] for k, s in space.spaces.items()]}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [_space_to_obj(s) for s in space.spaces]}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    raise DataError(f"cannot serialise space {space!r}; supported: Box, Dict, Tuple, Discrete, MultiBinary.")


def _space_from_obj(obj: dict[str, Any]) -> Any:
    from gymnasium import spaces

    kind = obj.get("type")
    if kind == "Box":
        shape = tuple(obj["shape"])
        dtype = np.dtype(obj["dtype"])
        cast = dtype if np.issubdtype(dtype, np.floating) else np.float64
        low = np.asarray(obj["low"], dtype=np.float64).astype(cast).reshape(shape)
        high = np.asarray(obj["high"], dtype=np.float64).astype(cast).reshape(shape)
        return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    if kind == "Dict":
        # a list of pairs keeps the stored order (gymnasium only sorts when given a dict)
        return spaces.Dict([(k, _space_from_obj(s)) for k, s in obj["spaces"]])
    if kind == "Tuple":
        return spaces.Tuple([_space_from_obj(s) for s in obj["spaces"]])
    if kind == "Discrete":
        return spaces.Discrete(int(obj["n"]), start=int(obj.get("start", 0)))
    if kind == "MultiBinary":
        return spaces.MultiBinary(obj["n"])
    raise DataError(f"unknown serialised space type {kind!r}.")


def space_to_json(space: Any) -> str:
    """A JSON string describing ``space`` (Box, Dict in its key order, Tuple, Discrete, MultiBinary)."""
    return json.dumps(_space_to_obj(space))


def space_from_json(text: str) -> Any:
    """Inverse of :func:`space_to_json`."""
    return _space_from_obj(json.loads(text))
