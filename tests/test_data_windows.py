"""Training windows: every field checked against the episodes, properties, sampling distribution."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qtkit.data import Batch, TrajectoryDataset
from qtkit.data.windows import SCHEMES, episode_weights


def build(lengths: list[int], terminal: list[bool], obs_dim: int = 2, act_dim: int = 1, gamma: float = 0.9,
          seed: int = 0) -> TrajectoryDataset:
    """Episodes whose observation column 0 encodes (episode, step) as 1000 * episode + step."""
    rng = np.random.default_rng(seed)
    eps = []
    for i, (T, term) in enumerate(zip(lengths, terminal)):
        obs = rng.normal(size=(T + 1, obs_dim)).astype(np.float32)
        obs[:, 0] = 1000 * i + np.arange(T + 1)
        eps.append({
            "observations": obs,
            "actions": rng.uniform(-1, 1, size=(T, act_dim)),
            "rewards": rng.normal(size=T) * 3,
            "terminations": np.r_[np.zeros(T - 1, bool), term],
            "truncations": np.r_[np.zeros(T - 1, bool), not term],
        })
    return TrajectoryDataset.from_episodes(eps, gamma=gamma)


def check_batch(ds: TrajectoryDataset, b: Batch, K: int, scale: float) -> None:
    """Every property a window must have, checked against the dataset's episodes."""
    B = b.batch_size
    obs_dim, act_dim = ds.obs_dim, ds.act_dim
    assert b.context == K
    shapes = {"observations": (B, K, obs_dim), "next_observations": (B, K, obs_dim), "actions": (B, K, act_dim),
              "rewards": (B, K), "rtg": (B, K), "returns": (B, K), "timesteps": (B, K), "terminals": (B, K),
              "mask": (B, K)}
    for name, shape in shapes.items():
        assert tuple(getattr(b, name).shape) == shape, name
    for name in ("observations", "next_observations", "actions", "rewards", "rtg", "returns"):
        assert getattr(b, name).dtype == torch.float32, name
    assert b.timesteps.dtype == torch.long and b.terminals.dtype == torch.bool and b.mask.dtype == torch.bool

    mask = b.mask.numpy()
    # the valid positions are a prefix of every row (right padding), never empty
    assert mask[:, 0].all()
    assert (mask[:, 1:] <= mask[:, :-1]).all()
    pad = ~mask
    for name in ("observations", "next_observations", "actions"):
        assert (getattr(b, name).numpy()[pad] == 0).all(), name
    for name in ("rewards", "rtg", "returns", "timesteps"):
        assert (getattr(b, name).numpy()[pad] == 0).all(), name
    assert not b.terminals.numpy()[pad].any()

    obs, nxt = b.observations.numpy(), b.next_observations.numpy()
    ts = b.timesteps.numpy()
    both = mask[:, 1:] & mask[:, :-1]
    # timesteps go up by one along valid positions; o_{t+1} is the next position's o
    assert (np.diff(ts, axis=1)[both] == 1).all()
    np.testing.assert_array_equal(nxt[:, :-1][both], obs[:, 1:][both])
    # RTG: consecutive valid positions differ by the reward over the scale
    rtg, rew, ret = b.rtg.numpy(), b.rewards.numpy(), b.returns.numpy()
    np.testing.assert_allclose((rtg[:, :-1] - rtg[:, 1:])[both], (rew[:, :-1] / scale)[both], rtol=1e-4, atol=1e-4)
    # discounted recurrence G_t = r_t + gamma (1 - term_t) G_{t+1} within the window
    term = b.terminals.numpy()
    rhs = rew[:, :-1] + ds.gamma * (1 - term[:, :-1]) * ret[:, 1:]
    np.testing.assert_allclose(ret[:, :-1][both], rhs[both], rtol=1e-4, atol=1e-4)

    # each valid position is exactly step t of one episode (no window crosses an episode)
    code = obs[..., 0].astype(np.int64)
    episode, step = code // 1000, code % 1000
    assert (episode[:, 1:] == episode[:, :-1])[both].all(), "a window crosses episodes"
    e, t = episode[mask], step[mask]
    assert (t < ds.episode_lengths[e]).all()
    np.testing.assert_array_equal(t, ts[mask])
    orow, srow = ds.episode_offsets[e] + e + t, ds.episode_offsets[e] + t
    np.testing.assert_array_equal(obs[mask], ds.observations[orow])
    np.testing.assert_array_equal(nxt[mask], ds.observations[orow + 1])
    np.testing.assert_array_equal(b.actions.numpy()[mask], ds.actions[srow])
    np.testing.assert_array_equal(rew[mask], ds.rewards[srow])
    np.testing.assert_array_equal(term[mask], ds.terminations[srow])
    rtg_true = np.concatenate([np.cumsum(ep.rewards[::-1].astype(np.float64))[::-1] for ep in ds])
    np.testing.assert_allclose(rtg[mask], rtg_true[srow] / scale, rtol=1e-4, atol=1e-4)
    # a window that reaches its episode's end: G_{T-1} = r_{T-1}
    at_end = t == ds.episode_lengths[e] - 1
    np.testing.assert_allclose(ret[mask][at_end], rew[mask][at_end], rtol=1e-5, atol=1e-5)


episode_lists = st.lists(st.tuples(st.integers(1, 30), st.booleans()), min_size=1, max_size=6)


