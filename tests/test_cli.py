"""The command line as a user runs it: list, show, train, eval, resume, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qtkit.cli import app
from tests.conftest import pendulum_dataset

runner = CliRunner()
TINY_SETS = ["--set", "backbone.width=32", "--set", "backbone.depth=1", "--set", "backbone.heads=2",
             "--set", "batch_size=8", "--set", "context=4", "--set", "log_every=2"]


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pendulum.npz"
    pendulum_dataset().to_npz(path)
    return path


def test_list_and_show() -> None:
    listed = runner.invoke(app, ["list", "presets"])
    assert listed.exit_code == 0 and "qt-gpt-nstep" in listed.output and "qtransformer" in listed.output
    shown = runner.invoke(app, ["show", "qt-gpt-nstep", "--set", "backup=one-step", "--set", "eta=2.5"])
    assert shown.exit_code == 0, shown.output
    assert "backup: {type: one-step}" in shown.output and "eta: 2.5" in shown.output


@pytest.mark.parametrize(("preset", "extra"), [("qt-gpt-nstep", ["--set", "critic.hidden=[16,16]", "--set", "ema_start=1"]),
                                              ("qtransformer", ["--set", "critic.bins=8"])])
def test_train_eval_and_resume(preset: str, extra: list[str], npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--preset", preset, "--dataset", str(npz), "--out", str(out), "--seed", "3",
            "--eval-episodes", "2", *TINY_SETS, *extra]
    trained = runner.invoke(app, [*args, "--steps", "3"])
    assert trained.exit_code == 0, trained.output
    assert "final: step 3, normalised" in trained.output and "best: step" in trained.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final"]["episodes"] == 2
    evaluated = runner.invoke(app, ["eval", str(out), "--episodes", "2", "--normalized"])
    assert evaluated.exit_code == 0, evaluated.output
    assert f"{preset}: return" in evaluated.output and "normalised score" in evaluated.output
    resumed = runner.invoke(app, [*args, "--steps", "3", "--resume"])  # a finished run: resumes at its end
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_errors_exit_nonzero_with_the_reason(npz: Path, tmp_path: Path) -> None:
    unknown = runner.invoke(app, ["train", "--preset", "qt-gpt-nsteps", "--dataset", str(npz), "--out", str(tmp_path)])
    assert unknown.exit_code != 0 and "qt-gpt-nstep" in unknown.output  # did-you-mean
    bad_set = runner.invoke(app, ["show", "qt-gpt-nstep", "--set", "critic.hiden=3"])
    assert bad_set.exit_code != 0 and "hidden" in bad_set.output
    missing = runner.invoke(app, ["train", "--preset", "dt-gpt", "--dataset", str(tmp_path / "nope.npz"),
                                  "--out", str(tmp_path / "r")])
    assert missing.exit_code != 0 and "nope.npz" in missing.output
    no_run = runner.invoke(app, ["eval", str(tmp_path / "no-run")])
    assert no_run.exit_code != 0 and "no-run" in no_run.output


def test_threads_option_sets_torch_threads_and_rejects_zero(npz: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the option sets it for child processes; restored after
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1  # differs from the current setting, so the assertion can fail
    try:
        args = ["train", "--preset", "dt-gpt", "--dataset", str(npz), "--out", str(tmp_path / "r"), "--steps", "1",
                "--no-eval", *TINY_SETS]
        trained = runner.invoke(app, [*args, "--threads", str(wanted)])
        assert trained.exit_code == 0, trained.output
        assert torch.get_num_threads() == wanted
        zero = runner.invoke(app, [*args, "--threads", "0"])
        assert zero.exit_code != 0 and "--threads must be >= 1" in zero.output
    finally:
        torch.set_num_threads(before)
