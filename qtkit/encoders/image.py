"""Shared machinery of the image encoders (``conv``, ``timm``): frame checks, uint8 scaling, HWC -> NCHW and
DrQ's random-shift augmentation.

Frames arrive as ``[..., H, W, C]`` (HWC, as gymnasium and Minari store them), uint8 in [0, 255] or float in
[0, 1]; with ``frame_stack`` F > 1 as ``[..., F, H, W, C]`` (oldest first). :meth:`ImageEncoder.frames` turns
them into one float32 ``[N, F * C, H, W]`` batch in [0, 1] (uint8 is divided by 255, so a uint8 frame ``x`` and
the float frame ``x / 255`` give the same features; stacked frames are concatenated on the channel axis,
oldest first) and applies the random shift in training mode only (one shift for a whole stack).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from qtkit.encoders.base import Encoder
from qtkit.errors import ConfigError


def image_shape(obs_shape: Sequence[int], where: str) -> tuple[int, int, int]:
    """``obs_shape`` as ``(H, W, C)``; a clear :class:`ConfigError` when it is not one image's shape."""
    shape = tuple(int(s) for s in obs_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
            f"{where}: observations of shape {shape} are not images; image encoders take one frame [H, W, C] "
            f"(HWC, e.g. (64, 64, 3)). Use encoder 'flat' for vector observations."
        )
    return shape  # type: ignore[return-value]


def random_shift(images: Tensor, pad: int) -> Tensor:
    """DrQ's augmentation: pad ``images [N, C, H, W]`` by ``pad`` pixels (edge replication) and crop a random
    ``H x W`` window back, independently per image (integer shifts in [-pad, pad]; exact, no interpolation)."""
    if pad <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=images.device)
    rows = (torch.arange(h, device=images.device) + dy)[:, :, None]  # [N, H, 1]
    cols = (torch.arange(w, device=images.device) + dx)[:, None, :]  # [N, 1, W]
    batch = torch.arange(n, device=images.device)[:, None, None]
    # advanced indices around a slice: the indexed dims come first -> [N, H, W, C]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


class ImageEncoder(Encoder):
    """Base of the image encoders: ``obs_shape = (H, W, C)``, ``is_image``, ``augment`` (random-shift pad),
    ``proprio_dim`` (a proprioceptive vector concatenated to the image features by :meth:`with_proprio`)."""

    is_image = True
    augment: int = 0

    def with_proprio(self, features: Tensor, proprio: Tensor | None, leading: tuple[int, ...]) -> Tensor:
        """Image ``features [N, F]`` -> ``[*leading, F + proprio_dim]``: reshaped to the leading shape, with the
        (standardised) ``proprio [*leading, proprio_dim]`` concatenated when the encoder takes one."""
        self.check_proprio(proprio, leading)
        out = features.float().reshape(*leading, features.shape[-1])
        if self.proprio_dim:
            assert proprio is not None
            out = torch.cat([out, proprio.float()], dim=-1)
        return out

    def frames(self, observations: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """``[..., H, W, C]`` (``[..., F, H, W, C]`` with ``frame_stack`` F > 1) uint8 or float -> (``[N, F * C, H,
        W]`` float32 in [0, 1], shifted at random in training mode when ``augment > 0``; the leading shape). A wrong
        frame shape raises ``ShapeMismatchError``."""
        flat, leading = self.flatten_leading(observations)
        if flat.dtype == torch.uint8:
            images = flat.float().div_(255.0)
        else:
            images = flat.float()
        if self.frame_stack > 1:  # [N, F, H, W, C] -> [N, H, W, F * C]: frame-major channels, oldest first
            n, f, h, w, c = images.shape
            images = images.permute(0, 2, 3, 1, 4).reshape(n, h, w, f * c)
        images = images.permute(0, 3, 1, 2)
        if self.training and self.augment > 0:
            images = random_shift(images, self.augment)
        return images.contiguous(), leading
