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

GAMMAS = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.99]), st.floats(0.0, 1.0))


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


@st.composite
def _values(draw: st.DrawFn, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    """Floats in [low, high]: uniform, rounded to integers (ties), or constant."""
    style = draw(st.sampled_from(["uniform", "integers", "constant"]), label="style")
    rng = _rng(draw)
    values = rng.uniform(low, high, shape)
    if style == "integers":
        values = np.clip(np.round(values), low, high)
    elif style == "constant":
        values = np.full(shape, values.flat[0] if values.size else low)
    return torch.from_numpy(values)


@st.composite
def _bools(draw: st.DrawFn, shape: tuple[int, ...], densities: tuple[float, ...] = (0.0, 0.2, 0.5, 0.8, 1.0)) -> Tensor:
    p = draw(st.sampled_from(densities), label="density")
    return torch.from_numpy(_rng(draw).random(shape) < p)


@st.composite
def _junk(draw: st.DrawFn, shape: tuple[int, ...]) -> Tensor:
    """NaN, infinities and huge values."""
    return torch.from_numpy(_rng(draw).choice(np.array(GARBAGE), shape))


@st.composite
def windows(
    draw: st.DrawFn,
    *,
    max_b: int = 6,
    max_t: int = 12,
    contiguous: bool = True,
    terminals: str = "random",  # "random", "none" or "forced" (one per non-empty row)
    gammas: st.SearchStrategy[float] = GAMMAS,
    ns: st.SearchStrategy[int | None] | None = None,
    reward_range: tuple[float, float] = (-10.0, 10.0),
    value_range: tuple[float, float] = (-50.0, 50.0),
) -> Window:
    B = draw(st.integers(1, max_b), label="B")
    T = draw(st.integers(1, max_t), label="T")
    if contiguous:
        # each row: a valid run [start, stop), padding on either side (possibly an empty row)
        rows = []
        for _ in range(B):
            a, b = draw(st.integers(0, T)), draw(st.integers(0, T))
            start, stop = min(a, b), max(a, b)
            rows.append([start <= t < stop for t in range(T)])
        mask = torch.tensor(rows, dtype=torch.bool).reshape(B, T)
    else:
        mask = draw(_bools((B, T)))
    if terminals == "none":
        term = torch.zeros(B, T, dtype=torch.bool)
    else:
        term = draw(_bools((B, T), (0.0, 0.05, 0.2, 0.5)))
        ends = draw(st.lists(st.booleans(), min_size=B, max_size=B))
        for b in range(B):  # often a terminal at the end of the valid run, as in real episodes
            valid = mask[b].nonzero().flatten().tolist()
            if valid and ends[b]:
                term[b, valid[-1]] = True
    first_terminal: list[int | None] = [None] * B
    if terminals == "forced":
        for b in range(B):
            valid = mask[b].nonzero().flatten().tolist()
            if valid:
                j = draw(st.sampled_from(valid))
                term[b, j] = True
                first_terminal[b] = j
    rewards = draw(_values((B, T), *reward_range))
    next_values = draw(_values((B, T), *value_range))
    gamma = draw(gammas, label="gamma")
    n = draw(st.one_of(st.none(), st.integers(1, T)) if ns is None else ns, label="n")
    return Window(rewards, next_values, term, mask, gamma, n, first_terminal)


def assert_close(fast: Tensor, ref: Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    tol = (1e-10 if dtype == torch.float64 else 2e-6) * scale
    torch.testing.assert_close(fast.to(F64), ref.to(F64), rtol=0.0, atol=tol)


# ----------------------------------------------------------------------------- 1. reference
@pytest.mark.parametrize("dtype", DTYPES)
@given(w=windows())
def test_n_step_matches_reference(w: Window, dtype: torch.dtype) -> None:
    w = w.cast(dtype)
    fast = w.targets()
    assert fast.dtype == dtype and fast.shape == w.mask.shape
    assert_close(fast, w.reference(), dtype, w.scale())


@pytest.mark.parametrize("dtype", DTYPES)
@given(w=windows())
def test_discounted_returns_match_reference(w: Window, dtype: torch.dtype) -> None:
    w = w.cast(dtype)
    fast = discounted_returns(w.rewards, w.terminals, w.mask, w.gamma)
    assert fast.dtype == dtype
    ref = torch.tensor(ref_discounted_returns(w.rewards, w.terminals, w.mask, w.gamma), dtype=F64).reshape(w.shape)
    assert_close(fast, ref, dtype, w.scale())


@given(w=windows(contiguous=False))
def test_n_step_matches_reference_on_any_mask(w: Window) -> None:
    """Beyond the contract (masks are contiguous): gaps split a row into independent runs."""
    assert_close(w.targets(), w.reference(), F64, w.scale())


# ----------------------------------------------------------------------------- 2. special cases
@given(w=windows())
def test_one_step_is_the_td_target(w: Window) -> None:
    expected = w.rewards + w.gamma * (~w.terminals).to(F64) * w.next_values
    expected = torch.where(w.mask, expected, torch.zeros(()).to(F64))
    assert_close(w.targets(n=1), expected, F64, w.scale())


@given(w=windows())
def test_no_limit_equals_n_equals_t(w: Window) -> None:
    T = w.shape[1]
    unlimited = w.targets(n=None)
    assert_close(w.targets(n=T), unlimited, F64, w.scale())
    assert_close(w.targets(n=T + 7), unlimited, F64, w.scale())


@given(w=windows())
def test_gamma_zero_gives_rewards(w: Window) -> None:
    expected = torch.where(w.mask, w.rewards, torch.zeros((), dtype=F64))
    assert torch.equal(w.targets(gamma=0.0), expected)
    assert torch.equal(discounted_returns(w.rewards, w.terminals, w.mask, 0.0), expected)


# ----------------------------------------------------------------------------- 3. recurrence in n
@given(w=windows(ns=st.one_of(st.none(), st.integers(2, 12))))
def test_recurrence_in_n(w: Window) -> None:
    """``y^(n)_t = r_t + gamma y^(n-1)_{t+1}`` where t+1 is valid and t is not terminal."""
    longer = w.targets()
    shorter = w.targets(n=None if w.n is None else w.n - 1)
    continues = w.mask[:, :-1] & w.mask[:, 1:] & ~w.terminals[:, :-1]
    expected = w.rewards[:, :-1] + w.gamma * shorter[:, 1:]
    assert_close(longer[:, :-1][continues], expected[continues], F64, w.scale())


# ----------------------------------------------------------------------------- 4. Monte-Carlo returns
@given(w=windows(ns=st.none()))
def test_zero_bootstrap_no_limit_is_discounted_returns(w: Window) -> None:
    returns = discounted_returns(w.rewards, w.terminals, w.mask, w.gamma)
    assert_close(w.targets(next_values=torch.zeros_like(w.next_values)), returns, F64, w.scale())


@given(w=windows())
def test_returns_satisfy_their_recurrence(w: Window) -> None:
    G = discounted_returns(w.rewards, w.terminals, w.mask, w.gamma)
    nxt = torch.cat([G[:, 1:], torch.zeros_like(G[:, :1])], dim=1)
    nxt_valid = torch.cat([w.mask[:, 1:], torch.zeros_like(w.mask[:, :1])], dim=1)
    carry = (nxt_valid & ~w.terminals).to(F64)
    expected = torch.where(w.mask, w.rewards + w.gamma * carry * nxt, torch.zeros((), dtype=F64))
    assert_close(G, expected, F64, w.scale())


# ----------------------------------------------------------------------------- 5. linearity, monotonicity
@given(w=windows(), data=st.data())
def test_linear_in_rewards_and_values(w: Window, data: st.DataObject) -> None:
    r2 = data.draw(_values(w.shape, -10, 10))
    v2 = data.draw(_values(w.shape, -50, 50))
    a = data.draw(st.floats(-3, 3))
    b = data.draw(st.floats(-3, 3))
    combined = w.targets(rewards=a * w.rewards + b * r2, next_values=a * w.next_values + b * v2)
    expected = a * w.targets() + b * w.targets(rewards=r2, next_values=v2)
    assert_close(combined, expected, F64, 10 * w.scale())


@given(w=windows(), data=st.data())
def test_monotone_in_rewards_and_values(w: Window, data: st.DataObject) -> None:
    dr = data.draw(_values(w.shape, 0, 5))
    dv = data.draw(_values(w.shape, 0, 5))
    base = w.targets()
    tol = 1e-12 * w.scale()
    assert (w.targets(rewards=w.rewards + dr) >= base - tol).all()
    assert (w.targets(next_values=w.next_values + dv) >= base - tol).all()
    assert (w.targets(rewards=w.rewards + dr, next_values=w.next_values + dv) >= base - tol).all()
    G = discounted_returns(w.rewards, w.terminals, w.mask, w.gamma)
    assert (discounted_returns(w.rewards + dr, w.terminals, w.mask, w.gamma) >= G - tol).all()


# ----------------------------------------------------------------------------- 6. padding invariance
@pytest.mark.parametrize("dtype", DTYPES)
@given(w=windows(), data=st.data())
def test_padding_never_leaks(w: Window, dtype: torch.dtype, data: st.DataObject) -> None:
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
    assert not out.isnan().any() and out.isfinite().all()
    assert torch.equal(out, clean)
    assert (out[~w.mask] == 0).all()
    G = discounted_returns(w.rewards, w.terminals, w.mask, w.gamma)
    G_dirty = discounted_returns(dirty["rewards"], dirty["terminals"], w.mask, w.gamma)
    assert torch.equal(G, G_dirty) and G_dirty.isfinite().all()


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
@pytest.mark.parametrize("terminals", ["none", "random"])
@given(w=windows(gammas=st.floats(0.0, 0.99), reward_range=(0.0, 1.0), value_range=(0.0, 1.0)), data=st.data())
def test_targets_stay_in_the_value_interval(w: Window, terminals: str, data: st.DataObject) -> None:
    """Rewards in [a, b], values in [a, b] / (1 - gamma) give targets in that interval.

    A terminal step bootstraps from an absorbing state of value 0, so with terminals the
    interval must contain 0: [min(a, 0), max(b, 0)] / (1 - gamma).
    """
    a = data.draw(st.floats(-5, 5))
    b = data.draw(st.floats(a, a + 10))
    horizon = 1.0 / (1.0 - w.gamma)
    rewards = a + (b - a) * w.rewards  # the strategy drew values in [0, 1]
    values = (a + (b - a) * w.next_values) * horizon
    term = w.terminals if terminals == "random" else torch.zeros_like(w.terminals)
    low, high = (a, b) if terminals == "none" else (min(a, 0.0), max(b, 0.0))
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


@pytest.mark.parametrize("dtype", DTYPES)
@given(tables=q_tables())
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
        table = joint[prefix]  # [bins] * (D - d)
        return table.reshape(bins, -1).amax(-1)

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


@st.composite
def component_cases(draw: st.DrawFn) -> tuple[Window, Tensor | None, Tensor, int]:
    w = draw(windows(ns=st.just(None)))
    n = draw(st.integers(1, 8), label="n")
    next_valid = draw(st.one_of(st.none(), _bools(w.shape)), label="next_valid")
    returns = draw(_values(w.shape, -100, 100), label="returns")
    return w, next_valid, returns, n


@pytest.mark.parametrize("name", BACKUPS)
@given(case=component_cases())
def test_component_matches_reference_and_validity_rule(name: str, case: Any) -> None:
    w, next_valid, returns, n = case
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


@pytest.mark.parametrize("name", BACKUPS)
@given(case=component_cases(), data=st.data())
def test_component_never_reads_unavailable_values(name: str, case: Any, data: st.DataObject) -> None:
    """NaN/inf next values where next_valid is False, or at a terminal, change nothing."""
    w, next_valid, returns, n = case
    backup = _backup(name, w.gamma, n)
    batch = make_batch(w.rewards, w.terminals, w.mask, returns)
    available = torch.tensor(ref_default_next_valid(w.mask)) if next_valid is None else next_valid
    junk = data.draw(_junk(w.shape))
    dirty_values = torch.where(available & ~w.terminals & w.mask, w.next_values, junk)
    clean, valid = backup(batch, w.next_values, next_valid)
    dirty, valid_dirty = backup(batch, dirty_values, next_valid)
    assert torch.equal(valid, valid_dirty)
    assert dirty.isfinite().all()
    assert torch.equal(dirty, clean)


@given(w=windows(), data=st.data())
def test_mc_lower_bound_is_the_max(w: Window, data: st.DataObject) -> None:
    returns = data.draw(_values(w.shape, -100, 100))
    out = mc_lower_bound(w.targets(), returns)
    assert (out >= returns).all() and (out >= w.targets()).all()
    assert ((out == returns) | (out == w.targets())).all()
