"""Property-based tests of the Bellman backups (hypothesis; profile "ci" from conftest).

The fast functions in ``qtkit.backups.functional`` and the registered components are checked
against the slow loops of ``tests/reference_backups.py`` and against algebraic properties of
the n-step target (ALGORITHMS.md §3, §6).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import qtkit
from qtkit.backups.functional import autoregressive_targets, discounted_returns, mc_lower_bound, n_step_targets
from tests.reference_backups import (
    make_batch,
    ref_autoregressive,
    ref_component,
    ref_default_next_valid,
    ref_discounted_returns,
    ref_n_step,
)

F64 = torch.float64
DTYPES = [torch.float64, torch.float32]
BACKUPS = qtkit.list_components("backup")
GARBAGE = [math.nan, math.inf, -math.inf, 1e30, -1e30, 3.0e38]



# ----------------------------------------------------------------------------- strategies
@dataclasses.dataclass
class Window:
    """A random ``[B, T]`` window (float64 values) with a gamma and an n."""

    rewards: Tensor
    next_values: Tensor
    terminals: Tensor
    mask: Tensor
    gamma: float
    n: int | None
    first_terminal: list[int | None]  # per row: a terminal inside the valid run (forced), or None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    def cast(self, dtype: torch.dtype) -> Window:
        return dataclasses.replace(self, rewards=self.rewards.to(dtype), next_values=self.next_values.to(dtype))

    def targets(self, **changes: Any) -> Tensor:
        w = dataclasses.replace(self, **changes)
        return n_step_targets(w.rewards, w.next_values, w.terminals, w.mask, w.gamma, w.n)

    def reference(self) -> Tensor:
        ref = ref_n_step(self.rewards, self.next_values, self.terminals, self.mask, self.gamma, self.n)
        return torch.tensor(ref, dtype=F64).reshape(self.shape)

    def scale(self) -> float:
        """A bound on the size of any target (for float tolerances)."""
        T = self.shape[1]
        return 1.0 + T * float(self.rewards.abs().max()) + float(self.next_values.abs().max())


def _rng(draw: st.DrawFn) -> np.random.Generator:
    # Arrays come from a drawn seed: drawing every element through hypothesis would make the
    # suite several times slower, and the structure (B, T, masks, terminals, gamma, n) that
    # hypothesis draws directly is what the edge cases live in.
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))


VALUE_STYLES = ("uniform", "integers", "constant")


def _array(rng: np.random.Generator, style: str, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    """Floats in [low, high]: uniform, rounded to integers (ties), or one constant."""
    values = np.asarray(rng.uniform(low, high, shape), dtype=np.float64).reshape(shape)
    if style == "integers":
        values = np.clip(np.round(values), low, high)
    elif style == "constant":
        values = np.full(shape, values.flat[0] if values.size else low)
    return torch.from_numpy(np.asarray(values, dtype=np.float64).reshape(shape))


@st.composite
def _values(draw: st.DrawFn, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    style = draw(st.sampled_from(VALUE_STYLES), label="style")
    return _array(_rng(draw), style, shape, low, high)


@st.composite
def _bools(draw: st.DrawFn, shape: tuple[int, ...]) -> Tensor:
    p = draw(st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]), label="density")
    return torch.from_numpy(_rng(draw).random(shape) < p)


@st.composite
def _junk(draw: st.DrawFn, shape: tuple[int, ...]) -> Tensor:
    """NaN, infinities and huge values."""
    return torch.from_numpy(np.asarray(_rng(draw).choice(np.array(GARBAGE), shape), dtype=np.float64))


def _runs(rng: np.random.Generator, B: int, T: int, padding: str) -> Tensor:
    """One contiguous valid run per row, ``[start, stop)``; padding on the given side(s)."""
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        start, stop = 0, T
        if padding in ("left", "both"):
            start = int(rng.integers(0, T + 1))
        if padding in ("right", "both"):
            stop = int(rng.integers(0, T + 1))
        start, stop = min(start, stop), max(start, stop)
        mask[b, start:stop] = True
    return mask


@st.composite
def windows(
    draw: st.DrawFn,
    *,
    max_b: int = 6,
    max_t: int = 12,
    contiguous: bool = True,
    terminals: str = "random",  # "random", "none" or "forced" (one per non-empty row)
    gammas: st.SearchStrategy[float] | None = None,
    ns: st.SearchStrategy[int | None] | None = None,
    reward_range: tuple[float, float] = (-10.0, 10.0),
    value_range: tuple[float, float] = (-50.0, 50.0),
) -> Window:
    """Random windows. Hypothesis draws B, T, gamma and n (where the edge cases live); padding,
    terminals and values come from one drawn seed, because every hypothesis draw costs ~0.1 ms
    here and a window has up to 72 positions."""
    B = draw(st.integers(1, max_b), label="B")
    T = draw(st.integers(1, max_t), label="T")
    if gammas is None:
        gamma = draw(st.sampled_from([0.0, 1.0, 0.99, "uniform"]), label="gamma")
    else:
        gamma = draw(gammas, label="gamma")
    if ns is None:
        n = draw(st.integers(0, T), label="n (0: None)") or None
    else:
        n = draw(ns, label="n")
    rng = _rng(draw)
    if gamma == "uniform":
        gamma = float(rng.uniform(0.0, 1.0))

    if contiguous:
        mask = _runs(rng, B, T, str(rng.choice(["none", "left", "right", "both"])))
    else:
        mask = torch.from_numpy(rng.random((B, T)) < rng.choice([0.3, 0.6, 0.9]))
    density = float(rng.choice([0.0, 0.05, 0.2, 0.5])) if terminals == "random" else 0.0
    term = torch.from_numpy(rng.random((B, T)) < density)
    first_terminal: list[int | None] = [None] * B
    for b in range(B):
        valid = mask[b].nonzero().flatten().tolist()
        if not valid:
            continue
        if terminals == "random" and rng.random() < 0.5:
            term[b, valid[-1]] = True  # episodes end on their last step
        if terminals == "forced":
            j = int(rng.choice(valid))
            term[b, j] = True
            first_terminal[b] = j
    style = str(rng.choice(VALUE_STYLES))
    rewards = _array(rng, style, (B, T), *reward_range)
    next_values = _array(rng, style, (B, T), *value_range)
    return Window(rewards, next_values, term, mask, gamma, n, first_terminal)


def assert_close(fast: Tensor, ref: Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    tol = (1e-10 if dtype == torch.float64 else 2e-6) * scale
    torch.testing.assert_close(fast.to(F64), ref.to(F64), rtol=0.0, atol=tol)


# ----------------------------------------------------------------------------- 1. reference
@pytest.mark.parametrize("dtype", DTYPES)
@given(w=windows())
def test_fast_functions_match_the_slow_reference(w: Window, dtype: torch.dtype) -> None:
    w = w.cast(dtype)
    fast = w.targets()
    assert fast.dtype == dtype and fast.shape == w.mask.shape
    assert_close(fast, w.reference(), dtype, w.scale())

    G = discounted_returns(w.rewards, w.terminals, w.mask, w.gamma)
    assert G.dtype == dtype
    ref = torch.tensor(ref_discounted_returns(w.rewards, w.terminals, w.mask, w.gamma), dtype=F64).reshape(w.shape)
    assert_close(G, ref, dtype, w.scale())


@given(w=windows(contiguous=False))
def test_n_step_matches_reference_on_any_mask(w: Window) -> None:
    """Beyond the contract (masks are contiguous): gaps split a row into independent runs."""
    assert_close(w.targets(), w.reference(), F64, w.scale())


# ----------------------------------------------------------------------------- 2. special cases
@given(w=windows(), data=st.data())
def test_special_cases(w: Window, data: st.DataObject) -> None:
    zero = torch.zeros((), dtype=F64)
    # n = 1 is the TD target r + gamma (1 - term) V
    td = torch.where(w.mask, w.rewards + w.gamma * (~w.terminals).to(F64) * w.next_values, zero)
    assert_close(w.targets(n=1), td, F64, w.scale())
    # no limit is n = T (and any n > T)
    T = w.shape[1]
    unlimited = w.targets(n=None)
    assert_close(w.targets(n=T), unlimited, F64, w.scale())
    assert_close(w.targets(n=T + 7), unlimited, F64, w.scale())
    # gamma = 0 keeps the rewards only
    rewards = torch.where(w.mask, w.rewards, zero)
    assert torch.equal(w.targets(gamma=0.0), rewards)
    assert torch.equal(discounted_returns(w.rewards, w.terminals, w.mask, 0.0), rewards)
    # the Monte-Carlo lower bound is the elementwise max
    returns = data.draw(_values(w.shape, -100, 100))
    bounded = mc_lower_bound(w.targets(), returns)
    assert (bounded >= returns).all() and (bounded >= w.targets()).all()
    assert ((bounded == returns) | (bounded == w.targets())).all()


# ----------------------------------------------------------------------------- 3, 4. recurrences
@given(w=windows(ns=st.one_of(st.none(), st.integers(2, 12))))
def test_recurrences(w: Window) -> None:
    # y^(n)_t = r_t + gamma y^(n-1)_{t+1} where t+1 is valid and t is not terminal
    longer = w.targets()
    shorter = w.targets(n=None if w.n is None else w.n - 1)
    continues = w.mask[:, :-1] & w.mask[:, 1:] & ~w.terminals[:, :-1]
    expected = w.rewards[:, :-1] + w.gamma * shorter[:, 1:]
    assert_close(longer[:, :-1][continues], expected[continues], F64, w.scale())

    # no bootstrap value and no limit: the discounted returns...
    G = discounted_returns(w.rewards, w.terminals, w.mask, w.gamma)
    assert_close(w.targets(next_values=torch.zeros_like(w.next_values), n=None), G, F64, w.scale())
    # ...which satisfy G_t = r_t + gamma (1 - term_t) G_{t+1} (G_{t+1} = 0 past the valid run)
    nxt = torch.cat([G[:, 1:], torch.zeros_like(G[:, :1])], dim=1)
    nxt_valid = torch.cat([w.mask[:, 1:], torch.zeros_like(w.mask[:, :1])], dim=1)
    carry = (nxt_valid & ~w.terminals).to(F64)
    expected = torch.where(w.mask, w.rewards + w.gamma * carry * nxt, torch.zeros((), dtype=F64))
    assert_close(G, expected, F64, w.scale())


# ----------------------------------------------------------------------------- 5. linearity, monotonicity
@given(w=windows(), data=st.data())
def test_linear_and_monotone(w: Window, data: st.DataObject) -> None:
    r2 = data.draw(_values(w.shape, -10, 10))
    v2 = data.draw(_values(w.shape, -50, 50))
    a = data.draw(st.sampled_from([0.0, 1.0, -1.0, 2.5, -0.3]))
    b = data.draw(st.sampled_from([0.0, 1.0, -2.0, 0.7]))
    base = w.targets()
    combined = w.targets(rewards=a * w.rewards + b * r2, next_values=a * w.next_values + b * v2)
    expected = a * base + b * w.targets(rewards=r2, next_values=v2)
    assert_close(combined, expected, F64, 10 * w.scale())

    # non-decreasing in rewards and in next values (gamma >= 0)
    dr = data.draw(_values(w.shape, 0, 5))
    dv = data.draw(_values(w.shape, 0, 5))
    tol = 1e-12 * w.scale()
    assert (w.targets(rewards=w.rewards + dr) >= base - tol).all()
    assert (w.targets(next_values=w.next_values + dv) >= base - tol).all()
    assert (w.targets(rewards=w.rewards + dr, next_values=w.next_values + dv) >= base - tol).all()
    G = discounted_returns(w.rewards, w.terminals, w.mask, w.gamma)
    assert (discounted_returns(w.rewards + dr, w.terminals, w.mask, w.gamma) >= G - tol).all()


# ----------------------------------------------------------------------------- 6. padding invariance
@given(w=windows(), dtype=st.sampled_from(DTYPES), data=st.data())
def test_padding_never_leaks(w: Window, dtype: torch.dtype, data: st.DataObject) -> None:
    """NaN, inf and huge values (and any terminal flag) at invalid positions change nothing."""
    w = w.cast(dtype)
    junk_r = data.draw(_junk(w.shape)).to(dtype)
    junk_v = data.draw(_junk(w.shape)).to(dtype)
    junk_term = data.draw(_bools(w.shape))
    dirty = dict(
        rewards=torch.where(w.mask, w.rewards, junk_r),
        next_values=torch.where(w.mask, w.next_values, junk_v),
        terminals=torch.where(w.mask, w.terminals, junk_term),
    )
    clean = w.targets()
    out = w.targets(**dirty)
    assert out.isfinite().all()
    assert torch.equal(out, clean)
    assert (out[~w.mask] == 0).all()
    G = discounted_returns(w.rewards, w.terminals, w.mask, w.gamma)
    G_dirty = discounted_returns(dirty["rewards"], dirty["terminals"], w.mask, w.gamma)
    assert G_dirty.isfinite().all() and torch.equal(G, G_dirty)


# ----------------------------------------------------------------------------- 7. terminals
@given(w=windows(terminals="forced"), data=st.data())
def test_nothing_after_a_terminal_counts(w: Window, data: st.DataObject) -> None:
    """Rewards after a terminal step j, and every next value from j on, never reach t <= j."""
    clean = w.targets()
    G = discounted_returns(w.rewards, w.terminals, w.mask, w.gamma)
    B, T = w.shape
    after = torch.zeros(B, T, dtype=torch.bool)  # k > j
    from_j = torch.zeros(B, T, dtype=torch.bool)  # k >= j
    before = torch.zeros(B, T, dtype=torch.bool)  # t <= j
    for b, j in enumerate(w.first_terminal):
        if j is not None:
            after[b, j + 1 :] = True
            from_j[b, j:] = True
            before[b, : j + 1] = True
    junk = data.draw(_junk(w.shape))
    rewards = torch.where(after, junk, w.rewards)
    next_values = torch.where(from_j, junk.flip(1), w.next_values)
    out = w.targets(rewards=rewards, next_values=next_values)
    keep = before & w.mask
    assert out[keep].isfinite().all()
    assert torch.equal(out[keep], clean[keep])
    G_out = discounted_returns(rewards, w.terminals, w.mask, w.gamma)
    assert torch.equal(G_out[keep], G[keep])


# ----------------------------------------------------------------------------- 8. bounds
@given(
    w=windows(gammas=st.floats(0.0, 0.99), reward_range=(0.0, 1.0), value_range=(0.0, 1.0)),
    with_terminals=st.booleans(),
    data=st.data(),
)
def test_targets_stay_in_the_value_interval(w: Window, with_terminals: bool, data: st.DataObject) -> None:
    """Rewards in [a, b], values in [a, b] / (1 - gamma) give targets in that interval.

    A terminal step bootstraps from an absorbing state of value 0, so with terminals the
    interval must contain 0: [min(a, 0), max(b, 0)] / (1 - gamma).
    """
    a = data.draw(st.floats(-5, 5))
    b = data.draw(st.floats(a, a + 10))
    horizon = 1.0 / (1.0 - w.gamma)
    rewards = a + (b - a) * w.rewards  # the strategy drew values in [0, 1]
    values = (a + (b - a) * w.next_values) * horizon
    term = w.terminals if with_terminals else torch.zeros_like(w.terminals)
    low, high = (min(a, 0.0), max(b, 0.0)) if with_terminals else (a, b)
    low, high = low * horizon, high * horizon
    out = w.targets(rewards=rewards, next_values=values, terminals=term)[w.mask]
    tol = 1e-9 * (1 + abs(low) + abs(high))
    assert (out >= low - tol).all() and (out <= high + tol).all()


# ----------------------------------------------------------------------------- 9. batch independence
@given(w=windows(), data=st.data())
def test_rows_are_independent(w: Window, data: st.DataObject) -> None:
    perm = torch.tensor(data.draw(st.permutations(range(w.shape[0]))), dtype=torch.long)
    permuted = dataclasses.replace(
        w, rewards=w.rewards[perm], next_values=w.next_values[perm], terminals=w.terminals[perm], mask=w.mask[perm]
    )
    assert_close(permuted.targets(), w.targets()[perm], F64, w.scale())
    G = discounted_returns(w.rewards, w.terminals, w.mask, w.gamma)
    G_perm = discounted_returns(w.rewards[perm], w.terminals[perm], w.mask[perm], w.gamma)
    assert_close(G_perm, G[perm], F64, w.scale())


# ----------------------------------------------------------------------------- 10. autoregressive
@st.composite
def q_tables(draw: st.DrawFn) -> tuple[Tensor, Tensor]:
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    D, bins = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    q = draw(_values((*lead, D, bins), -100, 100))
    last = draw(_values(lead, -100, 100)).reshape(lead)
    return q, last


@given(tables=q_tables(), dtype=st.sampled_from(DTYPES))
def test_autoregressive_targets_shape_and_max(tables: tuple[Tensor, Tensor], dtype: torch.dtype) -> None:
    q, last = (x.to(dtype) for x in tables)
    y = autoregressive_targets(q, last)
    D = q.shape[-2]
    assert y.shape == (*q.shape[:-2], D) and y.dtype == dtype
    assert torch.equal(y.to(F64), ref_autoregressive(q, last))
    assert torch.equal(y[..., -1], last)
    inner = y[..., :-1].unsqueeze(-1)
    assert (inner >= q[..., 1:, :]).all()  # an upper bound of every bin of the next dimension...
    assert (inner == q[..., 1:, :]).any(-1).all()  # ...that is attained


@given(data=st.data())
def test_autoregressive_targets_recover_the_joint_maxima(data: st.DataObject) -> None:
    """Per-dimension tables made from a joint table Q(a^1..a^D): the targets are its maxima."""
    D, bins = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    joint = data.draw(_values((bins,) * D, -10, 10))
    actions = data.draw(
        st.lists(st.tuples(*[st.integers(0, bins - 1)] * D), min_size=1, max_size=5), label="dataset actions"
    )

    def q_dim(prefix: tuple[int, ...]) -> Tensor:
        """Q_d(prefix, b) for every bin b: max of the joint table over the dimensions after d."""
        return joint[prefix].reshape(bins, -1).amax(-1)

    next_dim_q = torch.stack([torch.stack([q_dim(a[:d]) for d in range(D)]) for a in actions])  # [N, D, bins]
    last = torch.stack([joint[a] for a in actions])  # the value of the whole dataset action
    y = autoregressive_targets(next_dim_q, last)
    for i, a in enumerate(actions):
        for d in range(D):
            assert y[i, d] == joint[a[: d + 1]].max()  # best completion of the dataset prefix a^1..a^(d+1)
            assert y[i, d] == next_dim_q[i, d, a[d]]  # an exact table is its own fixed point


# ----------------------------------------------------------------------------- components
def _backup(name: str, gamma: float, n: int) -> Any:
    entry = qtkit.get_component("backup", name)
    params = {"n": n} if "n" in entry.parameters() else {}
    return entry.target(gamma=gamma, **params)


@pytest.mark.parametrize("name", BACKUPS)
@given(w=windows(ns=st.just(None)), n=st.integers(1, 8), data=st.data())
def test_component_matches_reference_and_validity_rule(name: str, w: Window, n: int, data: st.DataObject) -> None:
    next_valid = data.draw(st.one_of(st.none(), _bools(w.shape)), label="next_valid")
    returns = data.draw(_values(w.shape, -100, 100), label="returns")
    backup = _backup(name, w.gamma, n)
    batch = make_batch(w.rewards, w.terminals, w.mask, returns)
    targets, valid = backup(batch, w.next_values, next_valid)

    ref_targets, ref_valid = ref_component(
        name, w.rewards, w.next_values, w.terminals, w.mask, returns, w.gamma, n=n, next_valid=next_valid
    )
    assert valid.dtype == torch.bool and targets.dtype == F64
    assert valid.tolist() == ref_valid
    assert not (valid & ~w.mask).any()
    assert (targets[~valid] == 0).all()
    assert_close(targets, torch.tensor(ref_targets, dtype=F64).reshape(w.shape), F64, w.scale() + 100)
    if name == "nstep-mc-max":
        assert (targets[valid] >= returns[valid]).all()

    # next values where next_valid is False, or at a terminal, are never read
    available = torch.tensor(ref_default_next_valid(w.mask)) if next_valid is None else next_valid
    junk = data.draw(_junk(w.shape))
    dirty_values = torch.where(available & ~w.terminals & w.mask, w.next_values, junk)
    dirty, valid_dirty = backup(batch, dirty_values, next_valid)
    assert torch.equal(valid, valid_dirty)
    assert dirty.isfinite().all()
    assert torch.equal(dirty, targets)
