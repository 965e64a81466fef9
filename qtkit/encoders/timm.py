"""``timm``: any timm image model as an encoder (a CNN or ViT trunk, pooled features, optional projection).

``timm.create_model(model, pretrained=pretrained, num_classes=0, in_chans=C)`` gives the pooled trunk
(``num_features`` wide); frames are scaled to [0, 1] (uint8 / 255), normalised with the mean and std of the
model's timm data config (``timm.data.resolve_model_data_config``; ImageNet's for most models) and fed at
their own size (no resize: 64 x 64 works for the default ``convnext_atto`` and for ``resnet18`` and
``efficientnet_b0``; a model that cannot take the frames fails at construction, in one sentence).
``features`` adds a Linear projection to that width (None: ``out_dim = num_features``). ``pretrained``
downloads weights through timm / the Hugging Face hub (off by default). DrQ's random shift (``augment``)
applies in training mode only.

Measured forward + backward, batch 32 of 64 x 64 x 3, one CPU thread (shared 2-core machine):
``mobilenetv3_small_050`` 63 ms, ``regnetx_002`` 106 ms, ``mobilenetv4_conv_small`` 115 ms,
``convnext_atto`` 144 ms, ``resnet10t`` 194 ms, ``resnet18`` 289 ms, ``efficientnet_b0`` 370 ms. The default,
``convnext_atto`` (3.4 M parameters), is fast and uses LayerNorm, not BatchNorm, so its features do not depend
on the batch nor differ between training and eval mode (apart from the augmentation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from torch import Tensor, nn

from qtkit.encoders.image import ImageEncoder, image_shape
from qtkit.errors import ConfigError
from qtkit.params import NonNegativeInt, OneOf, PositiveInt
from qtkit.registry import register


def timm_model_names() -> tuple[str, ...]:
    """Every model name ``timm.create_model`` knows (``encoder.model``)."""
    import timm

    return tuple(timm.list_models())


def channel_stats(values: Sequence[float], channels: int) -> list[float]:
    """A data config's per-channel mean or std for ``channels`` input channels: as is when the counts agree,
    tiled for stacked RGB frames (C a multiple of 3), else their average for every channel."""
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if channels % len(values) == 0:
        return values * (channels // len(values))
    return [sum(values) / len(values)] * channels


@register("encoder", "timm")
class TimmEncoder(ImageEncoder):
    """Any timm model (default convnext_atto, random init): uint8 or float frames [..., H, W, C] -> pooled features.

    ``features``: a Linear projection to that width (None: the model's ``num_features``). ``pretrained`` loads
    timm's weights (a download). Frames are normalised with the model's data-config mean/std and not resized.
    ``augment``: DrQ random shift, training mode only (0: off). ``frame_stack``: the last that many frames, on
    the channel axis (``in_chans = C * frame_stack``). A proprioceptive vector (``proprio_dim``, from
    the data) is concatenated after: ``out_dim = features (or num_features) + proprio_dim``.
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        model: Annotated[str, OneOf(timm_model_names)] = "convnext_atto",
        pretrained: bool = False,
        features: PositiveInt | None = None,
        augment: NonNegativeInt = 4,
        frame_stack: PositiveInt = 1,
        proprio_dim: NonNegativeInt = 0,
    ) -> None:
        super().__init__()
        import timm
        import timm.data

        where = "encoder 'timm'"
        h, w, c = image_shape(obs_shape, where)
        self.obs_shape = (h, w, c)
        self.frame_stack = int(frame_stack)
        c = c * self.frame_stack  # stacked frames are channels
        self.model, self.pretrained, self.features, self.augment = model, pretrained, features, augment
        try:
            self.net = timm.create_model(model, pretrained=pretrained, num_classes=0, in_chans=c)
        except Exception as error:  # unknown weights, no network, a model without in_chans...
            what = "load the pretrained weights of" if pretrained else "create"
            raise ConfigError(f"{where}: timm could not {what} model {model!r} with in_chans={c}: {error}") from error
        config = timm.data.resolve_model_data_config(self.net)
        self.register_buffer("mean", torch.tensor(channel_stats(config["mean"], c)).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(channel_stats(config["std"], c)).view(1, c, 1, 1), persistent=False)
        was_training = self.net.training
        try:  # the frames must fit the model as they are (no resize): try one, in eval mode (no BN statistics)
            with torch.no_grad():
                trunk = int(self.net.eval()(torch.zeros(1, c, h, w)).shape[-1])
        except Exception as error:
            raise ConfigError(
                f"{where}: model {model!r} cannot take {h} x {w} frames ({type(error).__name__}: {error}); use larger "
                f"frames or another model (frames are not resized)."
            ) from error
        finally:
            self.net.train(was_training)
        self.num_features = trunk
        self.proj = nn.Linear(trunk, features) if features is not None else None
        self.proprio_dim = int(proprio_dim)
        self.out_dim = (features if features is not None else trunk) + self.proprio_dim

    def forward(self, observations: Tensor, proprio: Tensor | None = None) -> Tensor:
        images, leading = self.frames(observations)
        out = self.net((images - self.mean) / self.std)
        if self.proj is not None:
            out = self.proj(out)
        return self.with_proprio(out, proprio, leading)
