"""The ``ar-q`` critic (Q-Transformer, ALGORITHMS.md §6): bins, teacher forcing, greedy decoding,
the differentiable value, the loss's terms, end-to-end targets with a real backup, and learning."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qtkit.backbones.gpt2 import GPT2Backbone
from qtkit.critics.ar_q import ARQCritic
from qtkit.data import Batch, TrajectoryDataset
from qtkit.errors import ConfigError, TrainingError
from qtkit.registry import get_component
from tests.conftest import CONTEXT, assert_same_critic_step, build_component

OBS, ACT = CONTEXT["obs_dim"], CONTEXT["act_dim"]
LOW, HIGH = CONTEXT["action_low"], CONTEXT["action_high"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_critic(seed: int = 0, *, width: int = 32, depth: int = 1, **params: Any) -> ARQCritic:
    """A small seeded ar-q critic (CONTEXT shapes unless overridden), in eval mode, floor resolved to 0."""
    torch.manual_seed(seed)
    context = {k: params.pop(k) for k in ("obs_dim", "act_dim", "action_low", "action_high") if k in params}
    ctx = {**CONTEXT, **context}
    backbone = GPT2Backbone(width=width, depth=depth, heads=2, dropout=0.0)
    params.setdefault("floor", 0.0)
    critic = ARQCritic(
        obs_dim=ctx["obs_dim"], act_dim=ctx["act_dim"], action_low=ctx["action_low"], action_high=ctx["action_high"],
        gamma=ctx["gamma"], backbone=backbone, **params,
    )
    with torch.no_grad():
        for name, p in critic.net.named_parameters():  # large weights: Q depends on state, history and prefix
            if "ln" not in name:
                p.normal_(0.0, 0.3)
        critic.update_target(1.0)
        for p in critic.target_net.parameters():  # decorrelate the target so target-vs-online mix-ups show
            p.add_(0.05 * torch.randn_like(p))
    return critic.eval()


def random_actions(*shape: int, seed: int = 0, margin: float = 0.2) -> torch.Tensor:
    """Uniform actions ``[*shape, ACT]`` over the CONTEXT bounds widened by ``margin`` of the range."""
    gen = torch.Generator().manual_seed(seed)
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    u = torch.rand(*shape, ACT, generator=gen) * (1 + 2 * margin) - margin
    return low + u * (high - low)


def make_batch(
    B: int, K: int, *, seed: int = 0, mask: torch.Tensor | None = None, terminals: torch.Tensor | None = None,
    returns: torch.Tensor | None = None, obs_dim: int = OBS, actions: torch.Tensor | None = None,
) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, K, dtype=torch.bool) if mask is None else mask
    obs = torch.randn(B, K, obs_dim, generator=gen)
    next_obs = torch.cat((obs[:, 1:], torch.randn(B, 1, obs_dim, generator=gen)), dim=1)
    return Batch(
        observations=obs, next_observations=next_obs,
        actions=random_actions(B, K, seed=seed, margin=0.0) if actions is None else actions,
        rewards=torch.rand(B, K, generator=gen), rtg=torch.zeros(B, K),
        returns=torch.full((B, K), -100.0) if returns is None else returns,
        timesteps=torch.arange(K).expand(B, K).clone(),
        terminals=torch.zeros(B, K, dtype=torch.bool) if terminals is None else terminals, mask=mask,
    )


def critic_loss(critic: ARQCritic, batch: Batch, backup: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One critic loss evaluation exactly as the agent does it: bootstrap -> backup -> loss."""
    next_values, next_valid = critic.bootstrap(batch.observations, batch.next_observations, None, batch.mask)
    targets, valid = backup(batch, next_values, next_valid)
    return critic.loss(batch.observations, batch.actions, targets, valid, batch=batch)


def backup_component(name: str = "n-step", **params: Any) -> Any:
    return get_component("backup", name).target(gamma=CONTEXT["gamma"], **params)


# ----------------------------------------------------------------------------- construction
def test_builds_through_the_registry_with_defaults() -> None:
    critic = build_component("critic", "ar-q")
    assert isinstance(critic, ARQCritic)
    assert critic.bins == 256 and critic.heads == 2 and critic.state_window == 1
    assert critic.needs_policy_actions is False
    assert all(not p.requires_grad for p in critic.target_net.parameters())
    assert {id(p) for p in critic.net.parameters()} == {id(p) for p in critic.parameters() if p.requires_grad}


@pytest.mark.parametrize("bins", [1, 0, -3])
def test_rejects_too_few_bins(bins: int) -> None:
    with pytest.raises(ConfigError, match="bins"):
        build_component("critic", {"type": "ar-q", "bins": bins})


