"""Unit tests of QT formulas that only the smoke tests exercised (docs/algorithms.md §1, §2, §3.1, §3.2, §4.1, §5).

Every expectation is recomputed independently (plain Python loops or hand formulas), never with the code under test.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import Tensor, nn

import qtkit
from qtkit.data import TrajectoryDataset
from qtkit.policies.base import Policy
from qtkit.samplers.base import RolloutContext
from tests.conftest import CONTEXT, TINY, build_component, pendulum_dataset


def ready_agent(data: TrajectoryDataset, **overrides: object) -> qtkit.agents.qt.QTAgent:
    """A tiny qt-gpt-nstep agent on CPU with its statistics and optimizers, at step 0 (what fit does before training)."""
    agent = qtkit.build("qt-gpt-nstep", dataset=data, **{**TINY, "device": "cpu", **overrides})
    agent.prepare(data)
    agent.to("cpu")
    agent.make_optimizers(100)
    return agent


def padded_batch(data: TrajectoryDataset, agent: object, seed: int, lengths: list[int]) -> object:
    """A batch of len(lengths) windows of K=4 whose row b keeps at most lengths[b] valid positions (right padding)."""
    batch = data.sample_windows(len(lengths), 4, torch.Generator().manual_seed(seed), rtg_scale=agent.train_config.rtg_scale)
    keep = torch.arange(4).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return dataclasses.replace(batch, mask=batch.mask & keep)


# ---------------------------------------------------------------------------------------------- §4.1 L_Q


def test_lq_is_the_normalised_masked_mean_with_a_detached_denominator(monkeypatch: pytest.MonkeyPatch) -> None:
    """L_Q = -mean_V Q_i / sg(mean_V |Q_j|), (i, j) from the agent's generator; d(eta L_Q)/d â = -eta w_i / (|V| den)."""
    data = pendulum_dataset(episodes=4, length=12)
    eta = 2.0
    agent = ready_agent(data, eta=eta)
    B, K = 8, 4
    w = [1.5, -0.75]  # Q_e(s, a) = w_e * a + offset_e: linear in the (1-D) action
    gen = torch.Generator().manual_seed(7)
    offsets = torch.stack((3.0 + torch.rand(B, K, generator=gen), -4.0 + torch.rand(B, K, generator=gen)))
    seen: dict[str, Tensor] = {}

    def linear_critic(states: Tensor, actions: Tensor) -> Tensor:
        hooked = actions * 1.0  # its gradient is the Q path's only (the BC loss uses `actions`, not `hooked`)
        hooked.register_hook(lambda g: seen.__setitem__("grad", g.detach().clone()))
        seen["actions"] = actions.detach().clone()
        return torch.stack((w[0] * hooked[..., 0], w[1] * hooked[..., 0])) + seen["offsets"]

    monkeypatch.setattr(agent, "_critic_forward", linear_critic)
    orders = set()
    for step in range(6):
        batch = padded_batch(data, agent, seed=step, lengths=[4, 3, 2, 1, 4, 2, 3, 1])
        mask = batch.mask
        off = offsets.clone()
        off[0][~mask] = 1000.0  # padding that would change both means if it counted
        off[1][~mask] = -5000.0
        seen["offsets"] = off
        mirror = torch.Generator()
        mirror.set_state(agent.generator.get_state())
        perm = torch.randperm(2, generator=mirror).tolist()
        i, j = perm[0], perm[-1]
        orders.add((i, j))

        metrics = agent.train_step(batch)

        a = seen["actions"]
        valid = [(b, k) for b in range(B) for k in range(K) if bool(mask[b, k])]
        n = len(valid)

        q = {(e, b, k): w[e] * float(a[b, k, 0]) + float(off[e, b, k]) for e in (0, 1) for b, k in valid}
        num = sum(q[i, b, k] for b, k in valid) / n
        den = max(sum(abs(q[j, b, k]) for b, k in valid) / n, 1e-6)
        assert metrics["q_loss"] == pytest.approx(-num / den, rel=1e-5)
        expected_grad = torch.zeros(B, K, 1)
        for b, k in valid:
            expected_grad[b, k, 0] = -eta * w[i] / (n * den)
        torch.testing.assert_close(seen["grad"], expected_grad, rtol=1e-5, atol=1e-9)
    assert orders == {(0, 1), (1, 0)}  # the pair is drawn, not fixed


