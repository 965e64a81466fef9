"""Example-based tests of the backups: hand-computed targets, reference-code defects we must not
copy (ALGORITHMS.md §3), bad input, dtypes and devices."""

from __future__ import annotations

import math

import pytest
import torch

import qtkit
from qtkit.backups import (
    MCBackup,
    NStepBackup,
    NStepMCMaxBackup,
    OneStepBackup,
    WindowBackup,
    default_next_valid,
    target_mask,
)
from qtkit.backups.functional import autoregressive_targets, discounted_returns, mc_lower_bound, n_step_targets
from qtkit.errors import ConfigError
from tests.conftest import build_component
from tests.reference_backups import make_batch

F64 = torch.float64
T_, F_ = True, False


def t64(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def tb(*rows: list[bool]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# A 4-step window: rewards r, next_values[t] = V(s_{t+1}), gamma = 0.5.
R = t64([1.0, 2.0, 3.0, 4.0])
V = t64([10.0, 20.0, 30.0, 40.0])
FULL = tb([T_, T_, T_, T_])
NO_TERM = tb([F_, F_, F_, F_])
END_TERM = tb([F_, F_, F_, T_])


# ----------------------------------------------------------------------------- functional examples
def test_n_step_targets_by_hand() -> None:
    # n = 1: r_t + 0.5 V_t
    assert n_step_targets(R, V, NO_TERM, FULL, 0.5, 1).tolist() == [[6.0, 12.0, 18.0, 24.0]]
    # n = 2: r_t + 0.5 r_{t+1} + 0.25 V_{t+1}, shortened at the end of the window
    assert n_step_targets(R, V, NO_TERM, FULL, 0.5, 2).tolist() == [[7.0, 11.0, 15.0, 24.0]]
    # no limit: everything bootstraps from the last position (V_3 = 40)
    y0 = 1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4 + 0.0625 * 40
    assert n_step_targets(R, V, NO_TERM, FULL, 0.5).tolist() == [[y0, 2 + 0.5 * 3 + 0.25 * 4 + 0.125 * 40, 15.0, 24.0]]
    # a terminal at the end: no bootstrap anywhere
    assert n_step_targets(R, V, END_TERM, FULL, 0.5).tolist() == [[3.25, 4.5, 5.0, 4.0]]


def test_n_step_targets_with_padding_by_hand() -> None:
    rewards = t64([math.nan, 1.0, 2.0, math.inf], [5.0, 6.0, -1e30, 7.0])
    values = t64([math.nan, 10.0, 20.0, math.nan], [1.0, 2.0, math.inf, -math.inf])
    terminals = tb([T_, F_, F_, T_], [F_, T_, F_, F_])
    mask = tb([F_, T_, T_, F_], [T_, T_, F_, F_])
    out = n_step_targets(rewards, values, terminals, mask, 0.5, 3)
    # row 0: valid run [1, 2], not terminal: t=2 bootstraps from V_2, t=1 sums r1, r2 then V_2
    # row 1: valid run [0, 1], terminal at 1: no bootstrap
    assert out.tolist() == [[0.0, 1 + 0.5 * 2 + 0.25 * 20, 2 + 0.5 * 20, 0.0], [5 + 0.5 * 6, 6.0, 0.0, 0.0]]


def test_discounted_returns_by_hand() -> None:
    rewards = t64([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, math.nan])
    terminals = tb([F_, T_, F_, F_], [F_, F_, F_, T_])
    mask = tb([T_, T_, T_, T_], [T_, T_, T_, F_])
    out = discounted_returns(rewards, terminals, mask, 0.9)
    torch.testing.assert_close(out, t64([1 + 0.9 * 2, 2.0, 3 + 0.9 * 4, 4.0], [1 + 0.9 + 0.81, 1.9, 1.0, 0.0]))


def test_float_terminals_and_empty_windows() -> None:
    as_float = n_step_targets(R, V, END_TERM.to(F64), FULL, 0.5, 2)
    assert torch.equal(as_float, n_step_targets(R, V, END_TERM, FULL, 0.5, 2))
    empty = torch.zeros(3, 0, dtype=F64)
    assert n_step_targets(empty, empty, empty.bool(), empty.bool(), 0.9, 5).shape == (3, 0)
    assert discounted_returns(empty, empty.bool(), empty.bool(), 0.9).shape == (3, 0)


def test_mc_lower_bound_and_autoregressive_by_hand() -> None:
    assert mc_lower_bound(t64([1.0, 5.0]), t64([3.0, 2.0])).tolist() == [[3.0, 5.0]]
    # D = 3 dimensions, 2 bins: y_0 = max Q_1, y_1 = max Q_2, y_2 = the backup of the last dimension
    q = torch.tensor([[[9.0, 9.0], [1.0, 4.0], [-2.0, -3.0]]])
    assert autoregressive_targets(q, torch.tensor([7.0])).tolist() == [[4.0, -2.0, 7.0]]
    assert autoregressive_targets(q[:, :1], torch.tensor([7.0])).tolist() == [[7.0]]  # D = 1


# ----------------------------------------------------------------------------- components by hand
def test_window_backup_by_hand() -> None:
    """The reference QT code's target: rewards up to the step before the last state, then V(last)."""
    batch = make_batch(R, NO_TERM, FULL)
    targets, valid = WindowBackup(gamma=0.5)(batch, V)
    # last state s_3: V(s_3) = next_values[2] = 30
    assert valid.tolist() == [[T_, T_, T_, F_]]
    assert targets.tolist() == [[1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 30, 2 + 0.5 * 3 + 0.25 * 30, 3 + 0.5 * 30, 0.0]]
    assert targets.tolist() == [[6.5, 11.0, 18.0, 0.0]]


def test_window_backup_with_left_padding_by_hand() -> None:
    rewards = t64([math.nan, 1.0, 2.0, 3.0, 4.0])
    values = t64([math.nan, 10.0, 20.0, 30.0, math.nan])  # the last one has no next state
    mask = tb([F_, T_, T_, T_, T_])
    targets, valid = WindowBackup(gamma=0.5)(make_batch(rewards, tb([F_] * 5), mask), values)
    assert valid.tolist() == [[F_, T_, T_, T_, F_]]
    assert targets.tolist() == [[0.0, 6.5, 11.0, 18.0, 0.0]]


def test_n_step_backup_by_hand() -> None:
    batch = make_batch(R, NO_TERM, FULL)
    # default next_valid: the last step has no next value, n = 2 is shortened at t = 2
    targets, valid = NStepBackup(gamma=0.5, n=2)(batch, V)
    assert valid.tolist() == [[T_, T_, T_, F_]] and targets.tolist() == [[7.0, 11.0, 18.0, 0.0]]
    # a critic with next observations: every step bootstraps
    targets, valid = NStepBackup(gamma=0.5, n=2)(batch, V, batch.mask)
    assert valid.tolist() == [[T_] * 4] and targets.tolist() == [[7.0, 11.0, 15.0, 24.0]]
    one, _ = OneStepBackup(gamma=0.5)(batch, V, batch.mask)
    assert one.tolist() == [[6.0, 12.0, 18.0, 24.0]]


def test_mc_and_nstep_mc_max_by_hand() -> None:
    returns = t64([9.0, 1.0, 30.0, 4.0])
    batch = make_batch(R, NO_TERM, FULL, returns)
    targets, valid = MCBackup(gamma=0.5)(batch)  # no next values needed
    assert valid.tolist() == [[T_] * 4] and targets.tolist() == [[9.0, 1.0, 30.0, 4.0]]
    targets, valid = NStepMCMaxBackup(gamma=0.5, n=2)(batch, V)
    assert valid.tolist() == [[T_, T_, T_, F_]] and targets.tolist() == [[9.0, 11.0, 30.0, 0.0]]


def test_default_next_valid_and_target_mask() -> None:
    mask = tb([F_, T_, T_, F_], [T_, T_, T_, T_], [F_, F_, F_, F_])
    assert default_next_valid(mask).tolist() == [[T_, T_, F_, F_], [T_, T_, T_, F_], [F_, F_, F_, F_]]
    terminals = tb([F_, F_, T_, F_], [F_, F_, F_, F_], [T_, T_, F_, F_])
    assert target_mask(mask, terminals, default_next_valid(mask)).tolist() == [
        [F_, T_, T_, F_],
        [T_, T_, T_, F_],
        [F_, F_, F_, F_],
    ]


# ----------------------------------------------------------------------------- reference defects
def test_regression_window_ending_on_a_terminal_keeps_its_reward() -> None:
    """The reference drops the terminal step's reward and treats the previous state as absorbing."""
    batch = make_batch(R, END_TERM, FULL)
    values = t64([10.0, 20.0, 30.0, math.nan])  # no state after the terminal step
    targets, valid = WindowBackup(gamma=0.5)(batch, values)
    assert valid.tolist() == [[T_] * 4]  # the terminal step has a target...
    assert targets[0, 3] == 4.0  # ...its own reward
    assert targets.tolist() == [[1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4, 2 + 0.5 * 3 + 0.25 * 4, 3 + 0.5 * 4, 4.0]]
    reference_defect = 1 + 0.5 * 2 + 0.25 * 3  # r_3 dropped, s_3 absorbing
    assert targets[0, 0] != reference_defect
    for backup in (NStepBackup(gamma=0.5, n=5), NStepMCMaxBackup(gamma=0.5, n=5)):
        assert backup(batch, values)[0][0, 2] == 3 + 0.5 * 4  # max(., G = 0) keeps the n-step target


def test_regression_one_step_masks_the_bootstrap_at_terminals() -> None:
    """The reference's 1-step branch bootstraps through terminals; the flag must zero it."""
    batch = make_batch(R, END_TERM, FULL)
    for values in (t64([10.0, 20.0, 30.0, 1e6]), t64([10.0, 20.0, 30.0, math.nan])):
        for next_valid in (None, batch.mask):  # also when the critic does have a next observation
            targets, valid = OneStepBackup(gamma=0.5)(batch, values, next_valid)
            assert targets.tolist() == [[6.0, 12.0, 18.0, 4.0]] and bool(valid[0, 3])
    assert n_step_targets(R, t64([10.0, 20.0, 30.0, 1e6]), END_TERM, FULL, 0.99, 1)[0, 3] == 4.0


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("which", ["rewards", "next_values", "terminals"])
def test_mismatched_shapes_name_the_argument_and_shapes(which: str) -> None:
    args = {"rewards": torch.zeros(2, 3), "next_values": torch.zeros(2, 3), "terminals": torch.zeros(2, 3).bool()}
    args[which] = args[which][:, :2]
    with pytest.raises(ValueError, match=which) as info:
        n_step_targets(**args, mask=torch.ones(2, 3).bool(), gamma=0.9)
    assert "(2, 2)" in str(info.value) and "(2, 3)" in str(info.value)
    if which != "next_values":
        with pytest.raises(ValueError, match=which):
            discounted_returns(args["rewards"], args["terminals"], torch.ones(2, 3).bool(), 0.9)


def test_bad_masks() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="mask must be a bool tensor") as info:
        n_step_targets(x, x, x.bool(), torch.ones(2, 3), 0.9)
    assert "float32" in str(info.value) and "(2, 3)" in str(info.value)
    with pytest.raises(ValueError, match="mask"):
        discounted_returns(x, x.bool(), torch.ones(2, 3, dtype=torch.long), 0.9)
    with pytest.raises(ValueError, match=r"mask must be \[B, T\].*\(6,\)"):
        n_step_targets(x.flatten(), x.flatten(), x.flatten().bool(), torch.ones(6).bool(), 0.9)
    with pytest.raises(ValueError, match="mask"):
        discounted_returns(x, x.bool(), [[True] * 3] * 2, 0.9)  # type: ignore[arg-type]


@pytest.mark.parametrize("gamma", [-0.1, 1.01, 2.0, math.nan, math.inf])
def test_gamma_outside_unit_interval(gamma: float) -> None:
    x, m = torch.zeros(2, 3), torch.ones(2, 3).bool()
    with pytest.raises(ValueError, match="gamma"):
        n_step_targets(x, x, m, m, gamma, 2)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(x, m, m, gamma)
    with pytest.raises(ConfigError, match="gamma"):
        NStepBackup(gamma=gamma)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_n(n: object) -> None:
    x, m = torch.zeros(2, 3), torch.ones(2, 3).bool()
    with pytest.raises(ValueError, match="n must be"):
        n_step_targets(x, x, m, m, 0.9, n)  # type: ignore[arg-type]


def test_integer_rewards_are_rejected() -> None:
    m = torch.ones(2, 3).bool()
    with pytest.raises(ValueError, match="rewards must be a floating"):
        n_step_targets(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3), m, m, 0.9)