def test_rejects_unbounded_actions() -> None:
    with pytest.raises(ConfigError) as info:
        build_component("critic", "ar-q", action_low=[-math.inf, -1.0, 0.0], action_high=[1.0, 1.0, math.inf])
    message = str(info.value)
    assert "action_low" in message and "action_high" in message and "bins" in message


@pytest.mark.parametrize("floor", ["zero", "nan", "inf"])
def test_rejects_bad_floor(floor: str) -> None:
    with pytest.raises(ConfigError, match="floor"):
        build_component("critic", {"type": "ar-q", "floor": floor})


def test_rejects_a_non_causal_backbone() -> None:
    with pytest.raises(ConfigError, match="causal"):
        ARQCritic(OBS, ACT, LOW, HIGH, 0.9, GPT2Backbone(width=16, depth=1, heads=2, causal=False))


# ----------------------------------------------------------------------------- bins
BINS_CRITIC = make_critic(bins=7)


@given(st.lists(st.floats(-5.0, 5.0, allow_nan=False), min_size=ACT, max_size=ACT))
def test_bins_in_range_clipped_and_round_trip(values: list[float]) -> None:
    critic = BINS_CRITIC
    actions = torch.tensor(values, dtype=torch.float32)
    bins = critic.discretize(actions)
    assert bins.dtype == torch.long and ((bins >= 0) & (bins < critic.bins)).all()
    low, high = critic.action_low, critic.action_high
    clipped = torch.minimum(torch.maximum(actions, low), high)
    assert torch.equal(bins, critic.discretize(clipped))  # beyond the bounds = at the bounds
    centres = critic.undiscretize(bins)
    assert ((centres > low) & (centres < high)).all()
    half = (high - low) / critic.bins / 2
    assert ((centres - clipped).abs() <= half * (1 + 1e-5) + 1e-6).all()
    assert torch.equal(critic.discretize(centres), bins)


def test_bins_at_the_bounds_and_centres() -> None:
    critic = BINS_CRITIC
    low, high = critic.action_low, critic.action_high
    assert (critic.discretize(low) == 0).all() and (critic.discretize(high) == critic.bins - 1).all()
    every = torch.arange(critic.bins).unsqueeze(-1).expand(-1, ACT)
    centres = critic.undiscretize(every)
    torch.testing.assert_close(centres[0], low + (high - low) / (2 * critic.bins))
    assert torch.equal(critic.discretize(centres), every)


# ----------------------------------------------------------------------------- teacher forcing, greedy
@pytest.mark.parametrize("params", [{}, {"dueling": True, "heads": 3}, {"state_window": 3}])
def test_greedy_is_the_argmax_of_q_values_given_its_prefix(params: dict[str, Any]) -> None:
    critic = make_critic(bins=9, **params)
    w = critic.state_window
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(16, w, OBS, generator=gen) if w > 1 else torch.randn(16, OBS, generator=gen)
    mask = None
    if w > 1:
        mask = torch.ones(16, w, dtype=torch.bool)
        mask[:5, 0] = False  # some histories start inside the window
    bins, value = critic.greedy(states, mask)
    assert bins.shape == (16, ACT) and value.shape == (16,)
    assert len(bins.unique(dim=0)) > 4
    q = critic.q_values(states, bins, mask)  # [16, D, bins], teacher-forced on the greedy prefix
    chosen = q.gather(-1, bins.unsqueeze(-1)).squeeze(-1)
    assert (chosen >= q.amax(-1) - 1e-5).all()
    torch.testing.assert_close(value, q[:, -1].amax(-1), atol=1e-5, rtol=1e-5)


def test_next_q_matches_teacher_forced_q_values() -> None:
    critic = make_critic(bins=6, state_window=2)
    gen = torch.Generator().manual_seed(2)
    states = torch.randn(8, 2, OBS, generator=gen)
    bins = torch.randint(0, 6, (8, ACT), generator=gen)
    q = critic.q_values(states, bins)
    for d in range(ACT):
        torch.testing.assert_close(critic.next_q(states, bins[:, :d]), q[:, d], atol=1e-5, rtol=1e-5)


