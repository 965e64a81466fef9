"""Writing a ``TrajectoryDataset`` to a D4RL-style ``.npz`` (read back by ``qtkit.data.loading``).

The file holds the transitions one row each (``observations, next_observations, actions [N, ...]``,
``rewards, terminals, timeouts [N]``), the reference scores and env id when known, and
``qtkit_metadata`` (JSON: metadata, gamma, spaces, episode ids). Image frames are written uint8
``[N, H, W, C]`` (observations and next observations, so the file is D4RL-style; a lazy dataset's frames
are read from its file to write them); a proprioceptive vector (image + vector observations) as
``proprio``/``next_proprio [N, P]``. Written uncompressed (the default), the file can be opened lazily:
``load_dataset(path, lazy=True)`` memory-maps the frames. It is written to a temporary file
in the target folder and then renamed over the target, so a reader never sees a partial file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qtkit.data.spaces import space_to_json
from qtkit.errors import DataError
from qtkit.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from qtkit.data.dataset import TrajectoryDataset

__all__ = ["space_json_or_none", "write_npz"]


def write_npz(dataset: TrajectoryDataset, path: str | os.PathLike[str], compress: bool = False) -> Path:
    """Write ``dataset`` to ``path`` (the body of :meth:`TrajectoryDataset.to_npz`; see it); returns the path."""
    path = Path(os.fspath(path))
    E = dataset.num_episodes
    obs_offsets = dataset.episode_offsets + np.arange(E + 1)
    obs = dataset.observations
    if dataset.is_image:  # uint8 [N, H, W, C], read row by row from a lazy dataset's file
        from qtkit.data.frames import take_frames

        step_rows = np.delete(np.arange(len(obs)), obs_offsets[1:] - 1)
        observations = take_frames(obs, step_rows)
        next_observations = take_frames(obs, step_rows + 1)
        if dataset.proprio is not None:  # image + vector observations: the proprioceptive rows likewise
            proprio_rows = {"proprio": dataset.proprio[step_rows], "next_proprio": dataset.proprio[step_rows + 1]}
    else:
        observations = np.delete(obs, obs_offsets[1:] - 1, axis=0)
        next_observations = np.delete(obs, obs_offsets[:-1], axis=0)
    arrays: dict[str, np.ndarray] = {
        "observations": observations,
        "next_observations": next_observations,
        "actions": dataset.actions,
        "rewards": dataset.rewards,
        "terminals": dataset.terminations,
        "timeouts": dataset.truncations,
    }
    if dataset.is_image and dataset.proprio is not None:
        arrays.update(proprio_rows)
    for key in ("ref_min_score", "ref_max_score"):
        if dataset.metadata.get(key) is not None:
            arrays[key] = np.asarray(float(dataset.metadata[key]))
    if dataset.env_id:
        arrays["env_id"] = np.asarray(dataset.env_id)
    extra = {
        "metadata": dataset.metadata,
        "gamma": dataset.gamma,
        # the space as given (None when the source had none), not the default Box of the property
        "observation_space": space_json_or_none(dataset._observation_space),
        "action_space": space_to_json(dataset.action_space),
        "episode_ids": dataset.episode_ids.tolist(),
    }
    arrays["qtkit_metadata"] = np.asarray(json.dumps(extra, default=str))
    atomic_write_bytes(path, lambda f: (np.savez_compressed if compress else np.savez)(f, **arrays))
    return path


def space_json_or_none(space: Any) -> str | None:
    """``space`` as gymnasium JSON, or None when it is None or cannot be written as JSON."""
    if space is None:
        return None
    try:
        return space_to_json(space)
    except DataError:
        return None
