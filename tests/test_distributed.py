"""Data-parallel training (qtkit.training.distributed, issue 18): N ranks with B/N windows each train the same model
as one process with B; `qtkit train --nproc` survives a killed rank and a SIGTERM and resumes exactly; the batch must
split over the ranks.

The equivalence test runs ``agent.fit`` in two gloo processes (torch.multiprocessing spawn, a process group the test
initialises) against one process in the test itself; it trains with SGD (updates linear in the gradient) so that a
wrong gradient average, a wrong slice or a mean of per-rank means moves the weights far beyond the tolerance, while
float reduction order stays far below it.
"""

from __future__ import annotations

import csv
import datetime
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.distributed as dist

import qtkit
from qtkit.training import distributed
from tests.conftest import TINY_SETS, pendulum_dataset, pendulum_npz, pixel_dataset, run_qtkit, tiny

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

#: "+switch": that train switch on (sync_free: ar-q trains on every position, masked, with a tensor row count;
#: compile_step: the step through torch.compile's aot_eager backend, collectives inside the compiled losses)
PRESETS = ("qt-gpt-nstep", "qtransformer", "qtransformer+sync_free", "qt-gpt-nstep+compile_step")
BATCH = 8
STEPS = 5
#: the command-line run of the kill/resume test (the workers also train it uninterrupted, through agent.fit)
CLI_STEPS = 45
CLI_SETS = [*TINY_SETS, "--set", "log_every=10"]
CLI_ARGS = ["--preset", "qt-gpt-nstep", "--steps", str(CLI_STEPS), "--checkpoint-every", "3", "--eval-episodes", "1",
            *CLI_SETS, "--nproc", "2"]


def _overrides(name: str) -> dict[str, Any]:
    """Tiny sizes, no dropout (each rank has its own dropout stream), SGD with a large step (see the module doc)."""
    preset, _, switch = name.partition("+")
    out = tiny(preset)
    if switch:
        out[switch] = True
    if switch == "compile_step":
        out["compile_backend"] = "aot_eager"  # inductor would need minutes and a C compiler
    out["backbone"] = {**out["backbone"], "dropout": 0.0}
    out.update(batch_size=BATCH, log_every=2, optimizer="sgd", lr=0.05, scheduler="none")
    if preset.startswith("qt-"):
        out.update(policy={"embed_dropout": 0.0}, critic_lr=0.05)
    return out


def _train(name: str) -> dict[str, Any]:
    """Fit ``name`` (a preset, "+switch") STEPS steps on the Pendulum windows; the final weights and the
    observations of every batch."""
    data = pendulum_dataset()
    agent = qtkit.build(name.partition("+")[0], dataset=data, seed=0, device="cpu", **_overrides(name))
    batches: list[torch.Tensor] = []
    # compile_step: compiled here, as fit would (fit leaves a train_step set on the instance alone)
    step = agent._compiled_train_step() if agent.train_config.compile_step else agent.train_step
    graphs = _compiled_graphs()

    def recording(batch: Any, diagnose: bool = False) -> dict[str, float]:
        batches.append(batch.observations.clone())
        return step(batch, diagnose)

    agent.train_step = recording  # type: ignore[method-assign]
    agent.fit(data, steps=STEPS, progress=False)
    return {"weights": {k: v.clone() for k, v in agent.state_dict().items()}, "batches": batches,
            "graphs": _compiled_graphs() - graphs}


def _compiled_graphs() -> int:
    """How many graphs torch.compile has made in this process so far (0 before the first compile)."""
    import sys

    dynamo = sys.modules.get("torch._dynamo")
    return int(dynamo.utils.counters["stats"]["unique_graphs"]) if dynamo is not None else 0


def _train_like_the_cli(npz: str, log_dir: Path) -> None:
    """What ``qtkit train ... CLI_ARGS`` does in each rank, uninterrupted: agent.fit with the same config and
    schedule (the CLI's --set parsing, evaluation, checkpoints)."""
    from qtkit.cli import parse_sets
    from qtkit.data import load_dataset

    data = load_dataset(npz)
    agent = qtkit.build("qt-gpt-nstep", dataset=data, seed=0, **parse_sets(CLI_SETS[1::2]))
    agent.fit(data, steps=CLI_STEPS, eval_env=data, eval_episodes=1, log_dir=log_dir, checkpoint_every=3,
              progress=False)


