"""The contract of the ``encoder`` kind: every registered encoder passes these tests.

An encoder maps observations ``[..., *obs_shape]`` (any leading dimensions) to features ``[..., out_dim]``
float32. Image encoders (``is_image``) take uint8 frames ``[..., H, W, C]`` or the same frames as floats in
[0, 1] and give the same features for both; their random augmentation runs in training mode only. Every
encoder round-trips its state through safetensors, trains (one step reaches and moves every parameter)
and rejects an observation of the wrong shape with :class:`ShapeMismatchError`.

Each check is a function of an encoder factory, so ``test_the_checks_catch_broken_encoders`` can show that it
fails on an encoder broken the way it guards against (a deliberately broken ``conv`` subclass per check).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

import qtkit
from qtkit.encoders import ConvEncoder, Encoder
from qtkit.encoders.image import random_shift
from qtkit.errors import ConfigError, ShapeMismatchError
from qtkit.registry import get_component
from tests.conftest import build_component

B, K = 3, 2
#: The cases each encoder is checked with: (id, spec, obs_shape). Small models and frames keep this fast; an
#: encoder registered without a case here gets its defaults with a vector (flat) or a 64 x 64 x 3 frame.
CASES: dict[str, list[tuple[str, dict[str, Any], tuple[int, ...]]]] = {
    "flat": [("flat", {}, (5,))],
    "conv": [("conv-64", {}, (64, 64, 3)), ("conv-32", {"features": 16, "channels": 8}, (32, 32, 3)),
             # frames + a proprioceptive vector of 3 ({"pixels", "state"} observations)
             ("conv-32-proprio", {"features": 16, "channels": 8, "proprio_dim": 3}, (32, 32, 3)),
             ("conv-32-stack3", {"features": 16, "channels": 8, "frame_stack": 3}, (32, 32, 3))],
    "timm": [
        ("timm-default-32", {}, (32, 32, 3)),  # convnext_atto: LayerNorm, no projection
        ("timm-resnet18-32", {"model": "resnet18", "features": 16}, (32, 32, 3)),  # BatchNorm, projection
        ("timm-proprio-stack2-32", {"model": "resnet18", "features": 16, "proprio_dim": 2, "frame_stack": 2},
         (32, 32, 3)),
    ],
}

Factory = Callable[[], Encoder]


def _cases() -> list[Any]:
    out = []
    for name in qtkit.list_components("encoder"):
        image = bool(getattr(get_component("encoder", name).target, "is_image", False))
        for case_id, spec, shape in CASES.get(name, [(name, {}, (64, 64, 3) if image else (5,))]):
            out.append(pytest.param((name, spec, shape), id=case_id))
    return out


def make(name: str, spec: dict[str, Any], shape: tuple[int, ...], seed: int = 0) -> Encoder:
    """Build encoder ``name`` for observations of ``shape``; ``spec["proprio_dim"]`` (a builder context parameter,
    from the data) gives it a proprioceptive vector of that width."""
    torch.manual_seed(seed)
    flat_size = 1
    for s in shape:
        flat_size *= s
    spec = dict(spec)
    proprio_dim = spec.pop("proprio_dim", 0)
    return build_component("encoder", {"type": name, **spec}, obs_shape=shape, obs_dim=flat_size,
                           proprio_dim=proprio_dim).eval()


@pytest.fixture(params=_cases())
def factory(request: pytest.FixtureRequest) -> Factory:
    name, spec, shape = request.param
    return lambda seed=0: make(name, spec, shape, seed)


def observations(encoder: Encoder, *leading: int, seed: int = 0) -> Tensor:
    """uint8 frames for an image encoder (``[*leading, F, H, W, C]`` with frame stacking), standard-normal floats
    for a vector one."""
    gen = torch.Generator().manual_seed(seed)
    shape = (*leading, *encoder.input_shape)
    if encoder.is_image:
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    return torch.randn(shape, generator=gen)


def proprio(encoder: Encoder, *leading: int, seed: int = 0) -> Tensor | None:
    """A standard-normal proprioceptive vector ``[*leading, proprio_dim]`` when the encoder takes one, else None."""
    if not encoder.proprio_dim:
        return None
    return torch.randn(*leading, encoder.proprio_dim, generator=torch.Generator().manual_seed(1000 + seed))


def inputs(encoder: Encoder, *leading: int, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """``(observations, proprio)`` for ``encoder(*inputs(...))``."""
    return observations(encoder, *leading, seed=seed), proprio(encoder, *leading, seed=seed)


# ----------------------------------------------------------------------------- the checks
def check_shapes(factory: Factory) -> None:
    """``[B]`` and ``[B, K]`` leading dims give ``[..., out_dim]`` float32; the ``[B, K]`` features are those of
    the ``B * K`` observations one by one (no mixing across the leading dims, in eval mode)."""
    encoder = factory()
    assert isinstance(encoder, Encoder) and isinstance(encoder.out_dim, int) and encoder.out_dim >= 1
    assert encoder.is_image == (len(encoder.obs_shape) == 3)
    with torch.no_grad():
        for leading in ((B,), (B, K)):
            out = encoder(*inputs(encoder, *leading))
            assert out.shape == (*leading, encoder.out_dim), (leading, tuple(out.shape))
            assert out.dtype == torch.float32, out.dtype
            assert bool(torch.isfinite(out).all())
        x, p = inputs(encoder, B, K, seed=1)
        flat_p = None if p is None else p.reshape(B * K, -1)
        flat = encoder(x.reshape(B * K, *encoder.input_shape), flat_p).reshape(B, K, -1)
        torch.testing.assert_close(encoder(x, p), flat, rtol=1e-5, atol=1e-6)


def check_uint8_and_float_agree(factory: Factory) -> None:
    """An image encoder gives the same features for uint8 frames ``x`` and float frames ``x / 255``."""
    encoder = factory()
    if not encoder.is_image:
        pytest.skip("vector observations: no uint8 frames")
    x, p = inputs(encoder, B, K)
    with torch.no_grad():
        a, b = encoder(x, p), encoder(x.float() / 255.0, p)
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(a, encoder(x.float(), p), atol=1e-3), "float frames must be read as [0, 1]"


def check_augmentation_only_in_training(factory: Factory) -> None:
    """Eval mode is deterministic; an image encoder with ``augment > 0`` gives different features on two
    training-mode calls (random shifts), and the same ones with ``augment = 0``."""
    encoder = factory()
    x, p = inputs(encoder, B, K)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x, p), encoder(x, p), rtol=0, atol=0)
        if not encoder.is_image:
            return
        encoder.train()
        assert encoder.augment > 0, "image encoders augment by default"
        assert not torch.equal(encoder(x, p), encoder(x, p)), "no random shift in training mode"
        encoder.augment = 0
        torch.testing.assert_close(encoder(x, p), encoder(x, p), rtol=0, atol=0)
        encoder.eval()
        torch.testing.assert_close(encoder(x, p), encoder(x, p), rtol=0, atol=0)


def check_state_dict_round_trip(factory: Factory, tmp_path: Path) -> None:
    """A ``state_dict`` saved with safetensors and loaded into a differently initialised encoder reproduces the
    features (eval mode)."""
    encoder = factory(0)
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    other = factory(123)
    other.load_state_dict(load_file(str(path)))
    x, p = inputs(encoder, B, K)
    with torch.no_grad():
        torch.testing.assert_close(other(x, p), encoder(x, p), rtol=0, atol=0)


def check_one_optimisation_step(factory: Factory) -> None:
    """Adam steps on a loss of the features (training mode): the first gives every trainable parameter a finite
    gradient and changes every parameter whose gradient is nonzero; by the second every parameter has had a
    nonzero gradient and has changed.

    (Two steps, not one: timm's ResNets zero-initialise the last BatchNorm scale of each residual block, so at
    the first step everything before it in the branch gets exactly zero gradient; ``conv`` and convnext reach
    every parameter at the first step.)"""
    encoder = factory().train()
    trainable = {n: p for n, p in encoder.named_parameters() if p.requires_grad}
    if not trainable:
        pytest.skip(f"{type(encoder).__name__} has no parameters")
    initial = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.Adam(trainable.values(), lr=1e-3)
    target = torch.randn(B, K, encoder.out_dim, generator=torch.Generator().manual_seed(5))
    reached: set[str] = set()
    for step in range(2):
        before = {n: p.detach().clone() for n, p in trainable.items()}
        loss = (encoder(*inputs(encoder, B, K, seed=step)) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        not_finite = [n for n, p in trainable.items() if p.grad is None or not bool(torch.isfinite(p.grad).all())]
        assert not_finite == [], f"step {step}: parameters with no or a non-finite gradient: {not_finite}"
        nonzero = {n for n, p in trainable.items() if bool((p.grad != 0).any())}
        reached |= nonzero
        optimizer.step()
        unchanged = [n for n in nonzero if torch.equal(trainable[n].detach(), before[n])]
        assert unchanged == [], f"step {step}: parameters the step did not change: {unchanged}"
    no_grad = [n for n in trainable if n not in reached]
    assert no_grad == [], f"trainable parameters with no gradient in two steps: {no_grad}"
    unchanged = [n for n, p in trainable.items() if torch.equal(p.detach(), initial[n])]
    assert unchanged == [], f"parameters two steps did not change: {unchanged}"


def wrong_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    if len(shape) != 3:
        return [(*shape[:-1], shape[-1] + 1)]
    h, w, c = shape
    out = [(h, w, c + 1), (h + 1, w, c), (c, h, w)]  # one channel too many, a row too many, CHW instead of HWC
    if h != w:
        out.append((w, h, c))  # height and width swapped (same number of elements)
    return out


def check_rejects_wrong_shapes(factory: Factory) -> None:
    """An observation of the wrong shape raises ShapeMismatchError naming the expected shape."""
    encoder = factory()
    stack = (encoder.frame_stack,) if encoder.frame_stack > 1 else ()
    shapes = [(*stack, *shape) for shape in wrong_shapes(encoder.obs_shape)]
    if stack:  # one frame too many or too few
        shapes += [(encoder.frame_stack + 1, *encoder.obs_shape), (encoder.frame_stack - 1, *encoder.obs_shape)]
    for shape in shapes:
        x = torch.zeros(B, *shape, dtype=torch.uint8 if encoder.is_image else torch.float32)
        try:
            encoder(x, proprio(encoder, B))
        except ShapeMismatchError as error:
            assert f"expected {tuple(encoder.input_shape)}" in str(error), str(error)
        except Exception as error:  # a failure deep inside (a reshape, a convolution) is not a clear error
            raise AssertionError(f"{shape}: {type(error).__name__} instead of ShapeMismatchError: {error}") from error
        else:
            raise AssertionError(f"observations of shape {shape} were accepted, expected {encoder.input_shape}")


# ----------------------------------------------------------------------------- every registered encoder
def test_output_shapes_and_dtype(factory: Factory) -> None:
    check_shapes(factory)


def test_uint8_and_float_frames_agree(factory: Factory) -> None:
    check_uint8_and_float_agree(factory)


def test_augmentation_only_in_training_mode(factory: Factory) -> None:
    check_augmentation_only_in_training(factory)


def test_state_dict_round_trips_through_safetensors(factory: Factory, tmp_path: Path) -> None:
    check_state_dict_round_trip(factory, tmp_path)


def test_one_optimisation_step(factory: Factory) -> None:
    check_one_optimisation_step(factory)


def test_rejects_wrong_observation_shapes(factory: Factory) -> None:
    check_rejects_wrong_shapes(factory)


def test_proprioceptive_vector(factory: Factory) -> None:
    check_proprio(factory)


def test_frame_stack(factory: Factory) -> None:
    check_frame_stack(factory)


def test_every_encoder_is_covered() -> None:
    """Every registered encoder is checked, and the built-in ones with their own small cases."""
    assert {"flat", "conv", "timm"} <= set(qtkit.list_components("encoder"))
    assert set(CASES) <= set(qtkit.list_components("encoder"))


def check_proprio(factory: Factory) -> None:
    """An encoder built with a proprioceptive vector (``proprio_dim`` P > 0) puts it, as given, in its last P
    features (``out_dim`` = image features + P), and refuses a missing or misshapen one with ShapeMismatchError;
    one built without refuses a vector."""
    encoder = factory()
    x, p = inputs(encoder, B, K)
    with torch.no_grad():
        if encoder.proprio_dim:
            out = encoder(x, p)
            torch.testing.assert_close(out[..., -encoder.proprio_dim:], p, rtol=0, atol=0)
            bad = [None, p[..., :-1], p[:, :1]]
        else:
            bad = [torch.zeros(B, K, 2)]
        for wrong in bad:
            with pytest.raises(ShapeMismatchError, match="proprio"):
                encoder(x, wrong)


def check_frame_stack(factory: Factory) -> None:
    """With ``frame_stack`` F > 1 every frame of the stack counts and their order too: changing only the oldest
    frame, or swapping the two newest, changes the features (eval mode)."""
    encoder = factory()
    if encoder.frame_stack == 1:
        pytest.skip("no frame stacking")
    x, p = inputs(encoder, B)
    oldest = x.clone()
    oldest[:, 0] = 255 - oldest[:, 0]
    swapped = x.clone()
    swapped[:, [-1, -2]] = x[:, [-2, -1]]
    with torch.no_grad():
        out = encoder(x, p)
        for name, other in (("the oldest frame", oldest), ("the order of the newest two", swapped)):
            assert not torch.allclose(encoder(other, p), out, atol=1e-5), f"changing {name} changed nothing"


# ----------------------------------------------------------------------------- image encoders' specifics
def test_image_encoders_reject_non_image_shapes_and_too_small_frames() -> None:
    for name in ("conv", "timm"):
        with pytest.raises(ConfigError, match="not images"):
            make(name, {}, (5,))
    with pytest.raises(ConfigError, match="at least 15 x 15"):
        make("conv", {}, (14, 14, 3))
    assert make("conv", {"depth": 2}, (8, 8, 1)).out_dim == 50  # a shallower net takes smaller frames
    with pytest.raises(ConfigError, match="cannot take 16 x 16 frames"):
        make("timm", {"model": "convnext_atto"}, (16, 16, 3))


def test_timm_out_dim_and_normalisation() -> None:
    """No projection: out_dim is timm's num_features; the data config's mean/std (ImageNet) are tiled over
    stacked RGB frames; a projection sets out_dim to ``features``."""
    encoder = make("timm", {}, (32, 32, 6))
    assert encoder.out_dim == encoder.net.num_features == 320 and encoder.proj is None
    torch.testing.assert_close(encoder.mean.flatten(), torch.tensor([0.485, 0.456, 0.406] * 2))
    assert "mean" not in encoder.state_dict()  # derived from the model's name, not saved
    assert make("timm", {"features": 7}, (32, 32, 3)).out_dim == 7


def test_random_shift_is_a_shifted_crop_of_the_padded_frame() -> None:
    """Every shifted image is the edge-padded image cropped at one offset in [0, 2 * pad] per axis (exact
    pixels, no interpolation), offsets vary across the batch, and pad 0 is the identity."""
    torch.manual_seed(0)
    pad = 2
    images = torch.rand(64, 2, 6, 7)
    torch.testing.assert_close(random_shift(images, 0), images, rtol=0, atol=0)
    shifted = random_shift(images, pad)
    assert shifted.shape == images.shape
    padded = torch.nn.functional.pad(images, (pad,) * 4, mode="replicate")
    offsets = set()
    for i in range(images.shape[0]):
        found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 if torch.equal(shifted[i], padded[i, :, dy:dy + 6, dx:dx + 7])]
        assert found, f"image {i} is no crop of its padded frame"
        offsets.add(found[0])
    assert len(offsets) > 10  # 25 possible offsets, 64 draws


# ----------------------------------------------------------------------------- the checks can fail
SMALL_CONV = {"features": 8, "channels": 4}


class _WrongWidth(ConvEncoder):
    def forward(self, observations: Tensor, proprio: Tensor | None = None) -> Tensor:
        return torch.cat([super().forward(observations), super().forward(observations)[..., :1]], -1)


class _Float64(ConvEncoder):
    def forward(self, observations: Tensor, proprio: Tensor | None = None) -> Tensor:
        return super().forward(observations).double()


class _MixesLeadingDims(ConvEncoder):
    def forward(self, observations: Tensor, proprio: Tensor | None = None) -> Tensor:
        out = super().forward(observations)
        return out - out.mean(0, keepdim=True) if out.ndim == 3 else out


class _NoScaling(ConvEncoder):
    def frames(self, observations: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        flat, leading = self.flatten_leading(observations)
        return flat.float().permute(0, 3, 1, 2).contiguous(), leading


class _AugmentsInEval(ConvEncoder):
    def frames(self, observations: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        images, leading = super().frames(observations)
        return random_shift(images, self.augment) if not self.training else images, leading


class _NeverAugments(ConvEncoder):
    def frames(self, observations: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        augment, self.augment = self.augment, 0
        try:
            return super().frames(observations)
        finally:
            self.augment = augment


class _UnsavedBuffer(ConvEncoder):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("offset", torch.randn(self.out_dim), persistent=False)

    def forward(self, observations: Tensor, proprio: Tensor | None = None) -> Tensor:
        return super().forward(observations) + self.offset


class _DetachedHead(ConvEncoder):
    def forward(self, observations: Tensor, proprio: Tensor | None = None) -> Tensor:
        images, leading = self.frames(observations)
        out = self.head(self.convs(images).detach())  # the convolutions never learn
        return torch.tanh(out).reshape(*leading, self.out_dim)


class _UncheckedShape(ConvEncoder):
    def flatten_leading(self, observations: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        return observations.reshape(-1, *self.obs_shape), tuple(observations.shape[:-3])


class _DropsProprio(ConvEncoder):
    def with_proprio(self, features: Tensor, proprio: Tensor | None, leading: tuple[int, ...]) -> Tensor:
        return super().with_proprio(features, None if proprio is None else torch.zeros_like(proprio), leading)


class _NewestFrameOnly(ConvEncoder):
    def frames(self, observations: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        last = observations[..., -1:, :, :, :].expand_as(observations)  # every slot holds the newest frame
        return super().frames(last)


class _UncheckedProprio(ConvEncoder):
    def check_proprio(self, proprio: Tensor | None, leading: tuple[int, ...]) -> None:
        return None


BROKEN = [
    (check_shapes, _WrongWidth), (check_shapes, _Float64), (check_shapes, _MixesLeadingDims),
    (check_uint8_and_float_agree, _NoScaling),
    (check_augmentation_only_in_training, _AugmentsInEval), (check_augmentation_only_in_training, _NeverAugments),
    (check_state_dict_round_trip, _UnsavedBuffer),
    (check_one_optimisation_step, _DetachedHead),
    (check_rejects_wrong_shapes, _UncheckedShape),
    (check_proprio, _DropsProprio), (check_proprio, _UncheckedProprio), (check_frame_stack, _NewestFrameOnly),
]


@pytest.mark.parametrize(("check", "cls"), BROKEN, ids=[f"{c.__name__}-{k.__name__[1:]}" for c, k in BROKEN])
def test_the_checks_catch_broken_encoders(check: Callable[..., None], cls: type, tmp_path: Path) -> None:
    """Each check fails on a conv encoder broken the way it guards against (16 x 20 frames: height != width),
    and passes on the intact one."""

    def factory_of(klass: type) -> Factory:
        def factory(seed: int = 0) -> Encoder:
            torch.manual_seed(seed)
            return klass(obs_shape=(16, 20, 3), **SMALL_CONV, proprio_dim=2 if check is check_proprio else 0,
                         frame_stack=3 if check is check_frame_stack else 1).eval()

        return factory

    args = (tmp_path,) if check is check_state_dict_round_trip else ()
    check(factory_of(ConvEncoder), *args)
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check(factory_of(cls), *args)
