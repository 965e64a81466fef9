"""The encoder interface: one observation -> the state features that policies and critics consume.

An encoder maps observations ``[..., *obs_shape]`` (any leading dimensions: ``[B, K]`` windows, ``[E]``
environments) to features ``[..., out_dim]`` float32. Policies and critics are built with ``obs_dim =
encoder.out_dim``, so they never see the raw observation: ``flat`` (the default) passes a vector observation
through unchanged (``out_dim == obs_dim``; existing presets are bit-identical), image encoders take uint8
``[..., H, W, C]`` frames (HWC, as gymnasium and Minari store them) or floats already in [0, 1], and return
a learned embedding.

Guarantees every encoder keeps (``tests/test_contract_encoder.py`` checks them):

- the output is ``[..., out_dim]`` float32 for uint8 and float inputs alike (uint8 is scaled by 1/255 inside);
- random augmentation (``augment``) only in training mode: in eval mode the output is deterministic;
- a ``state_dict`` round trip reproduces the outputs; gradients reach every trainable parameter.

Context parameters (supplied by the builder, never set in a preset): ``obs_shape`` (one observation's
shape, ``(obs_dim,)`` for vectors), ``obs_dim`` (its flat size) and, for image encoders, ``proprio_dim`` (the
width P of a proprioceptive vector that comes with each frame, 0 without: Dict observations
``{"pixels", "state"}``; the encoder concatenates it, standardised by the agent, to its image features, so
``out_dim`` is the image features' width plus P).
"""

from __future__ import annotations

import abc

from torch import Tensor, nn


class Encoder(nn.Module, metaclass=abc.ABCMeta):
    """Base class of encoders: ``forward(observations [..., *obs_shape]) -> features [..., out_dim]``."""

    #: One observation's shape (``(obs_dim,)`` for a vector, ``(H, W, C)`` for an image).
    obs_shape: tuple[int, ...]
    #: Feature width: the ``obs_dim`` the policy and the critic are built with.
    out_dim: int
    #: Whether the observations are images (uint8 ``[H, W, C]``): the agent then keeps them uint8 until this
    #: encoder and does not standardise them with the dataset's mean/std.
    is_image: bool = False
    #: Width of the proprioceptive vector ``forward`` takes with each observation (0: none).
    proprio_dim: int = 0
    #: Frames per observation (image encoders' ``frame_stack``): with F > 1 ``forward`` takes the last F frames
    #: ``[..., F, H, W, C]`` (oldest first), and the agent's windows and rollouts supply them.
    frame_stack: int = 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape ``forward`` takes per position: ``obs_shape``, or ``(F, *obs_shape)`` with frame stacking."""
        return tuple(self.obs_shape) if self.frame_stack == 1 else (self.frame_stack, *self.obs_shape)

    @abc.abstractmethod
    def forward(self, observations: Tensor, proprio: Tensor | None = None) -> Tensor:
        """``observations [..., *input_shape]`` (uint8 or float), ``proprio [..., proprio_dim]`` (float, standardised;
        only when ``proprio_dim > 0``) -> ``features [..., out_dim]`` float32."""

    def check_proprio(self, proprio: Tensor | None, leading: tuple[int, ...]) -> None:
        """Raise :class:`qtkit.errors.ShapeMismatchError` unless ``proprio`` is ``[*leading, proprio_dim]`` (or None
        when ``proprio_dim`` is 0)."""
        from qtkit.errors import ShapeMismatchError

        if self.proprio_dim == 0:
            if proprio is not None and proprio.shape[-1] != 0:
                raise ShapeMismatchError(
                    f"encoder {type(self).__name__} was built without a proprioceptive vector (proprio_dim=0) but got "
                    f"one of width {proprio.shape[-1]}; build the agent from the dataset (qtkit.build(..., dataset=...))."
                )
            return
        if proprio is None or tuple(proprio.shape) != (*leading, self.proprio_dim):
            got = "none" if proprio is None else tuple(proprio.shape)
            raise ShapeMismatchError(
                f"encoder {type(self).__name__}: expected a proprioceptive vector {(*leading, self.proprio_dim)} with "
                f"the observations (the 'state' part of {{'pixels', 'state'}} observations), got {got}."
            )

    def check_shape(self, observations: Tensor) -> None:
        """Raise :class:`qtkit.errors.ShapeMismatchError` unless ``observations`` end in ``input_shape``."""
        shape = self.input_shape
        n = len(shape)
        if observations.dim() < n or tuple(observations.shape[-n:]) != shape:
            from qtkit.errors import ShapeMismatchError

            what = "one observation's shape" if self.frame_stack == 1 else f"the last {self.frame_stack} frames"
            raise ShapeMismatchError(
                f"encoder {type(self).__name__}: observations end in {tuple(observations.shape[-n:])}, expected "
                f"{shape} ({what})."
            )

    def flatten_leading(self, observations: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """``[..., *input_shape]`` -> (``[N, *input_shape]``, the leading shape) for encoders that take one batch
        dimension; undo with ``features.reshape(*leading, out_dim)``. A wrong shape raises ``ShapeMismatchError``."""
        self.check_shape(observations)
        shape = self.input_shape
        leading = tuple(observations.shape[: -len(shape)])
        return observations.reshape(-1, *shape), leading
