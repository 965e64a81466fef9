"""The contract of the ``backbone`` kind: every registered backbone passes these tests.

A backbone maps ``tokens [B, N, W]`` + validity ``mask [B, N]`` to ``[B, N, W]``; it is causal by
default, ignores whatever padded tokens hold, stays finite everywhere and round-trips its state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import qtkit
from qtkit.backbones.base import attention_mask, dropout
from qtkit.errors import ConfigError, ShapeMismatchError
from tests.conftest import build_component

NAMES = qtkit.list_components("backbone")
WIDTH = 32
B, N = 3, 7


def small(name: str, **params: object) -> torch.nn.Module:
    spec = {"type": name, "width": WIDTH, "depth": 2, "heads": 2, "dropout": 0.0, **params}
    return build_component("backbone", spec).eval()


def sensitive(model: torch.nn.Module) -> torch.nn.Module:
    """Re-initialise weight matrices at 1/sqrt(fan_in) so that every token visibly moves every output
    it may influence (GPT-2's std-0.02 init makes attention nearly uniform and tiny)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
    return model


def tokens(seed: int = 0, b: int = B, n: int = N) -> torch.Tensor:
    return torch.randn(b, n, WIDTH, generator=torch.Generator().manual_seed(seed))


def padding_mask() -> torch.Tensor:
    """Row 0 left-padded, row 1 right-padded, row 2 padded on both sides: ``[B, N]`` bool."""
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, :3] = False
    mask[1, 4:] = False
    mask[2, 0] = mask[2, -1] = False
    return mask


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_shape_dtype_and_width(name: str) -> None:
    model = small(name)
    assert model.width == WIDTH
    out = model(tokens())
    assert out.shape == (B, N, WIDTH) and out.dtype == torch.float32
    assert model(tokens(), padding_mask()).shape == (B, N, WIDTH)
    assert model(tokens(n=1), torch.ones(B, 1, dtype=torch.bool)).shape == (B, 1, WIDTH)


def test_rejects_wrong_shapes(name: str) -> None:
    model = small(name)
    with pytest.raises(ShapeMismatchError, match="tokens"):
        model(torch.randn(B, N, WIDTH + 1))
    with pytest.raises(ShapeMismatchError, match="mask"):
        model(tokens(), torch.ones(B, N + 1, dtype=torch.bool))


def test_rejects_heads_not_dividing_width(name: str) -> None:
    with pytest.raises(ConfigError, match="multiple of heads"):
        small(name, heads=3)


@pytest.mark.parametrize("with_mask", [False, True])
def test_causal(name: str, with_mask: bool) -> None:
    model = sensitive(small(name))
    mask = torch.ones(B, N, dtype=torch.bool) if with_mask else None
    x = tokens()
    base = model(x, mask)
    for t in (0, 3, N - 2):
        changed = x.clone()
        changed[:, t + 1:] = 100.0 * torch.randn_like(changed[:, t + 1:])
        out = model(changed, mask)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


def test_non_causal_sees_the_future(name: str) -> None:
    model = sensitive(small(name, causal=False))
    x = tokens()
    changed = x.clone()
    changed[:, -1] = torch.randn_like(changed[:, -1])
    assert not torch.allclose(model(x)[:, 0], model(changed)[:, 0])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("garbage", [1e6, 3e38, float("nan"), float("-inf")])
def test_padding_is_ignored(name: str, causal: bool, garbage: float) -> None:
    model = sensitive(small(name, causal=causal))
    mask = padding_mask()
    x = tokens()
    base = model(x, mask)
    assert torch.isfinite(base).all()
    dirty = x.clone()
    dirty[~mask] = garbage
    out = model(dirty, mask)
    assert torch.isfinite(out).all(), "padded positions must stay finite too"
    torch.testing.assert_close(out[mask], base[mask], rtol=0, atol=1e-5)


def test_padding_matches_the_unpadded_sequence(name: str) -> None:
    """A left- or right-padded row gives the valid tokens the same outputs as the bare sequence."""
    model = sensitive(small(name))
    x = tokens(b=1, n=4)
    bare = model(x)
    pad = torch.full((1, 3, WIDTH), 7.0)
    left = model(torch.cat([pad, x], 1), torch.tensor([[False] * 3 + [True] * 4]))[:, 3:]
    right = model(torch.cat([x, pad], 1), torch.tensor([[True] * 4 + [False] * 3]))[:, :4]
    torch.testing.assert_close(right, bare, rtol=0, atol=1e-5)
    torch.testing.assert_close(left, bare, rtol=0, atol=1e-5)


def test_fully_padded_row_is_finite(name: str) -> None:
    model = small(name)
    mask = padding_mask()
    mask[1] = False
    assert torch.isfinite(model(tokens(), mask)).all()


