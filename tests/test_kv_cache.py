"""Key/value-cache decoding: ``gpt2``'s ``forward_cached`` and ``ar-q``'s cached :meth:`decode`.

- ``forward_cached`` over any split of a sequence into calls == the full ``forward`` at those positions
  (no mask, all-valid, left-padded and holed histories, learned positions, several layers and heads);
- ``ar-q`` ``decode``/``greedy`` with the cache == the recompute path (one ``next_q`` pass per dimension):
  identical bins, q within 1e-5, for w = 1 and w > 1 with padding, D = 1, 2, 5, 1 and 2 heads, dueling;
- the ``ar-greedy`` sampler's ε / temperature choices consume its generator identically on both paths.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from qtkit.backbones.gpt2 import GPT2Backbone, KVCache
from qtkit.critics.ar_q import ARQCritic
from qtkit.errors import ConfigError, ShapeMismatchError
from qtkit.samplers.ar_greedy import ARGreedySampler
from qtkit.samplers.base import RolloutContext
from tests.conftest import token_sensitive

ATOL = 1e-5
W = 32
OBS = 5


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- backbone
def backbone(depth: int = 3, heads: int = 2, **params: Any) -> GPT2Backbone:
    """A gpt2 backbone with weights large enough that every token moves every later output."""
    return token_sensitive(GPT2Backbone(width=W, depth=depth, heads=heads, dropout=0.1, **params))


def masks(b: int, n: int) -> dict[str, torch.Tensor | None]:
    left = torch.ones(b, n, dtype=torch.bool)
    left[0, :4] = False  # a left-padded history
    left[1, :1] = False
    holed = left.clone()
    holed[2, 3] = False  # a hole in the middle (padding anywhere is ignored)
    holed[3, n - 1] = False  # a padded last token
    return {"none": None, "all-valid": torch.ones(b, n, dtype=torch.bool), "left": left, "holed": holed}


SPLITS = {"one-call": [9], "token-by-token": [1] * 9, "prefix-then-tokens": [4, 1, 1, 1, 1, 1], "mixed": [2, 3, 1, 3]}


def run_cached(model: GPT2Backbone, x: torch.Tensor, mask: torch.Tensor | None, split: list[int]) -> torch.Tensor:
    cache, outs, start = None, [], 0
    for n in split:
        h, cache = model.forward_cached(x[:, start:start + n], cache, None if mask is None else mask[:, start:start + n])
        assert h.shape == (x.shape[0], n, W) and cache.length == start + n
        outs.append(h)
        start += n
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("mask_kind", ["none", "all-valid", "left", "holed"])
@pytest.mark.parametrize(("depth", "heads", "max_len"), [(3, 2, 0), (1, 1, 0), (2, 4, 12)])
def test_forward_cached_equals_the_full_forward(split: str, mask_kind: str, depth: int, heads: int, max_len: int) -> None:
    model = backbone(depth, heads, max_len=max_len)
    x = torch.randn(5, 9, W, generator=torch.Generator().manual_seed(0))
    mask = masks(5, 9)[mask_kind]
    with torch.no_grad():
        full = model(x, mask)
        cached = run_cached(model, x, mask, SPLITS[split])
    assert torch.isfinite(cached).all()
    torch.testing.assert_close(cached, full, rtol=0, atol=ATOL)


def test_padded_tokens_content_is_ignored_and_the_cache_is_not_modified() -> None:
    model = backbone()
    x = torch.randn(5, 9, W, generator=torch.Generator().manual_seed(0))
    mask = masks(5, 9)["holed"]
    dirty = x.clone()
    dirty[~mask] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(run_cached(model, dirty, mask, [4, 1, 2, 2]), model(x, mask), rtol=0, atol=ATOL)
        _, cache = model.forward_cached(x[:, :4], None, mask[:, :4])
        keys = [k.clone() for k in cache.keys]
        a, _ = model.forward_cached(x[:, 4:5], cache, None)  # two continuations from the same cache
        b, _ = model.forward_cached(x[:, 4:5], cache, None)
    assert torch.equal(a, b) and all(torch.equal(k, k0) for k, k0 in zip(cache.keys, keys, strict=True))
    assert cache.mask is not None and torch.equal(cache.mask, mask[:, :4])


def test_cache_select_rows() -> None:
    model = backbone()
    x = torch.randn(5, 6, W, generator=torch.Generator().manual_seed(0))
    mask = masks(5, 6)["left"]
    with torch.no_grad():
        _, cache = model.forward_cached(x[:, :5], None, mask[:, :5])
        rows = torch.tensor([3, 0, 0])
        sub = cache.select(rows)
        assert isinstance(sub, KVCache) and sub.batch_size == 3 and sub.length == 5
        h, _ = model.forward_cached(x[rows, 5:], sub, None)
        torch.testing.assert_close(h, model(x, mask)[rows, 5:], rtol=0, atol=ATOL)


def test_forward_cached_rejects_what_it_cannot_do() -> None:
    x = torch.randn(2, 3, W)
    with pytest.raises(ConfigError, match="causal"):
        backbone(causal=False).forward_cached(x)
    model = backbone(max_len=4)
    _, cache = model.forward_cached(x)
    with pytest.raises(ConfigError, match="max_len"):
        model.forward_cached(x[:, :2], cache)
    with pytest.raises(ShapeMismatchError, match="rows"):
        model.forward_cached(torch.randn(3, 1, W), cache)
    with pytest.raises(ShapeMismatchError, match="mask"):
        model.forward_cached(x, None, torch.ones(2, 4, dtype=torch.bool))


def test_forward_cached_gradients_and_bf16() -> None:
    """Differentiable like forward (dropout 0 in train mode); bf16 autocast stays close to fp32."""
    model = backbone()
    model.train()
    for module in model.modules():  # dropout off: train-mode outputs are then deterministic
        if hasattr(module, "p"):
            module.p = 0.0
        if hasattr(module, "attn_dropout"):
            module.attn_dropout = 0.0
    x = torch.randn(4, 6, W, generator=torch.Generator().manual_seed(0), requires_grad=True)
    mask = masks(4, 6)["holed"]
    grads = []
    for cached in (False, True):
        x.grad = None
        out = run_cached(model, x, mask, [3, 1, 2]) if cached else model(x, mask)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=ATOL)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = run_cached(model, x.detach(), mask, [3, 1, 2])
    torch.testing.assert_close(out.float(), model(x.detach(), mask), rtol=0, atol=0.15)


# ----------------------------------------------------------------------------- ar-q decoding
def make_critic(act_dim: int, *, heads: int = 2, dueling: bool = False, window: int = 1, bins: int = 11,
                seed: int = 0, depth: int = 2) -> ARQCritic:
    """A random ar-q critic with large weights (decoding then depends on state, history and prefix)."""
    torch.manual_seed(seed)
    net = GPT2Backbone(width=W, depth=depth, heads=2, dropout=0.1)
    critic = ARQCritic(OBS, act_dim, [-1.0] * act_dim, [1.0] * act_dim, 0.9, net, bins=bins, state_window=window,
                       heads=heads, dueling=dueling, floor=0.0)
    with torch.no_grad():
        for name, p in critic.net.named_parameters():
            if "ln" not in name:
                p.normal_(0.0, 0.3)
        critic.update_target(1.0)
        for p in critic.target_net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return critic.eval()


def both_paths(critic: ARQCritic, fn: Any) -> tuple[Any, Any]:
    """``fn()`` with the key/value cache, then with the recompute path."""
    assert critic.use_kv_cache and critic.net.backbone.supports_kv_cache
    cached = fn()
    critic.use_kv_cache = False
    try:
        plain = fn()
    finally:
        del critic.use_kv_cache  # back to the class default
    return cached, plain


def states_and_mask(b: int, window: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    if window == 1:
        return torch.randn(b, OBS, generator=gen), None
    states = torch.randn(b, window + 1, OBS, generator=gen)  # one more than the window: the critic keeps the last w
    mask = torch.ones(b, window + 1, dtype=torch.bool)
    mask[: b // 3, : window] = False  # only the current state is real
    mask[b // 3: b // 2, :1] = False  # the history starts inside the window
    states[~mask] = float("nan")  # padding content must not matter
    return states, mask


@pytest.mark.parametrize("act_dim", [1, 2, 5])
@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize(("heads", "dueling"), [(1, False), (2, False), (2, True), (1, True)])
def test_cached_decoding_equals_the_recompute_path(act_dim: int, window: int, heads: int, dueling: bool) -> None:
    distinct = 0
    for seed in (0, 1, 2):
        critic = make_critic(act_dim, heads=heads, dueling=dueling, window=window, seed=seed)
        states, mask = states_and_mask(24, window, seed=seed + 1)
        (bins, q), (bins_plain, q_plain) = both_paths(critic, lambda c=critic, s=states, m=mask: c.greedy(s, m))
        assert bins.shape == (24, act_dim) and q.shape == (24,) and bins.dtype == torch.long
        assert torch.equal(bins, bins_plain)
        torch.testing.assert_close(q, q_plain, rtol=0, atol=ATOL)
        assert torch.isfinite(q).all()
        distinct = max(distinct, len(bins.unique(dim=0)))
    assert distinct > 4  # the comparison is not trivial: actions depend on the state


def test_cached_decoding_uses_one_pass_per_dimension_and_no_full_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    critic = make_critic(5, window=3)
    backbone_ = critic.net.backbone
    calls: dict[str, list[int]] = {"forward": [], "cached": []}
    forward, forward_cached = backbone_.forward, backbone_.forward_cached

    def spy_forward(tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls["forward"].append(tokens.shape[1])
        return forward(tokens, *args, **kwargs)

    def spy_cached(tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls["cached"].append(tokens.shape[1])
        return forward_cached(tokens, *args, **kwargs)

    monkeypatch.setattr(backbone_, "forward", spy_forward)
    monkeypatch.setattr(backbone_, "forward_cached", spy_cached)
    states, mask = states_and_mask(4, 3)
    critic.greedy(states, mask)
    assert calls == {"forward": [], "cached": [4, 1, 1, 1, 1]}  # w + 1 tokens, then one per dimension
    critic.use_kv_cache = False
    critic.greedy(states, mask)
    assert calls["forward"] == [4, 5, 6, 7, 8]


def test_single_state_and_one_dimensional_inputs() -> None:
    critic = make_critic(2)
    state = torch.randn(OBS)
    (bins, q), (bins_plain, q_plain) = both_paths(critic, lambda: critic.greedy(state))
    assert bins.shape == (1, 2) and torch.equal(bins, bins_plain)
    torch.testing.assert_close(q, q_plain, rtol=0, atol=ATOL)


def test_cached_decoding_of_the_target_net() -> None:
    """``_decode_cached`` works on any net (here the target): the recompute loop of that net agrees."""
    critic = make_critic(3, window=2)
    states, mask = states_and_mask(12, 2)
    hist, hist_mask, _ = critic._rows(states, 0, mask)
    with torch.no_grad():
        bins, q = critic._decode_cached(critic.target_net, hist, hist_mask, None)
        prefix = torch.zeros(12, 0, dtype=torch.long)
        net = critic.target_net
        for _ in range(3):
            qd = net(hist, hist_mask, net.action_tokens(net.bin_embeddings(prefix)), last_only=True).amin(0)
            prefix = torch.cat((prefix, qd.argmax(-1, keepdim=True)), dim=-1)
    assert torch.equal(bins, prefix)
    torch.testing.assert_close(q, qd.amax(-1), rtol=0, atol=ATOL)
    assert not torch.equal(bins, critic.greedy(states, mask)[0])  # a different net: a different action


def test_choose_callback_sees_the_same_q_on_both_paths() -> None:
    critic = make_critic(5, window=3, dueling=True)
    states, mask = states_and_mask(16, 3)
    seen: list[tuple[int, torch.Tensor]] = []

    def choose(q: torch.Tensor, dim: int) -> torch.Tensor:
        seen.append((dim, q.clone()))
        return (q.argmax(-1) + dim) % critic.bins  # not the argmax: the fed-back bin must be this one

    (bins, q), (bins_plain, q_plain) = both_paths(critic, lambda: critic.decode(states, mask, choose))
    assert torch.equal(bins, bins_plain)
    torch.testing.assert_close(q, q_plain, rtol=0, atol=ATOL)
    assert [d for d, _ in seen] == [0, 1, 2, 3, 4] * 2
    for (_, a), (_, b) in zip(seen[:5], seen[5:], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


@pytest.mark.parametrize(("epsilon", "temperature"), [(0.3, 0.0), (0.0, 0.5), (0.2, 2.0)])
@pytest.mark.parametrize("window", [1, 2])
def test_sampler_consumes_its_generator_identically(epsilon: float, temperature: float, window: int) -> None:
    critic = make_critic(4, window=window)
    gen = torch.Generator().manual_seed(5)
    E, K = 32, 4
    mask = torch.ones(E, K, dtype=torch.bool)
    mask[:10, :3] = False
    ctx = RolloutContext(states=torch.randn(E, K, OBS, generator=gen), actions=torch.zeros(E, K, 4),
                         timesteps=torch.zeros(E, K, dtype=torch.long), mask=mask, rtg=torch.zeros(E, 1, K))
    sampler = ARGreedySampler(epsilon=epsilon, temperature=temperature)

    def select() -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(11)
        actions, _ = sampler.select(None, critic, ctx, g)
        return actions, g.get_state()

    (actions, state), (actions_plain, state_plain) = both_paths(critic, select)
    assert torch.equal(actions, actions_plain) and torch.equal(state, state_plain)
    greedy, _ = ARGreedySampler().select(None, critic, ctx, torch.Generator())
    assert not torch.equal(actions, greedy)  # the randomness did something


def test_backbone_without_a_cache_takes_the_recompute_path() -> None:
    from tests.conftest import build_component

    xformer = build_component("backbone", {"type": "xformer", "width": W, "depth": 1, "heads": 2, "dropout": 0.0})
    assert not xformer.supports_kv_cache
    critic = ARQCritic(OBS, 3, [-1.0] * 3, [1.0] * 3, 0.9, xformer, bins=7, floor=0.0).eval()
    states = torch.randn(6, OBS)
    bins, _ = critic.greedy(states)
    for d in range(3):  # each chosen bin is the argmax of Q given its prefix
        assert torch.equal(critic.next_q(states, bins[:, :d]).argmax(-1), bins[:, d])


def test_cached_decoding_under_bf16_autocast() -> None:
    critic = make_critic(3, window=2)
    states, mask = states_and_mask(8, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bins, q = critic.greedy(states, mask)
    _, q32 = critic.greedy(states, mask)
    assert bins.shape == (8, 3) and torch.isfinite(q).all()
    assert (q - q32).abs().max() < 0.5
