"""``flat``: vector observations as they are (the default encoder)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from qtkit.encoders.base import Encoder
from qtkit.registry import register


@register("encoder", "flat")
class FlatEncoder(Encoder):
    """Vector observations unchanged: ``[..., obs_dim] -> [..., obs_dim]`` (no parameters)."""

    def __init__(self, obs_shape: Sequence[int], obs_dim: int) -> None:
        super().__init__()
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.out_dim = int(obs_dim)

    def forward(self, observations: Tensor, proprio: Tensor | None = None) -> Tensor:
        self.check_shape(observations)  # shapes only: no copy, no device sync
        if proprio is not None:
            self.check_proprio(proprio, tuple(observations.shape[:-1]))
        return observations