def test_bad_autoregressive_and_lower_bound_inputs() -> None:
    with pytest.raises(ValueError, match="last_dim_target.*\\(4,\\)"):
        autoregressive_targets(torch.zeros(3, 2, 5), torch.zeros(4))
    with pytest.raises(ValueError, match="next_dim_q"):
        autoregressive_targets(torch.zeros(5), torch.zeros(()))
    with pytest.raises(ValueError, match="next_dim_q"):
        autoregressive_targets(torch.zeros(3, 0, 5), torch.zeros(3))
    with pytest.raises(ValueError, match="returns has \\(2, 4\\)"):
        mc_lower_bound(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("name", ["n-step", "nstep-mc-max"])
@pytest.mark.parametrize("n", [0, -3])
def test_components_reject_n_below_one(name: str, n: int) -> None:
    with pytest.raises(ConfigError, match=f"backup '{name}'.*parameter 'n' must be >= 1"):
        build_component("backup", {"type": name, "n": n})
    with pytest.raises(ConfigError, match=f"backup '{name}': parameter 'n' must be >= 1"):
        qtkit.get_component("backup", name).target(gamma=0.9, n=n)


def test_components_check_their_call() -> None:
    batch = make_batch(R, NO_TERM, FULL)
    backup = NStepBackup(gamma=0.9)
    with pytest.raises(ValueError, match="next_values"):
        backup(batch)
    with pytest.raises(ValueError, match="next_values must be \\[B, K\\]"):
        backup(batch, V[:, :3])
    with pytest.raises(ValueError, match="next_valid must be a bool"):
        backup(batch, V, FULL.float())
    with pytest.raises(ValueError, match="next_valid"):
        backup(batch, V, FULL[:, :3])


# ----------------------------------------------------------------------------- dtypes and devices
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_are_kept(dtype: torch.dtype) -> None:
    r, v = R.to(dtype), V.to(dtype)
    assert n_step_targets(r, v, NO_TERM, FULL, 0.5, 2).dtype == dtype
    assert n_step_targets(r, v.to(F64), NO_TERM, FULL, 0.5, 2).dtype == dtype  # rewards' dtype wins
    assert discounted_returns(r, NO_TERM, FULL, 0.5).dtype == dtype
    assert autoregressive_targets(torch.zeros(2, 3, 4, dtype=dtype), torch.zeros(2)).dtype == dtype


def test_targets_carry_gradients() -> None:
    """Not needed for TD targets (computed under no_grad) but cheap to keep: the maths is differentiable."""
    v = V.clone().requires_grad_(True)
    n_step_targets(R, v, NO_TERM, FULL, 0.5, 2).sum().backward()
    assert v.grad is not None and v.grad.tolist() == [[0.0, 0.25, 0.25, 0.25 + 0.5]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    B, T = 64, 20
    r, v = torch.randn(B, T, generator=gen, dtype=dtype), torch.randn(B, T, generator=gen, dtype=dtype)
    term = torch.rand(B, T, generator=gen) < 0.1
    start, stop = torch.randint(0, 5, (B, 1), generator=gen), torch.randint(15, T + 1, (B, 1), generator=gen)
    idx = torch.arange(T)
    mask = (idx >= start) & (idx < stop)
    cuda = [x.cuda() for x in (r, v, term, mask)]
    for n in (1, 5, None):
        out = n_step_targets(*cuda, 0.99, n)
        assert out.device.type == "cuda" and out.dtype == dtype
        torch.testing.assert_close(out.cpu(), n_step_targets(r, v, term, mask, 0.99, n))
    G = discounted_returns(cuda[0], cuda[2], cuda[3], 0.99)
    torch.testing.assert_close(G.cpu(), discounted_returns(r, term, mask, 0.99))
    batch = make_batch(r, term, mask, torch.randn(B, T, generator=gen, dtype=dtype)).to("cuda")
    for name in qtkit.list_components("backup"):
        backup = build_component("backup", name)
        targets, valid = backup(batch, cuda[1])
        assert targets.device.type == "cuda" and valid.device.type == "cuda" and targets.dtype == dtype
        cpu_targets, cpu_valid = backup(batch.to("cpu"), v)
        torch.testing.assert_close(targets.cpu(), cpu_targets)
        assert torch.equal(valid.cpu(), cpu_valid)
