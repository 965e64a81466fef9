"""Runs that survive, through the real command line: a SIGKILLed run resumes bit-identically, SIGINT/SIGTERM
checkpoint and print the exact resume command, finished runs say so, --steps extends a run, metrics.csv time
continues, --out folders holding a run are protected (--overwrite replaces them), filesystem failures are one
message with the previous checkpoint intact, and the final checkpoint is saved before the final evaluation."""

from __future__ import annotations

import csv
import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_SETS, assert_clean_failure, pendulum_npz, run_qtkit

STEPS = 200  # long enough that a signal sent at the first checkpoint (step 10) arrives well before the end


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Pendulum dataset (4 episodes of 12 steps) whose evaluation env has 10-step episodes."""
    return pendulum_npz(tmp_path_factory.mktemp("data") / "pendulum.npz")


def long_run(npz: str, out: Path) -> list[str]:
    return ["train", "--preset", "dt-gpt", "--dataset", npz, "--out", str(out), "--steps", str(STEPS), "--seed", "1",
            "--no-eval", "--checkpoint-every", "10", *TINY_SETS]


@pytest.fixture(scope="module")
def reference(npz: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The final weights of the uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_qtkit(*long_run(npz, out))
    assert result.returncode == 0, result.stderr
    return load_file(str(out / "checkpoint" / "weights.safetensors"))


def start_and_signal(npz: str, out: Path, signum: int) -> subprocess.CompletedProcess:
    """Start the long run, wait for its first checkpoint, send ``signum``, wait for the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "qtkit", *long_run(npz, out)], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint" / "state.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.002)
    os.kill(process.pid, signum)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def checkpoint_step(out: Path) -> int:
    return int(torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"])


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different[:5]}"


def metric_times(out: Path) -> list[tuple[int, float]]:
    with (out / "metrics.csv").open(newline="") as handle:
        return [(int(float(r["step"])), float(r["time_s"])) for r in csv.DictReader(handle)]


def assert_time_continues(out: Path, before: int, after: int) -> None:
    """The row at ``after`` (first logged in the resumed session) has time_s = the time at ``before`` (the resume
    point) + the resumed session's own time, (after - before) / steps_per_s: not restarted at 0."""
    with (out / "metrics.csv").open(newline="") as handle:
        rows = {int(float(r["step"])): r for r in csv.DictReader(handle) if r.get("steps_per_s")}
    session = (after - before) / float(rows[after]["steps_per_s"])
    offset = float(rows[before]["time_s"])
    assert offset > 0
    assert float(rows[after]["time_s"]) == pytest.approx(offset + session, rel=0.02, abs=0.005)


