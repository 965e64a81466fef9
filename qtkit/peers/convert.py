"""``TrajectoryDataset`` -> d3rlpy ``MDPDataset``: the same transitions, terminations and truncations kept apart."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["mdp_arrays", "to_mdp_dataset"]


def mdp_arrays(dataset: Any, keep_final_observation: bool = True) -> dict[str, np.ndarray]:
    """The flat arrays of d3rlpy's ``MDPDataset`` for ``dataset`` (numpy, no d3rlpy needed).

    Every episode becomes a block of rows ``o_t, a_t, r_t`` whose last row carries ``terminals = 1``
    (the MDP terminated: no bootstrap) or ``timeouts = 1`` (truncated: time limit or data cut), never both.
    d3rlpy drops the last row of a truncated episode from its transitions (it has no next observation), so
    with ``keep_final_observation`` (for Q-learning peers) a truncated episode gets one extra row holding
    its final observation ``o_T`` (zero action, zero reward): every one of the dataset's ``N`` transitions
    ``(o_t, a_t, r_t, o_{t+1})`` is then a d3rlpy transition. Sequence models (Decision Transformer) want
    ``keep_final_observation=False``: exactly the ``N`` steps, with no padding step in their windows (d3rlpy then
    drops a truncated one-step episode, which has no transition).
    """
    if getattr(dataset, "is_image", False):  # TrajectoryDataset-like inputs; older ones have no such attribute
        from qtkit.errors import ConfigError

        raise ConfigError(
            f"the d3rlpy peers take vector observations, but dataset {getattr(dataset, 'name', '?')!r} holds image "
            f"frames {tuple(dataset.obs_shape)}: converting them would copy every frame as float32. Compare pixel "
            "agents with qtkit's pixel presets (qt-gpt-pixels, qtransformer-pixels) instead."
        )
    lengths = np.asarray(dataset.episode_lengths, dtype=np.int64)
    offsets = np.asarray(dataset.episode_offsets, dtype=np.int64)[: len(lengths)]
    E = len(lengths)
    last = offsets + lengths - 1  # row of each episode's last step in actions/rewards
    terminated = np.asarray(dataset.terminations)[last].astype(bool)
    extra = (~terminated) if keep_final_observation else np.zeros(E, dtype=bool)
    rows = lengths + extra.astype(np.int64)  # rows per episode in the MDPDataset
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    total = int(rows.sum())
    obs_all = np.asarray(dataset.observations, dtype=np.float32)
    act_all = np.asarray(dataset.actions, dtype=np.float32)
    rew_all = np.asarray(dataset.rewards, dtype=np.float32)

    # observation rows: episode i's o_0 .. o_{T-1} (+ o_T) start at row offsets[i] + i of the flat observations
    ep_of_row = np.repeat(np.arange(E), rows)
    t_of_row = np.arange(total) - starts[ep_of_row]
    observations = obs_all[offsets[ep_of_row] + ep_of_row + t_of_row]
    real = t_of_row < lengths[ep_of_row]  # False on the extra final-observation rows
    step_index = offsets[ep_of_row] + np.minimum(t_of_row, lengths[ep_of_row] - 1)
    actions = np.where(real[:, None], act_all[step_index], 0.0).astype(np.float32)
    rewards = np.where(real, rew_all[step_index], 0.0).astype(np.float32)
    terminals = np.zeros(total, dtype=np.float32)
    timeouts = np.zeros(total, dtype=np.float32)
    ends = starts + rows - 1
    terminals[ends[terminated]] = 1.0
    timeouts[ends[~terminated]] = 1.0
    return {"observations": observations, "actions": actions, "rewards": rewards,
            "terminals": terminals, "timeouts": timeouts}


def to_mdp_dataset(dataset: Any, keep_final_observation: bool = True) -> Any:
    """A d3rlpy ``MDPDataset`` (continuous actions) holding ``dataset``'s episodes (see :func:`mdp_arrays`).

    Observations are the dataset's flattened float32 observations (Dict spaces already flattened).
    """
    from qtkit.peers.d3rlpy_runners import require_d3rlpy

    d3rlpy = require_d3rlpy()
    arrays = mdp_arrays(dataset, keep_final_observation=keep_final_observation)
    return d3rlpy.dataset.MDPDataset(
        observations=arrays["observations"],
        actions=arrays["actions"],
        rewards=arrays["rewards"].reshape(-1, 1),
        terminals=arrays["terminals"],
        timeouts=arrays["timeouts"],
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
        action_size=int(dataset.act_dim),
    )