def _non_finite_on_rank_1(**switches: Any) -> str | None:
    """A fit whose rank 1 alone sees a NaN reward at its second step; the error each rank raised (None: none)."""
    data = pendulum_dataset()
    agent = qtkit.build("qt-gpt-nstep", dataset=data, seed=0, device="cpu", **_overrides("qt-gpt-nstep"), **switches)
    step = agent.train_step

    def poisoned(batch: Any, diagnose: bool = False) -> dict[str, float]:
        if dist.get_rank() == 1 and agent.step == 1:
            batch.rewards[:] = float("nan")
        return step(batch, diagnose)

    agent.train_step = poisoned  # type: ignore[method-assign]
    try:
        agent.fit(data, steps=STEPS, progress=False)
    except qtkit.errors.TrainingError as exc:
        return f"{exc} [stopped at step {agent.step}]"
    return None


class _BrokenEnv(gym.Env):
    """Pendulum's spaces; every reset fails (an evaluation that fails on rank 0)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        raise qtkit.errors.DataError("the evaluation env is broken")


def _failing_evaluation() -> tuple[str, str] | None:
    """A fit whose final evaluation (rank 0's) fails; ``(error type, message)`` each rank raised (None: none)."""
    data = pendulum_dataset()
    agent = qtkit.build("qt-gpt-nstep", dataset=data, seed=0, device="cpu", **_overrides("qt-gpt-nstep"))
    try:
        agent.fit(data, steps=2, eval_env=_BrokenEnv(), eval_episodes=1, progress=False)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return None


def _equivalence_worker(rank: int, world: int, port: int, out: str, npz: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    result: dict[str, Any] = {preset: _train(preset) for preset in PRESETS}
    result["non_finite"] = _non_finite_on_rank_1()
    result["non_finite_sync_free"] = _non_finite_on_rank_1(sync_free=True)
    result["evaluation"] = _failing_evaluation()
    torch.save(result, Path(out) / f"rank{rank}.pt")
    _train_like_the_cli(npz, Path(out) / "cli")
    # as a rank of `qtkit train` ends: a barrier, the teardown, then os._exit (an error above is raised instead, and
    # torch.multiprocessing reports it)
    distributed.leave(0, together=True)


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> str:
    return pendulum_npz(tmp_path_factory.mktemp("data") / "p.npz")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory, npz: str) -> dict[str, Any]:
    """Two gloo ranks (B/2 windows each): both presets (``"ranks"``: by rank) and the command line's run,
    uninterrupted (``"cli"``: its run folder)."""
    import torch.multiprocessing as mp

    from qtkit.training.distributed import free_port

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_equivalence_worker, args=(2, free_port(), str(out), npz), nprocs=2, join=True)
    return {"ranks": [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], "cli": out / "cli"}


@pytest.mark.parametrize("preset", PRESETS)
def test_two_ranks_train_the_model_of_one_process_with_the_whole_batch(two_ranks: list, preset: str) -> None:
    one = _train(preset)
    rank0, rank1 = two_ranks["ranks"][0][preset], two_ranks["ranks"][1][preset]
    # one shared stream of windows: each rank trained on its half of the very batch one process draws
    assert len(rank0["batches"]) == len(rank1["batches"]) == len(one["batches"]) == STEPS
    for step, (a, b, whole) in enumerate(zip(rank0["batches"], rank1["batches"], one["batches"], strict=True)):
        assert a.shape[0] == b.shape[0] == BATCH // 2, step
        assert torch.equal(torch.cat([a, b]), whole), f"step {step}: the ranks' slices are not the global batch"
    if preset.endswith("+compile_step"):  # it did run compiled, in both settings
        assert rank0["graphs"] > 0 and rank1["graphs"] > 0 and one["graphs"] > 0, (rank0["graphs"], one["graphs"])
    # the same update on every rank, and the update of the whole batch up to float reduction order
    for key, value in one["weights"].items():
        assert torch.equal(rank0["weights"][key], rank1["weights"][key]), f"{preset} {key}: the ranks diverged"
        torch.testing.assert_close(rank0["weights"][key], value, atol=1e-5, rtol=0,
                                   msg=lambda m, key=key: f"{preset} {key}: 2 ranks x B/2 != 1 process x B: {m}")


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_that_step(two_ranks: dict) -> None:
    errors = [two_ranks["ranks"][r]["non_finite"] for r in range(2)]
    for error in errors:  # rank 0's loss was finite: it stops too, instead of waiting for rank 1 forever
        assert error is not None and "non-finite critic loss at step 1 on at least one of the 2 ranks" in error, errors
        assert error.endswith("[stopped at step 1]"), errors