def test_a_sigkilled_run_resumes_bit_identically(npz: str, reference: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = start_and_signal(npz, out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    step = checkpoint_step(out)
    assert 0 < step < STEPS, step  # killed mid-run, a complete checkpoint left
    resumed = run_qtkit(*long_run(npz, out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} at step {step} of {STEPS}" in resumed.stdout
    assert checkpoint_step(out) == STEPS
    assert_same_weights(load_file(str(out / "checkpoint" / "weights.safetensors")), reference)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".checkpoint.")]  # no leftovers of the kill


def test_sigint_checkpoints_prints_the_resume_command_and_that_command_finishes_exactly(
        npz: str, reference: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    interrupted = start_and_signal(npz, out, signal.SIGINT)
    assert interrupted.returncode == 130, interrupted.stderr
    assert "Traceback" not in interrupted.stderr
    step = checkpoint_step(out)
    assert 0 < step < STEPS
    assert f"interrupted by SIGINT at step {step}; checkpoint saved in {out / 'checkpoint'}" in interrupted.stderr
    command = interrupted.stderr.split("resume with:")[1].strip().splitlines()[0]
    words = shlex.split(command)
    assert words[:2] == ["qtkit", "train"] and words[-1] == "--resume"
    resumed = run_qtkit(*words[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(load_file(str(out / "checkpoint" / "weights.safetensors")), reference)
    times = metric_times(out)  # a row at the step it stopped; time continues across the resume, not from 0
    assert [s for s, _ in times] == [step, 100, 200] and times[0][1] > 0
    assert_time_continues(out, step, 100)


def test_sigterm_checkpoints_and_exits_143(npz: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    stopped = start_and_signal(npz, out, signal.SIGTERM)
    assert stopped.returncode == 143, stopped.stderr
    assert "interrupted by SIGTERM" in stopped.stderr and "--resume" in stopped.stderr
    assert 0 < checkpoint_step(out) < STEPS


def test_finished_runs_say_so_more_steps_extend_and_the_final_evaluation_is_announced(npz: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--preset", "dt-gpt", "--dataset", npz, "--out", str(out), "--eval-episodes", "1", *TINY_SETS]
    first = run_qtkit(*args, "--steps", "6")
    assert first.returncode == 0, first.stderr
    assert "evaluating 1 episodes at step 6" in first.stderr
    again = run_qtkit(*args, "--steps", "6", "--resume")
    assert again.returncode == 0 and "already finished: step 6 of 6" in again.stdout, again.stdout + again.stderr
    assert "final: step 6" in again.stdout
    longer = run_qtkit(*args, "--steps", "10", "--resume")
    assert longer.returncode == 0, longer.stderr
    assert "changing its length from 6 to 10 steps" in longer.stdout and "final: step 10" in longer.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 10 and [e["step"] for e in summary["evaluations"]] == [6, 10]
    assert_time_continues(out, 6, 10)


def test_overwrite_replaces_the_old_run_and_keeps_other_files(npz: str, tmp_path: Path) -> None:
    import qtkit
    from qtkit.data import load_dataset

    out = tmp_path / "run"
    data = load_dataset(npz)
    agent = qtkit.build("dt-gpt", dataset=data, backbone={"width": 16, "depth": 1, "heads": 1, "mlp_dim": 32},
                        batch_size=8, context=4, log_every=1)
    agent.fit(data, 3, log_dir=out, progress=False)
    old_events = {p.name for p in (out / "tensorboard").iterdir()}
    (out / "notes.txt").write_text("mine\n")
    refused = run_qtkit("train", "--preset", "dt-gpt", "--dataset", npz, "--out", str(out), "--steps", "2",
                        "--no-eval", *TINY_SETS)
    assert_clean_failure(refused, "already holds a run", "--overwrite")
    replaced = run_qtkit("train", "--preset", "dt-gpt", "--dataset", npz, "--out", str(out), "--steps", "2",
                         "--no-eval", "--overwrite", *TINY_SETS)
    assert replaced.returncode == 0, replaced.stderr
    assert "--overwrite: removed the old run" in replaced.stdout
    assert not old_events & {p.name for p in (out / "tensorboard").iterdir()}  # the old event files are gone
    assert json.loads((out / "summary.json").read_text())["steps"] == 2 and checkpoint_step(out) == 2
    assert [s for s, _ in metric_times(out)] == [2]  # the old run's metrics are gone
    assert (out / "notes.txt").read_text() == "mine\n"


# ----------------------------------------------------------------------------- in-process: injected failures
@pytest.mark.parametrize(("code", "cause"), [(errno.ENOSPC, "the disk is full"),
                                             (errno.EROFS, "the filesystem is read-only"),
                                             (errno.EACCES, "permission denied")])
def test_a_write_failure_is_one_message_and_the_previous_checkpoint_survives(
        code: int, cause: str, npz: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing the second checkpoint fails (disk full, read-only, permissions: injected, since the tests may run as
    root and a real full disk is not at hand): exit 2, the path and the cause, the first checkpoint intact."""
    import safetensors.torch
    from typer.testing import CliRunner

    from qtkit.checkpoint import read_checkpoint
    from qtkit.cli import app

    real_save, calls = safetensors.torch.save_file, []

    def failing_save(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise OSError(code, os.strerror(code))
        real_save(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--preset", "dt-gpt", "--dataset", npz, "--out", str(out), "--steps",
                                      "4", "--checkpoint-every", "2", "--no-eval", *TINY_SETS])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert cause in result.output and str(out / "checkpoint") in result.output
    _, _, state = read_checkpoint(out / "checkpoint")
    assert state["step"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint.")]  # the failed attempt cleaned up


def test_the_final_checkpoint_is_saved_before_the_final_evaluation(npz: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from qtkit.agents.base import Agent
    from qtkit.checkpoint import read_checkpoint
    from qtkit.cli import app
    from qtkit.errors import ConfigError

    def broken_evaluate(self: Agent, *args: object, **kwargs: object) -> dict:
        raise ConfigError("the evaluation env crashed")

    monkeypatch.setattr(Agent, "evaluate", broken_evaluate)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--preset", "dt-gpt", "--dataset", npz, "--out", str(out), "--steps",
                                      "3", *TINY_SETS])
    assert result.exit_code == 2, result.output
    assert "the evaluation env crashed" in result.output and f"saved in {out / 'checkpoint'}" in result.output
    assert read_checkpoint(out / "checkpoint")[2]["step"] == 3


def test_default_checkpoint_interval() -> None:
    from qtkit.cli import default_checkpoint_every

    assert [default_checkpoint_every(n) for n in (1, 9, 10, 95, 5000, 100_000)] == [1, 1, 1, 10, 500, 1000]