def test_dimension_i_sees_exactly_the_bins_before_it() -> None:
    """No off-by-one: Q_i depends on a^{1:i-1} only, and the bin read at token i is the one fed to token i+1."""
    critic = make_critic(bins=8)
    gen = torch.Generator().manual_seed(3)
    states = torch.randn(4, OBS, generator=gen)
    bins = torch.randint(0, 8, (4, ACT), generator=gen)
    q = critic.q_values_all_heads(states, bins)
    for d in range(ACT):
        changed = bins.clone()
        changed[:, d] = (changed[:, d] + 3) % 8
        q2 = critic.q_values_all_heads(states, changed)
        torch.testing.assert_close(q2[..., : d + 1, :], q[..., : d + 1, :])  # dims <= d never see bin d
        if d + 1 < ACT:
            assert not torch.allclose(q2[..., d + 1, :], q[..., d + 1, :])  # dim d+1 does


class TableCritic(ARQCritic):
    """Per-dimension Q from a known joint table: ``Q_d(s, a^{1:d-1}, b) = max over the remaining dims``."""

    table: torch.Tensor  # [B, bins, ..., bins] (D bin axes)
    use_kv_cache = False  # decode through next_q (the cached path would bypass this override)

    def next_q(self, states: torch.Tensor, prefix: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        values = self.table[(torch.arange(self.table.shape[0]), *prefix.unbind(-1))]  # [B, bins, ...]
        return values.reshape(*values.shape[:2], -1).amax(-1)


def test_greedy_on_max_marginals_returns_the_joint_argmax() -> None:
    critic = make_critic(bins=5)
    critic.__class__ = TableCritic
    gen = torch.Generator().manual_seed(4)
    B = 64
    critic.table = torch.randn(B, *([5] * ACT), generator=gen)
    bins, value = critic.greedy(torch.zeros(B, OBS))
    flat = critic.table.reshape(B, -1)
    best = torch.stack(torch.unravel_index(flat.argmax(-1), (5,) * ACT), dim=-1)
    assert torch.equal(bins, best)
    torch.testing.assert_close(value, flat.amax(-1))


# ----------------------------------------------------------------------------- forward (continuous, differentiable)
def test_forward_shapes_and_score() -> None:
    critic = make_critic(bins=8)
    states, actions = torch.randn(3, 4, OBS), random_actions(3, 4)
    assert critic(states, actions).shape == (2, 3, 4)  # window: [H, B, K]
    assert critic(states[:, 0], actions[:, 0]).shape == (2, 3)  # single: [H, B]
    score = critic.score(states, actions)
    assert score.shape == (3, 4) and not score.requires_grad
    torch.testing.assert_close(score, critic._value(critic.target_net, states, actions, None).amin(0))


def test_forward_is_differentiable_in_the_actions() -> None:
    critic = make_critic(bins=8).requires_grad_(False)  # as the agent calls it for L_Q
    actions = random_actions(6, seed=5, margin=-0.1).requires_grad_(True)  # strictly inside the bounds
    value = critic(torch.randn(6, OBS), actions)
    value.sum().backward()
    assert actions.grad is not None and actions.grad.isfinite().all()
    assert (actions.grad.abs().sum(0) > 0).all()  # every dimension moves the value


@pytest.mark.parametrize("params", [{}, {"dueling": True}])
def test_forward_equals_the_discrete_value_at_bin_centres(params: dict[str, Any]) -> None:
    critic = make_critic(bins=10, **params)
    gen = torch.Generator().manual_seed(6)
    states = torch.randn(12, OBS, generator=gen)
    bins = torch.randint(0, 10, (12, ACT), generator=gen)
    q = critic.q_values_all_heads(states, bins)  # [H, 12, D, bins]
    expected = q[:, :, -1].gather(-1, bins[:, -1].expand(critic.heads, -1).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(critic(states, critic.undiscretize(bins)), expected, atol=1e-5, rtol=1e-5)


def test_forward_interpolates_between_bins() -> None:
    critic = make_critic(bins=4)
    states = torch.randn(5, OBS)
    a = critic.undiscretize(torch.full((5, ACT), 1))
    b = a.clone()
    b[:, -1] = critic.undiscretize(torch.full((5, ACT), 2))[:, -1]
    mid = (a + b) / 2
    torch.testing.assert_close(critic(states, mid), (critic(states, a) + critic(states, b)) / 2, atol=1e-5, rtol=1e-5)


def test_window_positions_use_their_own_history() -> None:
    critic = make_critic(bins=6, state_window=3)
    B, K = 2, 5
    states, actions = torch.randn(B, K, OBS), random_actions(B, K, seed=7)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[1, :2] = False  # row 1 is left-padded (a rollout context)
    window = critic(states, actions, mask)
    for t in range(K):
        lo = max(0, t - 2)
        hist = torch.nn.functional.pad(states[:, lo: t + 1], (0, 0, 3 - (t + 1 - lo), 0))
        hist_mask = torch.nn.functional.pad(mask[:, lo: t + 1], (3 - (t + 1 - lo), 0), value=False)
        hist_mask[:, -1] = True
        torch.testing.assert_close(window[:, :, t], critic(hist, actions[:, t], hist_mask), atol=1e-5, rtol=1e-5)
    # garbage in masked history positions does not reach the valid positions
    dirty = states.clone()
    dirty[1, :2] = 1e6
    torch.testing.assert_close(critic(dirty, actions, mask)[:, 1, 2:], window[:, 1, 2:], atol=1e-5, rtol=1e-5)


def test_state_dict_round_trip_gives_identical_outputs() -> None:
    critic = make_critic(seed=0, bins=8, floor="auto", dueling=True)
    critic.floor_value.fill_(-3.5)
    other = make_critic(seed=1, bins=8, floor="auto", dueling=True)
    assert other.floor_value.isnan()
    other.load_state_dict(critic.state_dict())
    states, actions = torch.randn(4, 3, OBS), random_actions(4, 3)
    assert torch.equal(other(states, actions), critic(states, actions))
    assert torch.equal(other.score(states, actions), critic.score(states, actions))
    assert torch.equal(other.greedy(states[:, 0])[0], critic.greedy(states[:, 0])[0])
    assert float(other.floor_value) == -3.5


def test_update_target_polyak() -> None:
    critic = make_critic()
    before = [p.clone() for p in critic.target_net.parameters()]
    critic.update_target(0.0)
    assert all(torch.equal(a, b) for a, b in zip(before, critic.target_net.parameters()))
    critic.update_target(0.25)
    for old, new, online in zip(before, critic.target_net.parameters(), critic.net.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * online)
    critic.update_target(1.0)
    assert all(torch.equal(a, b) for a, b in zip(critic.net.parameters(), critic.target_net.parameters()))


def test_target_net_stays_in_eval_mode() -> None:
    critic = make_critic().train()
    assert critic.net.training and not critic.target_net.training


# ----------------------------------------------------------------------------- bootstrap and targets
def test_bootstrap_is_the_target_nets_max_over_the_first_dimension() -> None:
    critic = make_critic(bins=7, state_window=2)
    batch = make_batch(3, 4, mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool))
    values, valid = critic.bootstrap(batch.observations, batch.next_observations, torch.full((3, 4, ACT), 9.0), batch.mask)
    assert torch.equal(valid, batch.mask) and (values[~batch.mask] == 0).all()
    for b, t in zip(*torch.nonzero(batch.mask, as_tuple=True), strict=True):
        prev = batch.observations[b, t] if t >= 0 else None
        hist = torch.stack((prev, batch.next_observations[b, t]))[None]  # s_t then s_{t+1}
        tokens = critic.target_net.action_tokens(torch.zeros(1, 0, 32))
        q = critic.target_net(hist, None, tokens, last_only=True).amin(0)  # [1, bins]
        torch.testing.assert_close(values[b, t], q.amax(), atol=1e-5, rtol=1e-5)


def test_per_dimension_targets_and_the_mc_lower_bound() -> None:
    critic = make_critic(bins=5, mc_lower_bound=False)
    batch = make_batch(4, 3, seed=1)
    targets, valid = torch.randn(4, 3), torch.ones(4, 3, dtype=torch.bool)
    valid[0, 2] = False
    y = critic.dimension_targets(batch.observations, batch.actions, targets, valid, batch=batch)
    bins = critic.discretize(batch.actions)
    q_target = critic._teacher_forced(critic.target_net, batch.observations.reshape(-1, 1, OBS), None,
                                      bins.reshape(-1, ACT)).amin(0).reshape(4, 3, ACT, 5)
    torch.testing.assert_close(y[..., :-1][valid], q_target[..., 1:, :].amax(-1)[valid])
    torch.testing.assert_close(y[..., -1][valid], targets[valid])
    assert (y[~valid] == 0).all()
    critic.mc_lower_bound = True
    batch.returns = torch.full((4, 3), 50.0)
    batch.returns[1] = -50.0
    y = critic.dimension_targets(batch.observations, batch.actions, targets, valid, batch=batch)
    assert (y[0, :2] == 50.0).all() and (y[2:] == 50.0).all()  # every dimension is lifted
    assert (y[1] < 50.0).all() and (y[1, :, -1] == targets[1]).all()
    with pytest.raises(ValueError, match="batch"):
        critic.loss(batch.observations, batch.actions, targets, valid)


def test_td_term_includes_the_reward() -> None:
    """Flipping one reward changes the loss (the public implementation regresses on target logits only)."""
    critic = make_critic(bins=6, mc_lower_bound=False)
    batch = make_batch(3, 4, seed=2)
    for name in ("one-step", "n-step", "nstep-mc-max"):
        backup = backup_component(name)
        base, _ = critic_loss(critic, batch, backup)
        flipped = make_batch(3, 4, seed=2)
        flipped.rewards[1, 2] = 1.0 - flipped.rewards[1, 2] + 0.5
        changed, _ = critic_loss(critic, flipped, backup)
        assert not torch.isclose(base, changed), name


def test_terminal_transitions_do_not_bootstrap() -> None:
    critic = make_critic(bins=6, mc_lower_bound=False)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    terminals = torch.zeros(2, 4, dtype=torch.bool)
    terminals[0, 2] = True  # row 0's episode ends inside the window
    backup = backup_component("one-step")
    batch = make_batch(2, 4, seed=3, mask=mask, terminals=terminals)
    base, _ = critic_loss(critic, batch, backup)
    next_values, next_valid = critic.bootstrap(batch.observations, batch.next_observations, None, batch.mask)
    targets, valid = backup(batch, next_values, next_valid)
    assert valid[0, 2] and targets[0, 2] == batch.rewards[0, 2]  # terminal: the reward alone
    assert valid[1, 3]  # the window's last step bootstraps from next_observations
    torch.testing.assert_close(targets[1, 3], batch.rewards[1, 3] + CONTEXT["gamma"] * next_values[1, 3])
    moved = make_batch(2, 4, seed=3, mask=mask, terminals=terminals)
    moved.next_observations[0, 2] += 10.0  # the terminal's next observation: irrelevant
    assert torch.equal(critic_loss(critic, moved, backup)[0], base)
    moved.next_observations[1, 3] += 10.0  # a non-terminal's next observation: bootstrapped
    assert not torch.isclose(critic_loss(critic, moved, backup)[0], base)


# ----------------------------------------------------------------------------- the conservative term
def constant_critic(bias: list[float], floor: float) -> ARQCritic:
    """A critic whose online Q is ``bias`` over the bins for every state, prefix and dimension."""
    critic = make_critic(bins=len(bias), floor=floor, mc_lower_bound=False)
    with torch.no_grad():
        critic.net.head.weight.zero_()
        critic.net.head.bias.copy_(torch.tensor(bias).repeat(critic.heads))
    return critic


def test_conservative_term_is_zero_at_the_floor_and_positive_otherwise() -> None:
    B, K = 3, 2
    data_bin = 2
    actions = critic_bins_to_actions(data_bin, B, K, bins=4)
    batch = make_batch(B, K, actions=actions)
    targets, valid = torch.full((B, K), 0.3), torch.ones(B, K, dtype=torch.bool)
    critic = constant_critic([-1.0, -1.0, 0.3, -1.0], floor=-1.0)
    _, metrics = critic.loss(batch.observations, batch.actions, targets, valid, batch=batch)
    assert metrics["conservative_loss"] == 0.0
    critic = constant_critic([-0.8, -1.0, 0.3, -1.0], floor=-1.0)
    loss, metrics = critic.loss(batch.observations, batch.actions, targets, valid, batch=batch)
    # ½ Σ_i mean_{b≠a_i} (Q − floor)², summed over the two heads: 2 · ½ · D · 0.2² / 3
    torch.testing.assert_close(metrics["conservative_loss"], torch.tensor(2 * 0.5 * ACT * 0.04 / 3))
    assert float(loss.detach()) > float(metrics["td_loss"])
    critic.conservative_weight = 0.0
    loss, metrics = critic.loss(batch.observations, batch.actions, targets, valid, batch=batch)
    assert "conservative_loss" not in metrics and torch.equal(loss, metrics["td_loss"])


def critic_bins_to_actions(bin_index: int, B: int, K: int, bins: int) -> torch.Tensor:
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    return (low + (bin_index + 0.5) * (high - low) / bins).expand(B, K, ACT).clone()


def test_loss_on_values_not_logits_and_gradients_reach_only_the_online_net() -> None:
    critic = make_critic(bins=6).train()
    batch = make_batch(4, 3, seed=4)
    loss, metrics = critic_loss(critic, batch, backup_component("nstep-mc-max"))
    loss.backward()
    assert all(p.grad is not None for p in critic.net.parameters() if p.numel())
    assert all(p.grad is None for p in critic.target_net.parameters())
    assert set(metrics) >= {"critic_loss", "td_loss", "conservative_loss", "q_mean", "target_mean"}
    assert all(not v.requires_grad for v in metrics.values())


def test_no_valid_position_gives_a_zero_loss() -> None:
    critic = make_critic()
    batch = make_batch(2, 3)
    loss, _ = critic.loss(batch.observations, batch.actions, torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool),
                          batch=batch)
    loss.backward()
    assert float(loss.detach()) == 0.0
    values, valid = critic.bootstrap(batch.observations, batch.next_observations, None, torch.zeros(2, 3, dtype=torch.bool))
    assert (values == 0).all() and not valid.any()


