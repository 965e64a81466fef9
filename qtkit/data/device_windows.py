"""Device-resident training windows: the dataset's arrays on the agent's device, windows gathered there.

:class:`DeviceWindowSampler` copies a :class:`~qtkit.data.TrajectoryDataset`'s flat arrays to a device once
(``train.device_windows``; vectors as float32, image frames kept uint8) and then draws each batch with torch index
arithmetic on that device: no numpy work and no host-to-device copy of the batch per step. Only the random numbers
are drawn on the host, from the same CPU ``torch.Generator`` and with the same calls as
:class:`~qtkit.data.windows.RandomSource` (``torch.randint(0, high, (B,))``, and for the ``inside`` scheme
``torch.rand((B,), dtype=float64)``), then copied (non-blocking, from pinned memory on CUDA): for the same generator
state the windows are exactly those of :func:`~qtkit.data.windows.sample_windows`, and the generator ends in the
same state. The index maths is the numpy sampler's, line for line (``searchsorted(..., right=True) - 1`` for the
episode, the same clamps), so every field of the :class:`~qtkit.data.Batch` is bit-identical.

Not for lazy image datasets (frames read from their file per window): there the frames are not in memory to copy;
:meth:`qtkit.agents.base.Agent.fit` keeps the host sampler for them. Device memory: the whole dataset (obs and
actions as float32, frames as uint8, the proprioceptive vectors as float32) once. Frame stacking
(``frame_stack``) and the proprioceptive vector (``batch.proprio``) follow the host sampler's rules.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from qtkit.data.batch import Batch
from qtkit.data.windows import check_window_arguments
from qtkit.errors import DataError

if TYPE_CHECKING:
    from qtkit.data.dataset import TrajectoryDataset

__all__ = ["DeviceWindowSampler"]


class DeviceWindowSampler:
    """Windows of ``K`` steps of ``dataset`` sampled on ``device`` (see the module docstring).

    ``rtg_scale`` and ``scheme`` are those of :func:`~qtkit.data.windows.sample_windows`. The return-to-go is
    divided by ``rtg_scale`` once here (float32, the same division the host sampler does per window).
    """

    def __init__(self, dataset: TrajectoryDataset, K: int, device: str | torch.device, rtg_scale: float = 1.0,
                 scheme: str = "uniform", frame_stack: int = 1) -> None:
        check_window_arguments(dataset, K, rtg_scale, frame_stack, scheme)
        scale = float(rtg_scale)
        self.frame_stack = int(frame_stack)
        if dataset.is_image and dataset.is_lazy:
            raise DataError(
                f"dataset {dataset.metadata.get('dataset_id') or dataset.name!r} keeps its frames in its file "
                f"({dataset.frames_storage}): they cannot be made device-resident. Load it with lazy=False (if the "
                "frames fit in memory) or train with --set device_windows=false."
            )
        self.device = torch.device(device)
        self.K, self.scheme, self.is_image = int(K), scheme, dataset.is_image
        self.obs_shape = tuple(dataset.obs_shape)

        def put(arr: np.ndarray) -> Tensor:
            with warnings.catch_warnings():  # the dataset's arrays are read-only; these tensors are only read
                warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
                return torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)

        lengths = np.asarray(dataset.episode_lengths, dtype=np.int64)
        offsets = np.asarray(dataset.episode_offsets, dtype=np.int64)
        self.lengths, self.offsets = put(lengths), put(offsets)
        self.total_steps = int(offsets[-1])  # = dataset.num_steps: the index of the zero row of the step arrays
        slots = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths + (self.K - 1), out=slots[1:])
        self.slots = put(slots)
        self.num_slots = int(slots[-1])
        self.obs = put(dataset._obs)  # vectors: float32 [rows + 1, obs] (last row zeros); images: uint8 [rows, H, W, C]
        self.zero_obs_row = int(self.obs.shape[0]) - 1  # vectors: the zero row; images: any row (zeroed after)
        self.actions = put(dataset._act)  # [N + 1, act], last row zeros
        self.rewards = put(dataset._rew)
        rtg = dataset._rtg if scale == 1.0 else dataset._rtg / np.float32(scale)
        self.rtg = put(rtg)
        self.returns = put(dataset._returns)
        self.terminals = put(dataset._term)
        # image + vector observations: the proprioceptive vectors [rows + 1, P] (last row zeros), rows as the frames'
        self.proprio = None if dataset._proprio is None else put(dataset._proprio)
        self.k = torch.arange(self.K, dtype=torch.int64, device=self.device)
        self.back = torch.arange(self.frame_stack - 1, -1, -1, dtype=torch.int64, device=self.device)  # F-1 .. 0

    def _to_device(self, values: Tensor) -> Tensor:
        """Host draws -> the device without a stream sync (pinned memory on CUDA)."""
        if self.device.type == "cuda":
            return values.pin_memory().to(self.device, non_blocking=True)
        return values.to(self.device)

    def starts(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(episode [B], first step [B], valid length [B])`` on the device: the host sampler's
        :func:`~qtkit.data.windows.sample_window_starts`, with the same draws from ``generator``."""
        B, K = int(batch_size), self.K
        if self.scheme == "uniform":
            u = self._to_device(torch.randint(0, self.num_slots, (B,), generator=generator, device=generator.device))
            episode = torch.searchsorted(self.slots, u, right=True) - 1
            s = u - self.slots[episode] - (K - 1)  # in [-(K-1), T-1]
            first = s.clamp(min=0)
            valid = torch.minimum(s + K, self.lengths[episode]) - first
            return episode, first, valid
        u = self._to_device(torch.randint(0, self.total_steps, (B,), generator=generator, device=generator.device))
        episode = torch.searchsorted(self.offsets, u, right=True) - 1
        T = self.lengths[episode]
        if self.scheme == "reference":
            first = u - self.offsets[episode]
        else:  # inside
            r = self._to_device(torch.rand((B,), generator=generator, device=generator.device, dtype=torch.float64))
            n_starts = (T - K + 1).clamp(min=1)
            first = torch.minimum((r * n_starts).to(torch.int64), n_starts - 1)
        valid = torch.clamp(T - first, max=K)
        return episode, first, valid

    def sample(self, batch_size: int, generator: torch.Generator, rows: slice | None = None) -> Batch:
        """``batch_size`` windows as a :class:`~qtkit.data.Batch` on the device (all ``[B, K, ...]``), equal to
        ``sample_windows(dataset, batch_size, K, generator, rtg_scale, scheme=scheme, rows=rows)`` moved to the
        device. ``rows`` (data-parallel ranks): draw all ``batch_size`` starts, gather only these rows."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}.")
        B, K = int(batch_size), self.K
        episode, first, valid = self.starts(B, generator)
        if rows is not None:
            episode, first, valid = episode[rows], first[rows], valid[rows]
            B = int(episode.shape[0])
            if B < 1:
                raise ValueError(f"rows={rows!r} selects no window of a batch of {batch_size}.")
        mask = self.k[None, :] < valid[:, None]  # [B, K]
        steps = first[:, None] + self.k[None, :]  # absolute step index [B, K]
        srow = torch.where(mask, self.offsets[episode][:, None] + steps, self.total_steps).reshape(-1)
        orow = (self.offsets[episode] + episode)[:, None] + steps  # episode i's observations start at offsets[i] + i
        o_idx = torch.where(mask, orow, self.zero_obs_row).reshape(-1)
        n_idx = torch.where(mask, orow + 1, self.zero_obs_row).reshape(-1)
        if self.is_image and self.frame_stack > 1:  # the last F frames, none before the episode's first
            first_row = (self.offsets[episode] + episode)[:, None, None]  # [B, 1, 1]
            F, shape = self.frame_stack, self.obs_shape
            keep = mask.reshape(B, K, 1, *([1] * len(shape)))
            inside = torch.where(mask, orow, first_row[:, :, 0])[..., None]  # padded positions: any row (zeroed)
            o_rows = torch.maximum(inside - self.back, first_row).reshape(-1)
            n_rows = torch.maximum(torch.where(mask[..., None], inside + 1, inside) - self.back, first_row).reshape(-1)
            observations = torch.where(keep, self.obs.index_select(0, o_rows).reshape(B, K, F, *shape), 0)
            next_observations = torch.where(keep, self.obs.index_select(0, n_rows).reshape(B, K, F, *shape), 0)
        elif self.is_image:
            keep = mask.reshape(B, K, *([1] * len(self.obs_shape)))
            observations = torch.where(keep, self.obs.index_select(0, o_idx).reshape(B, K, *self.obs_shape), 0)
            next_observations = torch.where(keep, self.obs.index_select(0, n_idx).reshape(B, K, *self.obs_shape), 0)
        else:
            observations = self.obs.index_select(0, o_idx).reshape(B, K, -1)
            next_observations = self.obs.index_select(0, n_idx).reshape(B, K, -1)
        proprio = next_proprio = None
        if self.proprio is not None:
            zero = int(self.proprio.shape[0]) - 1
            proprio = self.proprio.index_select(0, torch.where(mask, orow, zero).reshape(-1)).reshape(B, K, -1)
            next_proprio = self.proprio.index_select(0, torch.where(mask, orow + 1, zero).reshape(-1)).reshape(B, K, -1)
        return Batch(
            observations=observations,
            next_observations=next_observations,
            actions=self.actions.index_select(0, srow).reshape(B, K, -1),
            rewards=self.rewards.index_select(0, srow).reshape(B, K),
            rtg=self.rtg.index_select(0, srow).reshape(B, K),
            returns=self.returns.index_select(0, srow).reshape(B, K),
            timesteps=torch.where(mask, steps, 0),
            terminals=self.terminals.index_select(0, srow).reshape(B, K),
            mask=mask,
            proprio=proprio,
            next_proprio=next_proprio,
        )