def test_backward_gives_finite_grads(name: str) -> None:
    model = small(name).train()
    x = tokens().requires_grad_()
    mask = padding_mask()
    model(x, mask)[mask].pow(2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert torch.isfinite(x.grad).all()
    assert x.grad[~mask].abs().max() == 0  # padded tokens get no gradient


def test_state_dict_round_trips_through_safetensors(name: str, tmp_path: Path) -> None:
    model = small(name)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.manual_seed(123)  # a different init
    other = small(name)
    other.load_state_dict(load_file(str(path)))
    x, mask = tokens(), padding_mask()
    torch.testing.assert_close(other(x, mask), model(x, mask), rtol=0, atol=0)


def test_eval_is_deterministic_train_with_dropout_is_not(name: str) -> None:
    model = small(name, dropout=0.5)
    x, mask = tokens(), padding_mask()
    torch.testing.assert_close(model(x, mask), model(x, mask), rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(x, mask), model(x, mask))


def test_bf16_autocast_is_close_to_fp32(name: str) -> None:
    model = small(name)
    x, mask = tokens(), padding_mask()
    ref = model(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=0.15)


def test_default_is_the_reference_gpt_size(name: str) -> None:
    """Defaults: 4 layers, width 256, 4 heads, MLP 1024: ~12 * 256² weights per layer."""
    model = build_component("backbone", name)
    assert model.width == 256
    n_params = sum(p.numel() for p in model.parameters())
    matrices = 4 * 12 * 256**2
    if name == "gpt2":  # + qkv/proj/MLP biases and two LayerNorms per layer, + the final LayerNorm
        assert n_params == matrices + 4 * 13 * 256 + 2 * 256
    else:
        assert abs(n_params - matrices) / matrices < 0.02


@pytest.mark.parametrize("split", [[N], [1] * N, [3, 1, 1, 2], [2, 5]])
@pytest.mark.parametrize("with_mask", [False, True])
def test_forward_cached_matches_forward(name: str, split: list[int], with_mask: bool) -> None:
    """A backbone that advertises ``supports_kv_cache`` decodes incrementally: ``forward_cached`` over any
    split of the tokens into calls gives ``forward``'s outputs (padded histories included)."""
    model = sensitive(small(name))
    assert isinstance(getattr(model, "supports_kv_cache", None), bool)
    if not model.supports_kv_cache:
        pytest.skip(f"{name} has no key/value cache")
    x, mask = tokens(), padding_mask() if with_mask else None
    with torch.no_grad():
        full = model(x, mask)
        cache, outs, start = None, [], 0
        for n in split:
            out, cache = model.forward_cached(x[:, start:start + n], cache, None if mask is None else mask[:, start:start + n])
            outs.append(out)
            start += n
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=1e-5)


def test_attention_mask_helper() -> None:
    mask = torch.tensor([[False, True, True], [True, True, False]])
    causal = attention_mask(mask, causal=True)[:, 0]
    assert causal.shape == (2, 3, 3)
    assert causal.diagonal(dim1=1, dim2=2).all()  # every query sees itself
    assert causal[0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    assert causal[1].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    full = attention_mask(mask, causal=False)[:, 0]
    assert full[1].tolist() == [[True, True, False], [True, True, False], [True, True, True]]


def test_gpt2_options() -> None:
    model = small("gpt2", max_len=N, activation="gelu_tanh", mlp_dim=48)
    assert model.blocks[0].mlp[0].out_features == 48
    assert model(tokens()).shape == (B, N, WIDTH)
    with pytest.raises(ConfigError, match="max_len"):
        model(tokens(n=N + 1))
    with pytest.raises(ConfigError, match="activation"):
        small("gpt2", activation="swish")


def test_xformer_options_pass_through() -> None:
    model = small("xformer", rotary=True, alibi=False, flash=False, extra={"ff_glu": True})
    assert model(tokens(), padding_mask()).shape == (B, N, WIDTH)
    assert model.layers.rotary_pos_emb is not None
    with pytest.raises(ConfigError, match="width"):
        small("xformer", extra={"dim": 64})
    with pytest.raises(ConfigError, match="rejected"):
        small("xformer", extra={"not_an_x_transformers_option": 1})
    # heads=1 with a non-64 width (x-transformers' own default dim_head would crash here)
    assert small("xformer", heads=1)(tokens()).shape == (B, N, WIDTH)


def test_importing_qtkit_does_not_import_x_transformers() -> None:
    import subprocess
    import sys

    code = "import sys, qtkit; qtkit.list_components('backbone'); assert 'x_transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


OPTIONS = [
    ("gpt2", {"max_len": N}),
    ("gpt2", {"activation": "gelu"}),
    ("xformer", {"rotary": True}),
    ("xformer", {"alibi": True}),
    ("xformer", {"flash": False}),
]


@pytest.mark.parametrize(("backbone", "options"), OPTIONS, ids=[f"{n}-{next(iter(o))}" for n, o in OPTIONS])
@pytest.mark.parametrize("causal", [True, False])
def test_options_keep_padding_invariance(backbone: str, options: dict[str, object], causal: bool) -> None:
    model = sensitive(small(backbone, causal=causal, **options))
    x, mask = tokens(), padding_mask()
    dirty = x.clone()
    dirty[~mask] = float("nan")
    base, out = model(x, mask), model(dirty, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[mask], base[mask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fast_cpu_dropout_matches_f_dropout_statistics(p: float) -> None:
    x = torch.ones(400, 500, requires_grad=True)
    y = dropout(x, p, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.02  # expectation preserved
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)), rtol=1e-4, atol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # gradient = the scaled mask
    assert dropout(x, p, training=False) is x and dropout(x, 0.0, training=True) is x
    assert not torch.equal(dropout(x, p, True), dropout(x, p, True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dropout(torch.ones(8, 8, dtype=torch.bfloat16), p, True).dtype == torch.bfloat16