# ---------------------------------------------------------------------------------------------- §3.2 EMA policy


def test_bootstrap_actions_come_from_the_ema_policy_in_eval_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pendulum_dataset(episodes=4, length=12)
    agent = ready_agent(data, backbone={**TINY["backbone"], "dropout": 0.5}, policy={"embed_dropout": 0.5},
                        ema_every=3, ema_start=100, lr=1e-2)
    agent.policy.train()
    agent.critic.train()
    batch = data.sample_windows(8, 4, torch.Generator().manual_seed(0), rtg_scale=agent.train_config.rtg_scale)
    states = agent.standardize(batch.observations)
    args = (states, batch.actions, batch.rtg, batch.timesteps, batch.mask)
    assert not agent.ema_policy.training
    with torch.no_grad():
        torch.testing.assert_close(agent.ema_policy(*args)[0], agent.ema_policy(*args)[0], rtol=0, atol=0)
        assert not torch.equal(agent.policy(*args)[0], agent.policy(*args)[0])  # dropout 0.5 is active in train mode

    captured: list[Tensor] = []
    original = agent.critic.bootstrap

    def spy(states: Tensor, next_states: Tensor, policy_actions: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        captured.append(policy_actions.detach().clone())
        return original(states, next_states, policy_actions, mask)

    monkeypatch.setattr(agent.critic, "bootstrap", spy)
    for step in range(2):  # step 2: the policy has moved, the EMA copy not yet (ema_every 3)
        frozen = copy.deepcopy(agent.ema_policy).eval()
        with torch.no_grad():
            expected = frozen(*args)[0]
        agent.train_step(batch)
        torch.testing.assert_close(captured[step], expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(captured[1], agent.policy.eval()(*args)[0], atol=1e-4)  # not the online policy
    assert not agent.ema_policy.training


def test_ema_copies_before_ema_start_and_averages_every_ema_every_steps_after() -> None:
    data = pendulum_dataset(episodes=4, length=12)
    decay, every, start = 0.5, 2, 4
    agent = ready_agent(data, ema_decay=decay, ema_every=every, ema_start=start, lr=1e-2)
    names = [name for name, _ in agent.policy.named_parameters()]
    ema = {name: p.detach().double().clone() for name, p in agent.policy.named_parameters()}  # the copy made at build
    gen = torch.Generator().manual_seed(3)
    for step in range(1, 10):
        batch = data.sample_windows(8, 4, gen, rtg_scale=agent.train_config.rtg_scale)
        agent.train_step(batch)
        theta = {name: p.detach().double().clone() for name, p in agent.policy.named_parameters()}
        if step % every == 0:
            d = decay if step >= start else 0.0
            ema = {name: d * ema[name] + (1.0 - d) * theta[name] for name in names}
        got = dict(agent.ema_policy.named_parameters())
        for name in names:
            torch.testing.assert_close(got[name].double(), ema[name], rtol=0, atol=2e-6, msg=f"step {step}: {name}")
        gap = max(float((ema[name] - theta[name]).abs().max()) for name in names)
        if step == 2:
            assert gap == 0.0  # before ema_start: a plain copy at the update steps
        if step >= 4:
            assert gap > 1e-3  # after: a real average, far from the policy


# ---------------------------------------------------------------------------------------------- §3.1 TD loss


def _plain_td_loss(critic: nn.Module, states: Tensor, actions: Tensor, targets: Tensor, valid: Tensor) -> float:
    """Σ_e 1/|V| Σ_V (Q_e(s, a) - y)², with Q_e evaluated by a plain per-member MLP from the weights."""
    linears = [m for m in critic.net if hasattr(m, "weight") and m.weight.dim() == 3]
    B, K = valid.shape
    cells = [(b, k) for b in range(B) for k in range(K) if bool(valid[b, k])]
    total = 0.0
    for e in range(critic.ensemble):
        err = 0.0
        for b, k in cells:
            x = torch.cat((states[b, k], actions[b, k])).double()
            for n, layer in enumerate(linears):
                x = x @ layer.weight[e].double() + layer.bias[e, 0].double()
                if n < len(linears) - 1:
                    x = x * torch.tanh(torch.log1p(torch.exp(x)))  # Mish
            err += (float(x[0].detach()) - float(targets[b, k])) ** 2
        total += err / len(cells)
    return total


def _td_inputs(garbage: float) -> tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]:
    critic = build_component("critic", {"type": "twin-mlp", "hidden": [8, 8]})
    gen = torch.Generator().manual_seed(0)
    B, K = 3, 4
    states = torch.randn(B, K, CONTEXT["obs_dim"], generator=gen)
    actions = torch.rand(B, K, CONTEXT["act_dim"], generator=gen)
    targets = torch.randn(B, K, generator=gen)
    valid = torch.tensor([[True, True, False, False], [True, True, True, True], [False, True, False, True]])
    targets[~valid] = garbage
    return critic, states, actions, targets, valid


def test_twin_critic_td_loss_sums_members_of_the_mean_over_valid_targets() -> None:
    critic, states, actions, targets, valid = _td_inputs(garbage=1.0e3)  # would dominate if it counted
    loss, metrics = critic.loss(states, actions, targets, valid)
    expected = _plain_td_loss(critic, states, actions, targets, valid)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["critic_loss"]) == pytest.approx(expected, rel=1e-5)


