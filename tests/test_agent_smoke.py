"""Every QT-family preset trains, evaluates, saves, loads and resumes (CleanRL-style smoke runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import qtkit
from qtkit.data import TrajectoryDataset
from qtkit.errors import CheckpointError, DataError, ShapeMismatchError, TrainingError
from tests.conftest import TINY, eval_env, pendulum_dataset, pixel_dataset, pixel_env, tiny

PRESETS = qtkit.list_presets()


@pytest.fixture(scope="module")
def data() -> TrajectoryDataset:
    return pendulum_dataset()


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_fits_evaluates_and_reloads(preset: str, data: TrajectoryDataset, tmp_path: Path) -> None:
    env = eval_env
    if preset.endswith("-pixels"):  # pixel presets: uint8 frames of a tiny pixel task
        data, env = pixel_dataset(), pixel_env
    agent = qtkit.build(preset, dataset=data, **tiny(preset))
    result = agent.fit(data, steps=4, eval_env=env, eval_episodes=2, log_dir=tmp_path, progress=False)
    assert result["steps"] == 4
    assert np.isfinite(result["final"]["mean_return"]) and result["final"]["episodes"] == 2
    assert "normalized_score" in result["final"]
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "checkpoint" / "weights.safetensors").is_file()
    loaded = qtkit.load(tmp_path)
    assert loaded.config == agent.config
    for key, value in agent.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)
    obs = np.zeros((2, data.obs_dim), dtype=np.float32)
    a1 = agent.rollout(num_envs=2, seed=3).act(obs)
    a2 = loaded.rollout(num_envs=2, seed=3).act(obs)
    np.testing.assert_allclose(a1, a2, rtol=1e-5, atol=1e-6)
    assert (np.abs(a1) <= 2.0 + 1e-6).all()



@pytest.mark.parametrize(("preset", "keys"), [("qt-gpt-nstep", ("critic_loss", "bc_loss", "q_loss")),
                                             ("qtransformer", ("critic_loss", "td_loss", "conservative_loss"))])
def test_resume_continues_exactly(preset: str, keys: tuple[str, ...], data: TrajectoryDataset, tmp_path: Path) -> None:
    full = qtkit.build(preset, dataset=data, **tiny(preset))
    straight = full.fit(data, steps=6, progress=False)
    first = qtkit.build(preset, dataset=data, **tiny(preset))
    first.fit(data, steps=6, log_dir=tmp_path, checkpoint_every=3, progress=False, until=3)
    second = qtkit.load(tmp_path)
    resumed = second.fit(data, resume=tmp_path / "checkpoint", log_dir=tmp_path, progress=False)
    a = [r for r in straight["metrics"] if r["step"] in (4, 6)]
    b = [r for r in resumed["metrics"] if int(r["step"]) in (4, 6)]
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        for key in keys:
            assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-6, abs=1e-7), key


def test_shape_mismatch_names_both_shapes(data: TrajectoryDataset) -> None:
    agent = qtkit.build("dt-gpt", obs_dim=data.obs_dim + 1, act_dim=1, **tiny("dt-gpt"))
    with pytest.raises(ShapeMismatchError, match=r"obs_dim=4.*obs_dim=3"):
        agent.fit(data, steps=1, progress=False)


def test_resume_from_another_preset_is_refused(data: TrajectoryDataset, tmp_path: Path) -> None:
    qtkit.build("dt-gpt", dataset=data, **tiny("dt-gpt")).fit(data, steps=2, log_dir=tmp_path, progress=False)
    other = qtkit.build("qt-gpt-nstep", dataset=data, **TINY)
    with pytest.raises(CheckpointError, match="'dt-gpt'"):
        other.fit(data, resume=tmp_path / "checkpoint", progress=False)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data: TrajectoryDataset, tmp_path: Path) -> None:
    agent = qtkit.build("qt-gpt-nstep", dataset=data, **TINY)
    agent.fit(data, steps=2, log_dir=tmp_path, progress=False)
    good = (tmp_path / "checkpoint" / "weights.safetensors").read_bytes()
    with torch.no_grad():
        agent.critic.net[0].weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="non-finite"):
        agent.fit(data, resume=None, steps=4, log_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint" / "weights.safetensors").read_bytes() == good


def test_normalized_score_needs_reference_scores(tmp_path: Path) -> None:
    plain = pendulum_dataset(episodes=3)
    plain.metadata.pop("ref_min_score")
    plain.metadata.pop("ref_max_score")
    agent = qtkit.build("dt-gpt", dataset=plain, **tiny("dt-gpt"))
    agent.fit(plain, steps=1, progress=False)
    raw = agent.evaluate(eval_env, episodes=1)
    assert "normalized_score" not in raw and np.isfinite(raw["mean_return"])
    with pytest.raises(DataError, match=r"'pendulum' has no reference scores.*ref_min_score="):
        agent.evaluate(eval_env, episodes=1, normalized=True)


def test_seeded_runs_are_reproducible(data: TrajectoryDataset) -> None:
    runs = [qtkit.build("qt-gpt-nstep", dataset=data, seed=7, **TINY).fit(data, steps=3, progress=False) for _ in range(2)]
    untimed = [[{k: v for k, v in row.items() if k not in ("time_s", "steps_per_s")} for row in run["metrics"]]
               for run in runs]
    assert len(untimed[0]) == 2 and untimed[0] == untimed[1]


def test_compile_routes_the_training_forward_passes(data: TrajectoryDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[torch.nn.Module] = []
    options: list[dict[str, object]] = []

    def fake_compile(module: torch.nn.Module, **kwargs: object) -> object:
        compiled.append(module)
        options.append(kwargs)

        def call(*args: object, **kwargs: object) -> object:
            call.count += 1
            return module(*args, **kwargs)

        call.count = 0
        return call

    monkeypatch.setattr(torch, "compile", fake_compile)
    agent = qtkit.build("qt-gpt-nstep", dataset=data, compile=True, **TINY)
    agent.fit(data, steps=2, progress=False)
    assert compiled == [agent.policy, agent.critic]
    assert options == [{"backend": "inductor"}] * 2  # train.compile_backend / compile_mode (default mode: not passed)
    assert agent._policy_forward.count == 2 and agent._critic_forward.count == 2
    assert all(not k.startswith("_orig_mod") for k in agent.state_dict())  # checkpoints keep plain keys


def test_fit_uses_returns_discounted_with_the_agents_gamma(data: TrajectoryDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []
    agent = qtkit.build("qt-gpt-mc", dataset=data, gamma=0.5, **TINY)
    original = agent.train_step

    def spy(batch: object, diagnose: bool = False) -> dict:
        seen.append(batch)
        return original(batch, diagnose=diagnose)

    monkeypatch.setattr(agent, "train_step", spy)
    assert data.gamma != 0.5
    agent.fit(data, steps=1, progress=False)
    batch = seen[0]
    # returns follow G_t = r_t + 0.5 * G_{t+1} inside each window (where t+1 is valid and t not terminal)
    inner = batch.mask[:, :-1] & batch.mask[:, 1:] & ~batch.terminals[:, :-1].bool()
    expected = batch.rewards[:, :-1] + 0.5 * batch.returns[:, 1:]
    torch.testing.assert_close(batch.returns[:, :-1][inner], expected[inner])