# ----------------------------------------------------------------------------- floor and prepare
def tiny_dataset(rewards: list[list[float]], gamma: float = 0.9) -> TrajectoryDataset:
    episodes = []
    for i, r in enumerate(rewards):
        T = len(r)
        episodes.append({
            "observations": np.full((T + 1, OBS), float(i), dtype=np.float32),
            "actions": np.zeros((T, ACT), dtype=np.float32), "rewards": np.asarray(r, dtype=np.float32),
            "terminations": np.eye(T, dtype=bool)[-1],
        })
    return TrajectoryDataset.from_episodes(episodes, gamma=gamma)


def test_prepare_resolves_the_auto_floor() -> None:
    critic = make_critic(floor="auto")
    batch = make_batch(2, 2)
    with pytest.raises(TrainingError, match="prepare"):
        critic.loss(batch.observations, batch.actions, torch.zeros(2, 2), batch.mask, batch=batch)
    assert critic.prepare(tiny_dataset([[0, 0, 1], [0, 1]])) == 0.0  # sparse 0/1
    assert float(critic.floor_value) == 0.0
    critic.loss(batch.observations, batch.actions, torch.zeros(2, 2), batch.mask, batch=batch)
    dense = tiny_dataset([[-1.0, -2.0], [0.5]])
    # minimum discounted return with the critic's gamma (0.9): -1 + 0.9 * -2 = -2.8
    assert critic.prepare(dense) == pytest.approx(-2.8, abs=1e-5)
    dense_other_gamma = tiny_dataset([[-1.0, -2.0], [0.5]], gamma=0.5)  # recomputed with the critic's gamma
    assert critic.prepare(dense_other_gamma) == pytest.approx(-2.8, abs=1e-5)