def test_masked_mean_of_l_q_ignores_nan_at_padded_positions() -> None:
    from qtkit.agents.qt import _masked_mean

    x = torch.tensor([[1.0, 3.0, float("nan")], [5.0, float("nan"), float("inf")]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert float(_masked_mean(x, mask)) == pytest.approx(3.0)


def test_twin_critic_td_loss_ignores_nan_at_invalid_targets() -> None:
    """Regression: the loss multiplied by the validity mask, so a NaN target at an invalid position (NaN * 0 = NaN)
    made the whole loss NaN; invalid targets may hold anything."""
    critic, states, actions, targets, valid = _td_inputs(garbage=float("nan"))
    loss, _ = critic.loss(states, actions, targets, valid)
    expected = _plain_td_loss(critic, states, actions, targets, valid)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------- §5 rtg-grid


class RTGPolicy(Policy):
    """A stand-in policy whose action at a position is the row's return-to-go there (1-D actions)."""

    def forward(self, states: Tensor, actions: Tensor, rtg: Tensor, timesteps: Tensor, mask: Tensor) -> tuple[Tensor, None]:
        return rtg.unsqueeze(-1).clone(), None


class FixedScores(nn.Module):
    """A stand-in critic whose candidate scores (raw reward units) are given."""

    def __init__(self, scores: Tensor) -> None:
        super().__init__()
        self.scores = scores

    def score(self, states: Tensor, actions: Tensor) -> Tensor:
        assert actions.shape[:2] == self.scores.shape
        return self.scores.clone()


def rtg_grid(**params: object) -> object:
    return build_component("sampler", {"type": "rtg-grid", **params})


def test_rtg_grid_rows_repeat_the_targets_in_order_and_only_extra_rows_get_noise() -> None:
    sampler = rtg_grid(candidates=8, noise_std=0.3)
    envs, scale = 4000, 10.0
    rtg = sampler.initial_rtg(envs, [30.0, 20.0, 10.0], scale, torch.Generator().manual_seed(0))
    assert rtg.shape == (envs, 8)
    base = torch.tensor([3.0, 2.0, 1.0, 3.0, 2.0, 1.0, 3.0, 2.0])  # targets / scale, cycled in order
    assert torch.equal(rtg[:, :3], base[:3].expand(envs, 3))  # one noise-free row per target
    noise = (rtg[:, 3:] - base[3:]).double()
    assert float(noise.std()) == pytest.approx(0.3, rel=0.1)
    for row in range(5):
        assert float(noise[:, row].std()) == pytest.approx(0.3, rel=0.1)
        assert abs(float(noise[:, row].mean())) < 0.03
    assert len(set(noise[:, 0].tolist())) > envs // 2  # drawn per environment
    few = rtg_grid(candidates=2, noise_std=0.3).initial_rtg(3, [30.0, 20.0, 10.0], scale, torch.Generator())
    assert torch.equal(few, torch.tensor([[3.0, 2.0]] * 3))  # fewer rows than targets: the first ones, no noise


def test_q_rtg_row_writes_the_best_score_in_scaled_units_to_the_last_row() -> None:
    sampler = rtg_grid(candidates=4, q_rtg_row=True, selection="argmax")
    assert sampler.rtg_scale == CONTEXT["rtg_scale"] == 10.0
    E, K = 2, 3
    gen = torch.Generator().manual_seed(0)
    ctx = RolloutContext(states=torch.zeros(E, K, CONTEXT["obs_dim"]), actions=torch.zeros(E, K, 1),
                         timesteps=torch.zeros(E, K, dtype=torch.long), mask=torch.ones(E, K, dtype=torch.bool),
                         rtg=torch.randn(E, 4, K, generator=gen))
    before = ctx.rtg.clone()
    scores = torch.tensor([[5.0, 40.0, -3.0, 12.0], [-7.0, -2.0, -9.0, -4.0]])
    actions, row = sampler.select(RTGPolicy(), FixedScores(scores), ctx, gen)
    assert row.tolist() == [1, 1]
    expected = before.clone()
    expected[0, 3, 2] = 40.0 / 10.0
    expected[1, 3, 2] = -2.0 / 10.0
    torch.testing.assert_close(ctx.rtg, expected, rtol=0, atol=0)
    torch.testing.assert_close(actions[:, 0], before[:, 1, -1])  # the chosen row's action


def test_q_rtg_row_next_rtg_subtracts_the_reward_in_scaled_units(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pendulum_dataset(episodes=4, length=12)
    agent = ready_agent(data, sampler={"candidates": 4, "q_rtg_row": True, "targets": [-100.0, -200.0]})
    scale = agent.train_config.rtg_scale
    scores = torch.tensor([[-50.0, -20.0, -70.0, -90.0], [-300.0, -250.0, -400.0, -260.0]])
    monkeypatch.setattr(agent.critic, "score", FixedScores(scores).score)
    rollout = agent.rollout(num_envs=2, seed=0)
    start = rollout.current_rtg.clone()
    rollout.act(np.zeros((2, data.obs_dim), dtype=np.float32))
    rewards = np.array([-3.0, -5.0], dtype=np.float32)
    rollout.observe(rewards, np.array([False, False]))
    assert rollout.current_rtg[:, -1].tolist() == pytest.approx([(-20.0 + 3.0) / scale, (-250.0 + 5.0) / scale])
    torch.testing.assert_close(rollout.current_rtg[:, :-1], start[:, :-1] - torch.from_numpy(rewards)[:, None] / scale)


def test_softmax_selection_frequencies_follow_softmax_of_q_over_temperature() -> None:
    temperature, E, N = 2.0, 20000, 4
    sampler = rtg_grid(candidates=N, selection="softmax", temperature=temperature)
    raw = [1.0, 2.0, 0.0, 3.5]
    ctx = RolloutContext(states=torch.zeros(E, 1, CONTEXT["obs_dim"]), actions=torch.zeros(E, 1, 1),
                         timesteps=torch.zeros(E, 1, dtype=torch.long), mask=torch.ones(E, 1, dtype=torch.bool),
                         rtg=torch.arange(N, dtype=torch.float32).view(1, N, 1).repeat(E, 1, 1))
    actions, row = sampler.select(RTGPolicy(), FixedScores(torch.tensor([raw] * E)), ctx, torch.Generator().manual_seed(0))
    torch.testing.assert_close(actions[:, 0], row.float())  # the action returned is the chosen row's
    z = sum(math.exp(s / temperature) for s in raw)
    for n in range(N):
        frequency = float((row == n).double().mean())
        assert frequency == pytest.approx(math.exp(raw[n] / temperature) / z, abs=0.012), n


def test_argmax_selection_picks_the_best_candidate() -> None:
    sampler = rtg_grid(candidates=5, selection="argmax")
    E = 50
    scores = torch.randn(E, 5, generator=torch.Generator().manual_seed(1))
    ctx = RolloutContext(states=torch.zeros(E, 1, CONTEXT["obs_dim"]), actions=torch.zeros(E, 1, 1),
                         timesteps=torch.zeros(E, 1, dtype=torch.long), mask=torch.ones(E, 1, dtype=torch.bool),
                         rtg=torch.arange(5, dtype=torch.float32).view(1, 5, 1).repeat(E, 1, 1))
    _, row = sampler.select(RTGPolicy(), FixedScores(scores), ctx, torch.Generator())
    best = [max(range(5), key=lambda n, e=e: float(scores[e, n])) for e in range(E)]
    assert row.tolist() == best


# ---------------------------------------------------------------------------------------------- §2 timestep embedding


def test_timestep_embedding_is_initialised_normal_with_std_0_02() -> None:
    torch.manual_seed(0)
    policy = build_component("policy", "gpt")
    weight = policy.embed_timestep.weight.detach().double()
    assert weight.numel() >= 1000 * 32
    assert float(weight.std()) == pytest.approx(0.02, rel=0.1)
    assert abs(float(weight.mean())) < 0.002


# ---------------------------------------------------------------------------------------------- §1 observation statistics


def stats_dataset() -> tuple[TrajectoryDataset, list[np.ndarray]]:
    """Three episodes; dimension 2 is constant (std 0) and every final observation is an outlier."""
    rng = np.random.default_rng(0)
    episodes, observations = [], []
    for T in (5, 7, 4):
        obs = np.stack((rng.normal(2.0, 3.0, T + 1), rng.normal(-1.0, 0.5, T + 1), np.full(T + 1, 4.0)), axis=1)
        obs[-1] = 1000.0
        observations.append(obs.astype(np.float32))
        episodes.append({"observations": observations[-1], "actions": rng.uniform(-1, 1, (T, 1)).astype(np.float32),
                         "rewards": rng.normal(size=T).astype(np.float32)})
    data = TrajectoryDataset.from_episodes(episodes, action_space=spaces.Box(-1.0, 1.0, (1,), np.float32),
                                           metadata={"dataset_id": "stats"})
    return data, observations


def plain_stats(observations: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Mean and population std (+ 1e-6) over o_0 ... o_{T-1} of every episode, by plain sums."""
    rows = [[float(x) for x in o] for obs in observations for o in obs[:-1]]
    n, dims = len(rows), len(rows[0])
    mean = [sum(r[d] for r in rows) / n for d in range(dims)]
    std = [math.sqrt(sum((r[d] - mean[d]) ** 2 for r in rows) / n) + 1e-6 for d in range(dims)]
    return mean, std


def test_observation_statistics_come_from_the_dataset_and_standardize_uses_them(monkeypatch: pytest.MonkeyPatch) -> None:
    data, observations = stats_dataset()
    mean, std = plain_stats(observations)
    assert std[2] == 1e-6
    agent = qtkit.build("qt-gpt-nstep", dataset=data, **{**TINY, "device": "cpu"})
    agent.prepare(data)
    torch.testing.assert_close(agent.obs_mean, torch.tensor(mean, dtype=torch.float32), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(agent.obs_std, torch.tensor(std, dtype=torch.float32), rtol=1e-5, atol=0.0)

    fitted = qtkit.build("qt-gpt-nstep", dataset=data, **{**TINY, "device": "cpu"})
    fitted.fit(data, steps=1, progress=False)
    torch.testing.assert_close(fitted.obs_mean, agent.obs_mean, rtol=0, atol=0)
    torch.testing.assert_close(fitted.obs_std, agent.obs_std, rtol=0, atol=0)

    x = torch.tensor([[0.5, -2.0, 4.0], [7.0, 0.0, 4.25]])
    by_hand = torch.tensor([[(float(x[r, d]) - mean[d]) / std[d] for d in range(3)] for r in range(2)])
    torch.testing.assert_close(fitted.standardize(x).double(), by_hand.double(), rtol=1e-5, atol=1e-5)

    seen: list[Tensor] = []
    forward = fitted._policy_forward

    def spy(states: Tensor, *args: object, **kwargs: object) -> object:
        seen.append(states.detach().clone())
        return forward(states, *args, **kwargs)

    monkeypatch.setattr(fitted, "_policy_forward", spy)
    batch = data.sample_windows(4, 4, torch.Generator().manual_seed(0), rtg_scale=fitted.train_config.rtg_scale)
    fitted.train_step(batch)
    valid = batch.mask
    raw = batch.observations[valid].double()
    expected = (raw - torch.tensor(mean, dtype=torch.float64)) / torch.tensor(std, dtype=torch.float64)
    torch.testing.assert_close(seen[0][valid].double(), expected, rtol=1e-4, atol=1e-3)
