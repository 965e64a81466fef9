"""d3rlpy peers: TrajectoryDataset -> MDPDataset conversion, tiny fits, resume, missing-extra errors."""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from qtkit.data import TrajectoryDataset
from qtkit.peers import fit_peer, list_peers, mdp_arrays, resolve_peer_params
from qtkit.peers.d3rlpy_runners import require_d3rlpy

TINY = {
    "d3rlpy-dt": {"batch_size": 8, "context_size": 4, "width": 16, "num_layers": 1, "warmup_steps": 2, "log_every": 2},
    "d3rlpy-iql": {"batch_size": 8, "hidden": [16, 16], "log_every": 2},
    "d3rlpy-td3bc": {"batch_size": 8, "hidden": [16, 16], "log_every": 2},
}


def mixed_dataset(seed: int = 0) -> TrajectoryDataset:
    """Episodes that terminate and episodes that are truncated, with distinct values everywhere."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i, (length, terminated) in enumerate([(5, True), (3, False), (1, False), (4, True), (6, False)]):
        terms = np.zeros(length, dtype=bool)
        truncs = np.zeros(length, dtype=bool)
        (terms if terminated else truncs)[-1] = True
        episodes.append({
            "observations": rng.normal(size=(length + 1, 3)).astype(np.float32) + 10 * i,
            "actions": rng.uniform(-1, 1, size=(length, 2)).astype(np.float32),
            "rewards": rng.normal(size=length).astype(np.float32),
            "terminations": terms, "truncations": truncs,
        })
    return TrajectoryDataset.from_episodes(episodes, metadata={"dataset_id": "mixed"})


def dataset_transitions(ds: TrajectoryDataset) -> list[tuple]:
    out = []
    for ep in ds:
        for t in range(len(ep)):
            terminal = bool(ep.terminations[t])
            next_obs = np.zeros_like(ep.observations[t + 1]) if terminal else ep.observations[t + 1]
            out.append((ep.observations[t].tolist(), ep.actions[t].tolist(), float(ep.rewards[t]),
                        next_obs.tolist(), terminal))
    return out


def test_mdp_arrays_keep_terminals_and_timeouts_apart() -> None:
    ds = mixed_dataset()
    arrays = mdp_arrays(ds, keep_final_observation=True)
    # 19 steps + one final-observation row for each of the 3 truncated episodes
    assert len(arrays["observations"]) == ds.num_steps + 3
    assert arrays["terminals"].sum() == 2 and arrays["timeouts"].sum() == 3
    assert not np.any(arrays["terminals"] * arrays["timeouts"])
    seq = mdp_arrays(ds, keep_final_observation=False)
    assert len(seq["observations"]) == ds.num_steps
    np.testing.assert_array_equal(seq["actions"], ds.actions)
    np.testing.assert_array_equal(seq["rewards"], ds.rewards)
    ends = np.cumsum(ds.episode_lengths) - 1
    np.testing.assert_array_equal(np.flatnonzero(seq["terminals"] + seq["timeouts"]), ends)
    np.testing.assert_array_equal(seq["terminals"][ends].astype(bool), ds.terminations[ends])


def test_mdp_dataset_has_the_same_transitions() -> None:
    pytest.importorskip("d3rlpy", reason="needs the bench extra: pip install 'qtkit[bench]'")
    from qtkit.peers import to_mdp_dataset

    ds = mixed_dataset()
    mdp = to_mdp_dataset(ds, keep_final_observation=True)
    assert mdp.transition_count == ds.num_steps
    assert [ep.terminated for ep in mdp.episodes] == [True, False, False, True, False]
    got = []
    for ep in mdp.episodes:
        for t in range(ep.transition_count):
            tr = mdp.transition_picker(ep, t)
            got.append((tr.observation.tolist(), tr.action.tolist(), float(np.ravel(tr.reward)[0]),
                        tr.next_observation.tolist(), bool(np.ravel(tr.terminal)[0])))
    want = dataset_transitions(ds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g[0], w[0])
        np.testing.assert_allclose(g[1], w[1])
        assert g[2] == pytest.approx(w[2])
        np.testing.assert_allclose(g[3], w[3])
        assert g[4] == w[4]
    seq = to_mdp_dataset(ds, keep_final_observation=False)
    # d3rlpy drops an episode with no transition (here the 1-step truncated one) from a sequence dataset
    assert [ep.size() for ep in seq.episodes] == [5, 3, 4, 6]


def test_peer_params_validate_with_suggestions() -> None:
    assert set(list_peers()) == {"d3rlpy-dt", "d3rlpy-iql", "d3rlpy-td3bc"}
    params = resolve_peer_params("d3rlpy-iql", {"expectile": 0.9})
    assert params["expectile"] == 0.9 and params["weight_temp"] == 3.0  # the reproduction script's values
    assert resolve_peer_params("d3rlpy-dt")["context_size"] == 20
    with pytest.raises(Exception, match="Did you mean 'alpha'"):
        resolve_peer_params("d3rlpy-td3bc", {"alpah": 2.0})
    with pytest.raises(Exception, match="Did you mean 'd3rlpy-iql'"):
        resolve_peer_params("d3rlpy-iqll")


def test_missing_d3rlpy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "d3rlpy", None)
    with pytest.raises(ImportError, match=r"qtkit\[bench\]"):
        require_d3rlpy()


@pytest.fixture(scope="module")
def pendulum() -> TrajectoryDataset:
    from tests.conftest import pendulum_dataset

    return pendulum_dataset()


def short_pendulum() -> gym.Env:
    return gym.make("Pendulum-v1", max_episode_steps=10)


@pytest.mark.parametrize("peer", ["d3rlpy-dt", "d3rlpy-iql", "d3rlpy-td3bc"])
def test_tiny_peer_fit_writes_a_run_folder(peer: str, pendulum: TrajectoryDataset, tmp_path: Path) -> None:
    pytest.importorskip("d3rlpy", reason="needs the bench extra: pip install 'qtkit[bench]'")
    import json

    summary = fit_peer(peer, pendulum, 4, seed=1, params=TINY[peer], eval_env=short_pendulum, eval_every=2,
                       eval_episodes=2, log_dir=tmp_path)
    assert summary["steps"] == 4
    assert [e["step"] for e in summary["evaluations"]] == [2, 4]
    final = summary["final"]
    assert final["episodes"] == 2 and np.isfinite(final["normalized_score"])
    assert final["normalized_score"] == pytest.approx(100 * (final["mean_return"] + 1500) / 1500)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["final"]["normalized_score"] == pytest.approx(final["normalized_score"])
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("step,")
    assert (tmp_path / "checkpoint" / "model.d3").is_file()


def test_peer_resume_continues_exactly(pendulum: TrajectoryDataset, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("d3rlpy", reason="needs the bench extra: pip install 'qtkit[bench]'")
    from qtkit.peers import d3rlpy_runners

    params = {**TINY["d3rlpy-td3bc"], "log_every": 1}
    straight = fit_peer("d3rlpy-td3bc", pendulum, 4, seed=3, params=params, log_dir=tmp_path / "a")

    original, calls = d3rlpy_runners._Setup.sample, []

    def interrupted(self: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(d3rlpy_runners._Setup, "sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit_peer("d3rlpy-td3bc", pendulum, 4, seed=3, params=params, log_dir=tmp_path / "b", checkpoint_every=2)
    monkeypatch.setattr(d3rlpy_runners._Setup, "sample", original)
    resumed = fit_peer("d3rlpy-td3bc", pendulum, 4, seed=3, params=params, log_dir=tmp_path / "b",
                       resume=tmp_path / "b" / "checkpoint")
    assert resumed["steps"] == 4
    a = {int(r["step"]): float(r["critic_loss"]) for r in straight["metrics"]}
    b = {int(r["step"]): float(r["critic_loss"]) for r in resumed["metrics"]}
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert b[step] == pytest.approx(a[step], rel=1e-5)