@given(
    episodes=episode_lists,
    K=st.integers(1, 25),
    batch_size=st.integers(1, 24),
    scheme=st.sampled_from(SCHEMES),
    scale=st.sampled_from([1.0, 10.0, 0.5]),
    gamma=st.sampled_from([0.0, 0.9, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_window_properties(episodes: list[tuple[int, bool]], K: int, batch_size: int, scheme: str, scale: float,
                           gamma: float, seed: int) -> None:
    ds = build([T for T, _ in episodes], [term for _, term in episodes], gamma=gamma, seed=seed)
    b = ds.sample_windows(batch_size, K, np.random.default_rng(seed), rtg_scale=scale, scheme=scheme)
    check_batch(ds, b, K, scale)
    if scheme == "inside":  # full windows whenever the episode is long enough
        lengths = ds.episode_lengths[(b.observations[:, 0, 0].numpy() // 1000).astype(int)]
        np.testing.assert_array_equal(b.mask.sum(1).numpy(), np.minimum(lengths, K))


@given(episodes=episode_lists, gamma=st.sampled_from([0.0, 0.5, 0.99, 1.0]))
def test_dataset_returns_satisfy_the_recurrence(episodes: list[tuple[int, bool]], gamma: float) -> None:
    ds = build([T for T, _ in episodes], [term for _, term in episodes], gamma=gamma)
    G, r = ds.returns.astype(np.float64), ds.rewards.astype(np.float64)
    alive = 1.0 - ds.terminations
    last = np.zeros(ds.num_steps, bool)
    last[ds.episode_offsets[1:] - 1] = True
    inner = ~last[:-1]  # t and t+1 in the same episode
    np.testing.assert_allclose(G[:-1][inner], (r[:-1] + gamma * alive[:-1] * G[1:])[inner], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(G[last], r[last], rtol=1e-5, atol=1e-5)
    rtg = ds.rtg.astype(np.float64)
    np.testing.assert_allclose((rtg[:-1] - rtg[1:])[inner], r[:-1][inner], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rtg[last], r[last], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rtg[ds.episode_offsets[:-1]], ds.episode_returns, rtol=1e-4, atol=1e-4)


def episode_and_step_counts(ds: TrajectoryDataset, K: int, scheme: str, draws: int, seed: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    ep_counts = np.zeros(ds.num_episodes)
    step_counts = np.zeros(ds.num_steps)
    per_call = 20_000
    for _ in range(draws // per_call):
        b = ds.sample_windows(per_call, K, rng, scheme=scheme)
        code = b.observations[..., 0].numpy().astype(np.int64)
        mask = b.mask.numpy()
        ep_counts += np.bincount(code[:, 0] // 1000, minlength=ds.num_episodes)
        rows = ds.episode_offsets[code // 1000] + code % 1000
        step_counts += np.bincount(rows[mask], minlength=ds.num_steps)
    return ep_counts / ep_counts.sum(), step_counts


def test_uniform_scheme_covers_every_step_equally() -> None:
    lengths, K = [3, 12, 40, 90], 10
    ds = build(lengths, [True, False, True, False])
    freq, steps = episode_and_step_counts(ds, K, "uniform", 200_000, seed=0)
    np.testing.assert_allclose(freq, episode_weights(np.array(lengths), K, "uniform"), atol=0.01)
    # each step is in K of the sum(T + K - 1) placements
    expected = 200_000 * K / sum(T + K - 1 for T in lengths)
    assert np.abs(steps / expected - 1).max() < 0.1


@pytest.mark.parametrize("scheme", ["reference", "inside"])
def test_other_schemes_draw_episodes_proportional_to_length(scheme: str) -> None:
    lengths, K = [5, 20, 50, 125], 8
    ds = build(lengths, [False] * 4)
    freq, steps = episode_and_step_counts(ds, K, scheme, 200_000, seed=1)
    np.testing.assert_allclose(freq, np.array(lengths) / sum(lengths), atol=0.01)
    np.testing.assert_allclose(episode_weights(np.array(lengths), K, scheme), np.array(lengths) / sum(lengths))
    last = ds.episode_offsets[3]  # the long episode: its first step is under-covered, its middle is not
    if scheme == "reference":
        assert steps[last] < 0.3 * steps[last + 60]
    else:
        assert steps[last] < 0.3 * steps[last + 60] and steps[last + 124] < 0.3 * steps[last + 60]


def test_generators_seeds_and_device() -> None:
    ds = build([7, 30, 2], [True, False, False])
    a = ds.sample_windows(16, 5, 123)
    b = ds.sample_windows(16, 5, 123)
    for name, value in a.as_dict().items():
        assert torch.equal(value, getattr(b, name)), name
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    c, d = ds.sample_windows(16, 5, g1), ds.sample_windows(16, 5, g2)
    assert torch.equal(c.observations, d.observations)
    check_batch(ds, c, 5, 1.0)
    assert not torch.equal(ds.sample_windows(16, 5, g1).observations, c.observations)  # the generator advanced
    rng = np.random.default_rng(0)
    check_batch(ds, ds.sample_windows(8, 40, rng, rtg_scale=100.0), 40, 100.0)  # K longer than every episode
    check_batch(ds, ds.sample_windows(8, 3), 3, 1.0)  # no generator: fresh entropy
    moved = ds.sample_windows(4, 3, 0, device="cpu")
    assert moved.observations.device.type == "cpu"


def test_batch_is_independent_of_the_dataset() -> None:
    ds = build([10], [True])
    b = ds.sample_windows(4, 5, 0)
    b.observations += 1.0  # writable tensors that do not alias the dataset
    np.testing.assert_array_equal(ds.episode(0).observations[:, 0], np.arange(11))
