"""The shared training loop (qtkit/training/loop.py) on a stand-in learner: schedule, logging, evaluations,
checkpoints, ``until`` chunks, final/best results, summary.json and the non-finite-loss error; and that the
agent families and the peers are siblings on it (no family subclasses another)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qtkit.errors import TrainingError
from qtkit.training import Schedule, Trainable, summarize, train


class Counter:
    """A learner whose loss is its step; evaluations return the scores given; saves record the step."""

    def __init__(self, scores: list[float | None] | None = None, fail_at: int | None = None) -> None:
        self.step = 0
        self.eval_history: list[dict[str, Any]] = []
        self.scores = list(scores or [])
        self.fail_at = fail_at
        self.diagnosed: list[int] = []
        self.saved: list[int] = []
        self.modes: list[str] = []

    def train_step(self, batch: Any, diagnose: bool = False) -> dict[str, float]:
        if self.step + 1 == self.fail_at:
            raise TrainingError(f"non-finite critic loss (nan) at step {self.step}")
        self.step += 1
        if diagnose:
            self.diagnosed.append(self.step)
        return {"loss": float(self.step), "batch": float(batch)}

    def evaluate(self, env: Any, episodes: int, seed: int) -> dict[str, Any]:
        self.modes.append("eval")
        score = self.scores.pop(0) if self.scores else None
        result: dict[str, Any] = {"mean_return": float(10 * self.step), "episodes": episodes, "seed": seed,
                                  "returns": [1.0]}
        if score is not None:
            result["normalized_score"] = score
        return result

    def train_mode(self) -> None:
        self.modes.append("train")

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.saved.append(self.step)


def test_the_agents_and_the_peer_adapter_satisfy_the_protocol() -> None:
    import qtkit
    from qtkit.agents import QTAgent, QTransformerAgent
    from qtkit.peers.d3rlpy_runners import _PeerLearner

    for cls in (QTAgent, QTransformerAgent, _PeerLearner, Counter):
        for name in ("train_step", "evaluate", "train_mode", "save"):
            assert callable(getattr(cls, name)), (cls, name)
    assert not issubclass(QTransformerAgent, QTAgent) and not issubclass(QTAgent, QTransformerAgent)
    agent: Trainable = qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=1)
    assert agent.step == 0 and agent.eval_history == []


def test_schedule_logs_evaluates_and_checkpoints_when_it_says(tmp_path: Path) -> None:
    learner = Counter(scores=[20.0, 50.0, 30.0, 40.0])
    batches = iter(range(100, 200))
    schedule = Schedule(steps=10, log_every=3, eval_every=4, eval_episodes=2, eval_seed=7, checkpoint_every=5)
    summary = train(learner, lambda: next(batches), schedule, eval_env="env", log_dir=tmp_path, progress=False)
    assert learner.step == summary["steps"] == 10
    assert learner.diagnosed == [3, 6, 9, 10]  # every log_every steps and the last one
    train_rows = [r for r in summary["metrics"] if "loss" in r]
    assert [r["step"] for r in train_rows] == [3, 6, 9, 10]
    assert [r["batch"] for r in train_rows] == [102.0, 105.0, 108.0, 109.0]  # one batch per step, in order
    assert [e["step"] for e in learner.eval_history] == [4, 8, 10]  # every eval_every steps and at the end
    assert all(e["episodes"] == 2 and e["seed"] == 7 and "returns" not in e for e in learner.eval_history)
    assert learner.modes == ["eval", "train"] * 3  # back to training after each evaluation
    assert learner.saved == [5, 10, 10]  # every checkpoint_every steps, at the end before the final evaluation and after it
    assert summary["final"]["step"] == 10 and summary["best"]["step"] == 8  # best normalised score (50)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["best"] == summary["best"] and saved["evaluations"] == summary["evaluations"]
    assert "metrics" not in saved and (tmp_path / "metrics.csv").is_file()


def test_until_stops_early_and_the_next_call_continues(tmp_path: Path) -> None:
    learner = Counter()
    schedule = Schedule(steps=6, until=4, log_every=100)
    first = train(learner, lambda: 0, schedule, log_dir=tmp_path, progress=False)
    assert learner.step == first["steps"] == 4 and learner.saved == [4] and learner.diagnosed == [4]
    second = train(learner, lambda: 0, Schedule(steps=6, log_every=100), log_dir=tmp_path, progress=False)
    assert learner.step == second["steps"] == 6 and learner.saved == [4, 6]
    assert [int(r["step"]) for r in second["metrics"]] == [4, 6]  # metrics.csv kept the first chunk's rows (read back as text)


def test_without_evaluations_or_log_dir_nothing_is_written(tmp_path: Path) -> None:
    learner = Counter()
    summary = train(learner, lambda: 0, Schedule(steps=3, log_every=1), progress=False)
    assert summary["final"] is None and summary["best"] is None and learner.saved == []
    assert list(tmp_path.iterdir()) == []


def test_best_falls_back_to_mean_return_without_normalised_scores() -> None:
    history = [{"step": 1, "mean_return": 5.0}, {"step": 2, "mean_return": 9.0}, {"step": 3, "mean_return": 1.0}]
    summary = summarize(3, history, [])
    assert summary["best"]["step"] == 2 and summary["final"]["step"] == 3
    assert summarize(0, [], [])["best"] is None


def test_non_finite_loss_names_the_last_checkpoint(tmp_path: Path) -> None:
    learner = Counter(fail_at=4)
    with pytest.raises(TrainingError, match=r"non-finite.*The last good checkpoint is in .*"):
        train(learner, lambda: 0, Schedule(steps=6, checkpoint_every=2), log_dir=tmp_path, progress=False)
    assert learner.saved == [2] and learner.step == 3
    with pytest.raises(TrainingError) as info:
        train(Counter(fail_at=1), lambda: 0, Schedule(steps=2), progress=False)
    assert "checkpoint" not in str(info.value)


def test_resume_is_exact_after_an_evaluation_with_a_dropout_critic(tmp_path: Path) -> None:
    """Regression: after an evaluation during fit only the policy went back to training mode, so an ar-q critic
    trained without dropout from then on and a resumed run (critic in training mode) diverged."""
    import gymnasium as gym

    import qtkit
    from tests.conftest import pendulum_dataset, tiny

    data = pendulum_dataset()

    def env() -> gym.Env:
        return gym.make("Pendulum-v1", max_episode_steps=10)

    kwargs: dict[str, Any] = {"eval_env": env, "eval_every": 2, "eval_episodes": 1, "progress": False}
    straight = qtkit.build("qtransformer", dataset=data, device="cpu", **tiny("qtransformer"))
    straight.fit(data, steps=6, **kwargs)
    first = qtkit.build("qtransformer", dataset=data, device="cpu", **tiny("qtransformer"))
    first.fit(data, steps=6, log_dir=tmp_path, until=3, **kwargs)
    resumed = qtkit.load(tmp_path)
    resumed.fit(data, resume=tmp_path / "checkpoint", log_dir=tmp_path, **kwargs)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(bool((a[k] == b[k]).all()) for k in a)


def test_a_checkpoint_from_an_older_qtkit_resumes_when_only_new_defaults_differ(tmp_path: Path) -> None:
    """A parameter added to qtkit after a checkpoint was written (absent from its config.yaml) counts as its default:
    the run resumes. A value the run did set differently is still refused, named. (Regression: the pixels-options
    sweep's checkpoints, written before the issue-18 train switches existed, could not be resumed.)"""
    import yaml

    import qtkit
    from qtkit.errors import CheckpointError
    from tests.conftest import pendulum_dataset, tiny

    data = pendulum_dataset()
    agent = qtkit.build("qt-gpt-nstep", dataset=data, device="cpu", **tiny("qt-gpt-nstep"))
    agent.fit(data, steps=4, log_dir=tmp_path, until=2, progress=False)
    config_file = tmp_path / "checkpoint" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    for key in ("sync_free", "device_windows", "critic_encoder"):  # as an older qtkit wrote it
        del config["train"][key]
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    resumed = qtkit.load(tmp_path)
    resumed.fit(data, steps=4, resume=tmp_path / "checkpoint", log_dir=tmp_path, progress=False)
    assert resumed.step == 4
    config["train"]["batch_size"] = 16  # a value the run set differently: refused, named
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(CheckpointError, match=r"train.batch_size: 16 in the checkpoint, 8 now"):
        fresh = qtkit.build("qt-gpt-nstep", dataset=data, device="cpu", **tiny("qt-gpt-nstep"))
        fresh.fit(data, steps=6, resume=tmp_path / "checkpoint", log_dir=tmp_path, progress=False)