def test_with_sync_free_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_check(two_ranks: dict) -> None:
    # no per-step agreement (no host read): each rank records the ranks' mean loss, NaN on both, and both raise at
    # the next logged step (log_every 2: step 2, the poisoned one)
    errors = [two_ranks["ranks"][r]["non_finite_sync_free"] for r in range(2)]
    assert errors[0] == errors[1], errors
    assert errors[0] is not None and "loss (nan) at step 2, found at step 2" in errors[0], errors
    assert errors[0].endswith("[stopped at step 2]"), errors


def test_rank_0_s_failing_evaluation_stops_every_rank(two_ranks: dict) -> None:
    errors = [two_ranks["ranks"][r]["evaluation"] for r in range(2)]
    assert errors[0] == errors[1] == ("DataError", "the evaluation env is broken"), errors  # rank 1 did not wait


def test_every_rank_of_a_node_picks_the_same_backend() -> None:
    """All local ranks agree on the backend (ranks that disagree never meet); NCCL only with a GPU per rank, each its
    own; more ranks than GPUs share them under gloo; no GPU: gloo on the CPU."""
    from qtkit.training.distributed import backend_for

    for gpus in range(4):
        for local_world in range(1, 6):
            picks = [backend_for(rank, local_world, gpus) for rank in range(local_world)]
            assert len({backend for backend, _ in picks}) == 1, (gpus, local_world, picks)
            backend, _ = picks[0]
            devices = [gpu for _, gpu in picks]
            if gpus == 0:
                assert picks == [("gloo", None)] * local_world
            elif "nccl" in backend:
                assert local_world <= gpus and devices == list(range(local_world))
            else:
                assert backend == "gloo" and local_world > gpus and all(0 <= d < gpus for d in devices)
    assert backend_for(1, 2, 1) == ("gloo", 0)  # --nproc 2 on one GPU: both ranks on it


def test_a_rank_s_slice_is_those_rows_of_the_global_batch() -> None:
    data = pendulum_dataset()
    for scheme in ("uniform", "reference", "inside"):
        whole = data.sample_windows(8, 4, torch.Generator().manual_seed(3), scheme=scheme)
        gen = torch.Generator().manual_seed(3)
        part = data.sample_windows(8, 4, gen, scheme=scheme, rows=slice(4, 8))
        assert part.observations.shape[0] == 4
        for name in ("observations", "actions", "rtg", "mask", "timesteps", "returns"):
            assert torch.equal(getattr(part, name), getattr(whole, name)[4:8]), (scheme, name)
        # the generator advanced as for the whole batch
        assert torch.equal(gen.get_state(), _after(data, scheme))
    frames = pixel_dataset()  # image windows with stacked frames: the same rows
    whole = frames.sample_windows(8, 3, torch.Generator().manual_seed(5), frame_stack=2)
    part = frames.sample_windows(8, 3, torch.Generator().manual_seed(5), frame_stack=2, rows=slice(0, 4))
    assert part.observations.shape == (4, 3, 2, *frames.obs_shape)
    assert torch.equal(part.observations, whole.observations[:4])
    assert torch.equal(part.next_observations, whole.next_observations[:4])