def test_prepare_warns_for_a_floor_above_every_possible_return() -> None:
    data = tiny_dataset([[0, 0, 1], [0, 1]])
    critic = make_critic(floor=5.0)
    with pytest.warns(UserWarning, match="floor"):
        critic.prepare(data)
    critic = make_critic(floor=-1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert critic.prepare(data) == -1.0


# ----------------------------------------------------------------------------- learning
@pytest.mark.parametrize(("alpha", "decoy"), [(1.0, 0.0), (0.1, 0.5)])
def test_learns_the_optimal_joint_action(alpha: float, decoy: float) -> None:
    """One-step episodes from 6 states, D = 2 dimensions of 4 bins, every joint action in the data: reward 1
    for one joint action per state (1 of 16), 0 otherwise; with a decoy, every action whose first bin is the
    decoy earns 0.5 (more than the optimal first bin's mean reward 0.25, less than its max). Critic alone,
    real ``nstep-mc-max`` backup. Greedy must find the optimum in every state (chance: 16^-6), and the learnt
    value must be the loss's fixed point: with uniform coverage each bin is regressed to its target with
    weight 1/4 and pulled to the floor (0) with weight α · 3/4 · 1/3, so Q = 1 / (1 + α)."""
    bins, D, S = 4, 2, 6
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(S, 2, generator=gen)
    optimal = torch.randint(0, bins, (S, D), generator=gen)
    decoys = (optimal[:, 0] + torch.randint(1, bins, (S,), generator=gen)) % bins
    grid = torch.cartesian_prod(torch.arange(bins), torch.arange(bins))  # [16, 2]
    joint, which = grid.repeat(S, 1), torch.arange(S).repeat_interleave(len(grid))
    rewards = torch.where((joint == optimal[which]).all(-1), 1.0, torch.where(joint[:, 0] == decoys[which], decoy, 0.0))
    n = len(joint)
    ones = torch.ones(n, 1, dtype=torch.bool)
    batch = Batch(
        observations=states[which, None], next_observations=torch.zeros(n, 1, 2), actions=(joint[:, None] + 0.5) / 2 - 1,
        rewards=rewards[:, None], rtg=rewards[:, None], returns=rewards[:, None],
        timesteps=torch.zeros(n, 1, dtype=torch.long), terminals=ones, mask=ones,
    )
    torch.manual_seed(0)
    critic = ARQCritic(obs_dim=2, act_dim=D, action_low=[-1.0] * D, action_high=[1.0] * D, gamma=0.9, bins=bins,
                       backbone=GPT2Backbone(width=32, depth=2, heads=2, dropout=0.0), floor=0.0,
                       conservative_weight=alpha)
    assert torch.equal(critic.discretize(batch.actions[:, 0]), joint)
    backup = get_component("backup", "nstep-mc-max").target(gamma=0.9, n=1)
    optimizer = torch.optim.Adam(critic.net.parameters(), lr=1e-2)
    critic.train()
    for _ in range(150):
        loss, _ = critic_loss(critic, batch, backup)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        critic.update_target(0.1)
    critic.eval()
    chosen, value = critic.greedy(states)
    assert torch.equal(chosen, optimal), (chosen, optimal)
    assert ((value - 1.0 / (1.0 + alpha)).abs() < 0.05).all(), value
    if decoy:  # the first dimension's Q is a max over the second dimension, not a mean
        first = critic.next_q(states, torch.zeros(S, 0, dtype=torch.long))
        assert (first.gather(-1, optimal[:, :1]) > first.gather(-1, decoys[:, None]) + 0.2).all()


def test_window_loss_with_padding_history_and_bf16_autocast() -> None:
    critic = make_critic(bins=6, state_window=3).train()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)  # training windows: right padding
    batch = make_batch(2, 4, seed=5, mask=mask, returns=torch.zeros(2, 4))
    batch.observations[~mask] = 1e6  # padding never leaks into valid positions
    batch.next_observations[~mask] = 1e6
    backup = backup_component("nstep-mc-max", n=2)
    loss, metrics = critic_loss(critic, batch, backup)
    assert loss.isfinite() and all(v.isfinite() for v in metrics.values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, _ = critic_loss(critic, batch, backup)
        value = critic(batch.observations, batch.actions)
    assert loss16.dtype == torch.float32 and abs(float(loss16.detach()) - float(loss.detach())) < 0.1 * float(loss.detach())
    loss16.backward()
    assert value.shape == (critic.heads, 2, 4) and value[:, mask].isfinite().all()


# ----------------------------------------------------------------------------- speed paths of the loss
def reference_loss(
    critic: ARQCritic, batch: Batch, targets: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss as first written: a full target pass (Q̄_1 included) and a one-hot conservative mask."""
    from qtkit.backups.functional import autoregressive_targets, mc_lower_bound

    hist, hist_mask, bins, last, returns, _ = critic._select(batch.observations, batch.actions, targets, valid, batch)
    with torch.no_grad():
        q_target = critic._teacher_forced(critic.target_net, hist, hist_mask, bins).amin(0).float()
        y = autoregressive_targets(q_target, last.float())
        if returns is not None:
            y = mc_lower_bound(y, returns.float().unsqueeze(-1).expand_as(y))
    q = critic._teacher_forced(critic.net, hist, hist_mask, bins).float()
    q_data = q.gather(-1, bins.unsqueeze(0).expand(critic.heads, -1, -1).unsqueeze(-1)).squeeze(-1)
    loss = (0.5 * ((q_data - y) ** 2).sum(-1).mean(-1)).sum()
    others = 1.0 - torch.nn.functional.one_hot(bins, critic.bins).to(q.dtype)
    gap = (q - critic.floor_value) ** 2
    conservative = 0.5 * ((gap * others).sum(-1) / (critic.bins - 1)).sum(-1).mean(-1)
    loss = loss + critic.conservative_weight * conservative.sum()
    metrics = {"conservative_loss": conservative.sum().detach(), "target_mean": y[:, -1].mean(),
               "q_ood_mean": (q.detach() * others).sum() / (others.sum() * critic.heads)}
    return loss, metrics


@pytest.mark.parametrize(
    "params",
    [{}, {"act_dim": 1, "action_low": [-1.0], "action_high": [1.0]}, {"heads": 1, "dueling": True},
     {"state_window": 3, "floor": -0.7, "conservative_weight": 0.5}, {"mc_lower_bound": False, "floor": 0.3}],
)
def test_loss_equals_the_plain_computation(params: dict[str, Any]) -> None:
    """The target pass without Q̄_1's last layer and the scatter-based conservative term give the same
    loss, metrics and gradients as a full target pass and a one-hot mask."""
    act_dim = params.get("act_dim", ACT)
    critic = make_critic(bins=7, **params).train()  # dropout 0
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    actions = random_actions(3, 5, seed=2, margin=0.0)[..., :act_dim]
    batch = make_batch(3, 5, seed=6, mask=mask, returns=torch.rand(3, 5), actions=actions)
    backup = backup_component("nstep-mc-max", n=2)
    next_values, next_valid = critic.bootstrap(batch.observations, batch.next_observations, None, batch.mask)
    targets, valid = backup(batch, next_values, next_valid)
    grads = []
    for fn in (reference_loss, lambda c, b, t, v: c.loss(b.observations, b.actions, t, v, batch=b)):
        critic.net.zero_grad(set_to_none=True)
        loss, metrics = fn(critic, batch, targets, valid)
        loss.backward()
        grads.append((loss.detach(), metrics, [p.grad.clone() for p in critic.net.parameters() if p.grad is not None]))
    (want, want_metrics, want_grads), (got, got_metrics, got_grads) = grads
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for key in want_metrics:
        torch.testing.assert_close(got_metrics[key], want_metrics[key], rtol=1e-5, atol=1e-5, msg=key)
    assert len(got_grads) == len(want_grads)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    y = critic.dimension_targets(batch.observations, batch.actions, targets, valid, batch)
    assert y.shape == (3, 5, act_dim)


@pytest.mark.parametrize(
    "params",
    [{}, {"act_dim": 1, "action_low": [-1.0], "action_high": [1.0]}, {"heads": 1, "dueling": True},
     {"state_window": 3, "floor": -0.7, "conservative_weight": 0.5}, {"mc_lower_bound": False, "floor": 0.3},
     {"conservative_weight": 0.0}],
)
def test_static_shapes_train_like_the_selected_rows(params: dict[str, Any]) -> None:
    """``static_shapes`` (``train.sync_free``): every window position is computed and the invalid ones are masked,
    instead of selecting the valid rows: the same bootstrap values, loss, metrics and gradients (up to summation
    order), even with non-finite targets and returns at the invalid positions (tests/test_fast_path.py checks that
    a sync-free qtransformer step reads no tensor on the host)."""
    act_dim = params.get("act_dim", ACT)
    critic = make_critic(bins=7, **params).train()
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    batch = make_batch(3, 5, seed=6, mask=mask, returns=torch.rand(3, 5),
                       actions=random_actions(3, 5, seed=2, margin=0.0)[..., :act_dim])
    batch.returns[~mask] = math.nan  # what lies beyond a window's valid positions must not matter
    backup = backup_component("nstep-mc-max", n=2)
    runs = []
    for static in (False, True):
        critic.static_shapes = static
        critic.net.zero_grad(set_to_none=True)
        next_values, next_valid = critic.bootstrap(batch.observations, batch.next_observations, None, batch.mask)
        targets, valid = backup(batch, next_values, next_valid)
        targets = torch.where(valid, targets, math.nan)
        loss, metrics = critic.loss(batch.observations, batch.actions, targets, valid, batch=batch)
        loss.backward()
        runs.append((next_values, loss.detach(), metrics, [p.grad for p in critic.net.parameters()]))
    assert_same_critic_step(*runs)


def test_static_shapes_with_no_valid_position_give_a_zero_loss_and_zero_gradients() -> None:
    critic = make_critic()
    critic.static_shapes = True
    batch = make_batch(2, 3)
    invalid = torch.zeros(2, 3, dtype=torch.bool)
    values, valid = critic.bootstrap(batch.observations, batch.next_observations, None, invalid)
    assert (values == 0).all() and not valid.any()
    loss, metrics = critic.loss(batch.observations, batch.actions, torch.zeros(2, 3), invalid, batch=batch)
    loss.backward()
    assert float(loss.detach()) == 0.0 and all(v.isfinite() for v in metrics.values())
    assert all(float(p.grad.abs().max()) == 0.0 for p in critic.net.parameters() if p.grad is not None)


def test_the_floor_is_checked_once_per_value() -> None:
    """``_floor`` reads the buffer on the host only when it changed (prepare, loading): not at every step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Reads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            Reads.count += func._schema.name == "aten::_local_scalar_dense"
            return func(*args, **(kwargs or {}))

    critic = make_critic()
    with Reads():
        critic._floor()
        first = Reads.count
        critic._floor()
        critic._floor()
    assert first == 1 and Reads.count == 1
    critic.floor_value.fill_(math.nan)  # as an unresolved "auto" floor loaded from a state dict
    with pytest.raises(TrainingError, match="not resolved"):
        critic._floor()
    critic.load_state_dict(make_critic().state_dict())
    assert float(critic._floor()) == 0.0
