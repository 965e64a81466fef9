"""The training batch: windows of K consecutive steps, one episode per row."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """A batch of B windows of K steps. Padded positions (``mask`` False) hold zeros.

    observations       [B, K, obs]  raw (unstandardised) observation o_t, flattened, float32;
                                    image datasets: uint8 [B, K, H, W, C] (the encoder scales
                                    them to float on the device; ``to`` keeps the dtype)
    next_observations  [B, K, obs]  o_{t+1}, the observation after step t (exists for every
                                    valid step: episodes keep their final observation); uint8
                                    [B, K, H, W, C] for images
    actions            [B, K, act]  a_t
    rewards            [B, K]       r_t
    rtg                [B, K]       undiscounted return-to-go sum_{k>=t} r_k, divided by rtg_scale
    returns            [B, K]       discounted Monte-Carlo return G_t over the whole episode
    timesteps          [B, K]       absolute step index t within its episode (long)
    terminals          [B, K]       True where the MDP terminated after step t (bool)
    mask               [B, K]       True at valid positions (bool), contiguous per row
    proprio            [B, K, P]    the proprioceptive vector of o_t (image + vector observations,
                                    raw; None without), float32
    next_proprio       [B, K, P]    that of o_{t+1} (None without)
    """

    observations: Tensor
    next_observations: Tensor
    actions: Tensor
    rewards: Tensor
    rtg: Tensor
    returns: Tensor
    timesteps: Tensor
    terminals: Tensor
    mask: Tensor
    proprio: Tensor | None = None
    next_proprio: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def context(self) -> int:
        return int(self.mask.shape[1])

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        return Batch(**{name: value.to(device, non_blocking=non_blocking) for name, value in self.as_dict().items()})

    def pin_memory(self) -> Batch:
        return Batch(**{name: value.pin_memory() for name, value in self.as_dict().items()})

    def as_dict(self) -> dict[str, Tensor]:
        """The fields that hold tensors (``proprio``/``next_proprio`` only when present)."""
        return {f.name: value for f in dataclasses.fields(self) if (value := getattr(self, f.name)) is not None}
