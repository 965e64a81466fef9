"""Statistics a ``TrajectoryDataset`` precomputes once: returns, return-to-go, timesteps, observation mean/std.

Inputs use the flat layout (E episodes of T_i steps, N = sum T_i): ``rewards [N]`` float64,
``lengths [E]`` int64, ``offsets [E+1]`` int64 (episode i's steps are rows
``offsets[i] .. offsets[i+1] - 1``), observations ``[N + E, obs]`` with ``obs_offsets [E+1]``
(episode i's o_0 .. o_T start at row ``obs_offsets[i] = offsets[i] + i``). Sums are in float64;
the dataset stores them as float32 (docs/algorithms.md §1).
"""

from __future__ import annotations

import numpy as np
import torch

#: added to the observation std (docs/algorithms.md §1)
OBS_STD_EPS = 1e-6

__all__ = [
    "OBS_STD_EPS",
    "episode_of_step",
    "episode_returns",
    "flat_discounted_returns",
    "observation_stats",
    "return_to_go",
    "timesteps",
]


def episode_of_step(lengths: np.ndarray) -> np.ndarray:
    """``[N]``: the episode index of every step."""
    return np.repeat(np.arange(len(lengths)), lengths)


def return_to_go(rewards: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[N]`` float64 undiscounted return-to-go ``sum_{k>=t} r_k`` within each episode."""
    N = len(rewards)
    suffix = np.zeros(N + 1, dtype=np.float64)
    suffix[:N] = np.cumsum(rewards[::-1])[::-1]
    return suffix[:N] - suffix[offsets[1:]][episode_of_step(lengths)]


def episode_returns(rewards: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[E]`` undiscounted episode returns (the sum of each episode's rewards, float64 for float64 rewards)."""
    return np.add.reduceat(rewards, offsets[:-1])


def timesteps(lengths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[N]`` int64 step index within the episode (0 .. T_i - 1)."""
    return np.arange(int(offsets[-1]), dtype=np.int64) - offsets[episode_of_step(lengths)]


def observation_stats(observations: np.ndarray, obs_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [obs], std [obs] + OBS_STD_EPS)`` float32 of the step observations o_0 .. o_{T-1} of every
    episode (the final observations excluded), computed in float64 from ``observations [N + E, obs]``."""
    step_obs = np.delete(observations, obs_offsets[1:] - 1, axis=0).astype(np.float64, copy=False)
    mean = step_obs.mean(axis=0).astype(np.float32)
    std = (step_obs.std(axis=0) + OBS_STD_EPS).astype(np.float32)
    return mean, std


def flat_discounted_returns(
    rewards: np.ndarray,
    terminations: np.ndarray,
    lengths: np.ndarray,
    offsets: np.ndarray,
    gamma: float,
    max_elements: int = 1 << 20,
) -> np.ndarray:
    """Per-step discounted returns ``[N]`` (float64) with ``qtkit.backups.functional.discounted_returns``.

    ``rewards [N]`` float64, ``terminations [N]`` bool. Episodes are sorted by length and processed
    in padded ``[rows, T_max]`` chunks of at most ``max_elements`` entries, so memory stays bounded
    and padding small.
    """
    from qtkit.backups.functional import discounted_returns

    out = np.empty(len(rewards), dtype=np.float64)
    order = np.argsort(-lengths, kind="stable")
    i = 0
    while i < len(order):
        t_max = int(lengths[order[i]])
        chunk = order[i: i + max(1, max_elements // t_max)]
        i += len(chunk)
        t = np.arange(t_max)
        mask = t[None, :] < lengths[chunk][:, None]
        idx = np.where(mask, offsets[chunk][:, None] + t[None, :], 0)
        r = torch.from_numpy(np.where(mask, rewards[idx], 0.0))
        term = torch.from_numpy(mask & terminations[idx])
        g = discounted_returns(r, term, torch.from_numpy(mask), gamma).numpy()
        out[idx[mask]] = g[mask]
    return out