def _after(data: Any, scheme: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    data.sample_windows(8, 4, gen, scheme=scheme)
    return gen.get_state()


def test_batch_size_must_split_over_the_processes(npz: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from qtkit.cli import app

    result = CliRunner().invoke(app, ["train", "--preset", "qt-gpt-nstep", "--dataset", npz, "--out",
                                      str(tmp_path / "run"), *TINY_SETS, "--set", "batch_size=9", "--nproc", "2"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    for needle in ("error: train.batch_size=9 does not split over 2 processes", "--nproc 2", "--set batch_size=8"):
        assert needle in result.output, result.output
    assert not (tmp_path / "run").exists()  # refused before any process started
    from qtkit.training.distributed import check_batch_size

    with pytest.raises(qtkit.errors.ConfigError, match=r"train.batch_size=9 .* WORLD_SIZE=2"):
        check_batch_size(9, 2)  # what every rank checks (torchrun, agent.fit under a process group)
    check_batch_size(8, 2)


# ----------------------------------------------------------------------------- the launcher: which rank to blame
#: a stand-in for `python -m qtkit`: each rank runs the line of its RANK (the launcher appends no arguments here)
_RANKS_DO = ("import os, signal, sys, time; rank = int(os.environ['RANK']); "
             "exec(sys.argv[1:][rank].replace('; ', chr(10)))")


def _launch(*per_rank: str, grace_s: float = 5.0) -> tuple[int, list[str]]:
    from qtkit.training.distributed import launch

    said: list[str] = []
    code = launch(list(per_rank), len(per_rank), grace_s=grace_s, echo=said.append,
                  program=(sys.executable, "-c", _RANKS_DO))
    return code, said


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_the_launcher_names_the_rank_killed_by_a_signal_even_when_its_peer_is_seen_to_fail_first() -> None:
    # rank 1 is killed (as by the OOM killer); rank 0 loses it and exits 2 quickly, before the launcher sees rank 1
    # die (here: rank 0 exits first outright)
    code, said = _launch("sys.exit(2)", "time.sleep(0.3); os.kill(os.getpid(), signal.SIGKILL)")
    assert code == 1 and len(said) == 1 and "rank 1 of 2" in said[0] and "SIGKILL" in said[0], said


def test_the_launcher_names_the_first_rank_to_fail_and_stops_the_others_after_the_grace_period() -> None:
    start = time.monotonic()
    code, said = _launch("time.sleep(0.2); sys.exit(3)", "time.sleep(60)", "time.sleep(0.6); sys.exit(2)",
                         grace_s=1.0)
    assert code == 3 and len(said) == 1 and "rank 0 of 3" in said[0] and "exited with code 3" in said[0], said
    assert time.monotonic() - start < 20  # rank 1 was stopped after the grace period, not waited for
    assert _launch("sys.exit(2)", "sys.exit(2)") == (2, [])  # the ranks agree: their code, nothing to add
    assert _launch("pass", "pass") == (0, [])


def test_a_rank_ends_with_the_status_leave_was_given_with_or_without_the_teardown() -> None:
    join = ("from qtkit.training import distributed; dp = distributed.init_from_env(); "
            "assert dp is not None and distributed.world() == dp; distributed.barrier(); ")
    assert _launch(join + "distributed.leave(3, together=True)",
                   join + "distributed.leave(3, together=True)") == (3, [])
    code, said = _launch(join + "distributed.leave(0, together=False)", join + "distributed.leave(4, together=False)")
    assert code == 4 and "rank 1 of 2" in said[0] and "exited with code 4" in said[0], said



def test_a_script_that_joined_with_init_from_env_leaves_the_group_before_the_interpreter_ends(
        capfd: pytest.CaptureFixture[str]) -> None:
    # a rank that simply returns with the group alive can abort in the interpreter's finalisation (gloo's threads;
    # benchmarks/gloo_exit.py): init_from_env registers the teardown at exit. An exit hook registered before it
    # runs after it (last in, first out) and sees the group gone.
    probe = ("import atexit, torch.distributed as dist; "  # one write per line: the two ranks share stdout
             "atexit.register(lambda: os.write(1, f'initialised at exit: {dist.is_initialized()}\\n'.encode())); "
             "from qtkit.training import distributed; distributed.init_from_env(); dist.barrier()")
    assert _launch(probe, probe) == (0, [])
    assert capfd.readouterr().out.count("initialised at exit: False") == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_a_rank_that_stopped_on_an_agreed_interrupt_ignores_its_own_late_copy_of_the_signal() -> None:
    # the launcher forwards SIGTERM to every rank; when the ranks stopped on rank 0's copy, rank 1's copy may arrive
    # while rank 1 checkpoints and leaves the group: it must be neither a second interrupt nor fatal
    from qtkit.training import interrupts

    before = signal.getsignal(signal.SIGTERM)
    try:
        with interrupts.graceful_interrupts():
            interrupts.ignore_further_signals()
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal would raise KeyboardInterrupt here
            time.sleep(0.05)
            assert interrupts.pending() is None
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # ...and after the block, until the rank exits
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        with interrupts.graceful_interrupts():  # a new block listens again; without the call, handlers come back
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert interrupts.pending() == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # what it found
    finally:
        signal.signal(signal.SIGTERM, before)

# ----------------------------------------------------------------------------- the command line, killed and resumed
def _ranks(parent: int) -> dict[int, int]:
    """{rank: pid} of the launcher's children (Linux /proc)."""
    out = {}
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in map(int, children):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next(int(e.split(b"=", 1)[1]) for e in environ if e.startswith(b"RANK="))
        out[rank] = pid
    return out


def _wait(condition: Any, what: str, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoint" / "weights.safetensors"))


def _step(run: Path) -> int:
    return int(torch.load(run / "checkpoint" / "state.pt", weights_only=False)["step"])


def _popen(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "qtkit", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks in /proc")
def test_nproc_run_killed_and_interrupted_resumes_to_the_uninterrupted_weights(two_ranks: dict, npz: str,
                                                                                tmp_path: Path) -> None:
    steps = CLI_STEPS
    common = ["train", "--dataset", npz, *CLI_ARGS]
    full, run = two_ranks["cli"], tmp_path / "run"  # full: the same run by 2 ranks, uninterrupted

    # 1. rank 1 dies (SIGKILL) after the first checkpoint: the launcher stops rank 0 and names rank 1
    proc = _popen([*common, "--out", str(run)])
    _wait(lambda: (run / "checkpoint").is_dir() or proc.poll() is not None, "the first checkpoint")
    os.kill(_ranks(proc.pid)[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "rank 1 of 2" in err and "SIGKILL" in err and "--resume" in err and "--nproc 2" in err, err
    assert "Traceback" not in err, err
    killed_at = _step(run)
    assert 0 < killed_at < steps

    # 2. resumed, then SIGTERM to the launcher once it has checkpointed again: every rank stops at the same step
    inode = (run / "checkpoint").stat().st_ino
    proc = _popen([*common, "--out", str(run), "--resume"])
    _wait(lambda: not (run / "checkpoint").exists() or (run / "checkpoint").stat().st_ino != inode
          or proc.poll() is not None, "a checkpoint of the resumed run")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    command = err.split("resume with:")[-1].strip().splitlines()[0]
    assert "--nproc 2" in command and "--resume" in command, err
    assert killed_at < _step(run) < steps

    # 3. the printed command finishes the run with the very weights of the uninterrupted 2-process run
    resumed = run_qtkit(*shlex.split(command)[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert _step(run) == _step(full) == steps
    a, b = _weights(run), _weights(full)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # rank 0's metrics.csv: the losses averaged over the ranks, the same as the uninterrupted run's, once per step
    losses = {}
    for folder in (run, full):
        with (folder / "metrics.csv").open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["policy_loss"] and int(r["step"]) % 10 in (0, steps % 10)]
        losses[folder] = [(int(r["step"]), float(r["policy_loss"]), float(r["critic_loss"])) for r in rows]
    assert [step for step, *_ in losses[full]] == [10, 20, 30, 40, 45]
    assert losses[run] == losses[full]

    # 4. a 2-process checkpoint does not resume in one process
    from typer.testing import CliRunner

    from qtkit.cli import app

    assert common[-2:] == ["--nproc", "2"]
    one = CliRunner().invoke(app, [*common[:-2], "--out", str(run), "--resume"])
    assert one.exit_code == 2 and "trained with 2" in one.output and "--nproc 2" in one.output, one.output
