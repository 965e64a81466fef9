"""``conv``: the small RL CNN of DrQ / SAC-AE (Nature-DQN family) for image frames, fast on CPU.

``depth`` 3x3 convolutions of ``channels`` filters (the first with stride 2, the others stride 1), ReLU after
each, flatten, a Linear layer to ``features``, LayerNorm and (``tanh``, as in DrQ) tanh. The flatten size
comes from the frame size, so any ``H, W`` the convolutions fit works (>= 15 pixels with the default depth 4;
64 x 64 -> 25 x 25 x 32). DrQ's random-shift augmentation (``augment`` pixels, training mode only) is on by
default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qtkit.encoders.image import ImageEncoder, image_shape
from qtkit.errors import ConfigError
from qtkit.params import NonNegativeInt, PositiveInt
from qtkit.registry import register


def conv_output_size(size: int, depth: int) -> int:
    """Side of the feature map after one 3x3 stride-2 and ``depth - 1`` 3x3 stride-1 convolutions (no padding)."""
    return (size - 3) // 2 + 1 - 2 * (depth - 1)


@register("encoder", "conv")
class ConvEncoder(ImageEncoder):
    """Small RL CNN (DrQ / SAC-AE): uint8 or float frames [..., H, W, C] -> [..., features].

    ``depth`` 3x3 convolutions of ``channels`` filters (stride 2, then 1), ReLU, flatten, Linear to ``features``,
    LayerNorm, then tanh when ``tanh``. ``augment``: DrQ random shift by up to that many pixels (edge
    replication), in training mode only (0: off). ``frame_stack``: each observation is its last that many frames,
    stacked on the channel axis (``3 * frame_stack`` input channels for RGB). A proprioceptive vector
    (``proprio_dim``, from the data) is concatenated after: ``out_dim = features + proprio_dim``.
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        features: PositiveInt = 50,
        channels: PositiveInt = 32,
        depth: PositiveInt = 4,
        augment: NonNegativeInt = 4,
        tanh: bool = True,
        frame_stack: PositiveInt = 1,
        proprio_dim: NonNegativeInt = 0,
    ) -> None:
        super().__init__()
        where = "encoder 'conv'"
        h, w, c = image_shape(obs_shape, where)
        side_h, side_w = conv_output_size(h, depth), conv_output_size(w, depth)
        if min(side_h, side_w) < 1:
            smallest = 2 * (2 * (depth - 1) + 1) + 1
            raise ConfigError(
                f"{where}: frames of {h} x {w} are too small for {depth} convolutions (the feature map would be "
                f"{side_h} x {side_w}); with depth={depth} frames need at least {smallest} x {smallest} pixels, "
                f"or lower depth."
            )
        self.obs_shape = (h, w, c)
        self.features, self.channels, self.depth, self.augment, self.tanh = features, channels, depth, augment, tanh
        self.proprio_dim, self.frame_stack = int(proprio_dim), int(frame_stack)
        self.out_dim = features + self.proprio_dim
        layers: list[nn.Module] = [nn.Conv2d(c * self.frame_stack, channels, 3, stride=2), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():  # the flatten size, from a dummy pass (checks the arithmetic above)
            flat = int(self.convs(torch.zeros(1, c * self.frame_stack, h, w)).shape[1])
        assert flat == channels * side_h * side_w, (flat, channels, side_h, side_w)
        self.head = nn.Sequential(nn.Linear(flat, features), nn.LayerNorm(features))

    def forward(self, observations: Tensor, proprio: Tensor | None = None) -> Tensor:
        images, leading = self.frames(observations)
        out = self.head(self.convs(images))
        if self.tanh:
            out = torch.tanh(out)
        return self.with_proprio(out, proprio, leading)
