"""Data-parallel training on ``torch.distributed``: N processes train one model on one global batch.

How it works (the README's "Multi-process and multi-node training" is the user's view):

- **One batch stream.** Every rank holds the same batch generator (same seed, same state, restored from the same
  checkpoint) and draws the window starts of the whole global batch ``train.batch_size`` = B; rank r keeps rows
  ``[r B/N, (r+1) B/N)`` (:func:`shard_rows`) and gathers only those. Every other random draw of a training step
  that uses the agent's generator (QT's critic members) is therefore the same on every rank.
- **Gradients: a manual bucketed all-reduce**, not ``DistributedDataParallel``. A QT step has two optimisers, an
  EMA policy, target networks and a critic forward pass inside the policy loss (with the critic's weights
  frozen for it), and a family may call :meth:`~qtkit.agents.base.Agent.step_optimizer` any number of times per
  step; DDP's hooks assume one forward and one backward per wrapped module per step and would have to wrap the
  policy and the critic separately with ``find_unused_parameters``. Instead
  :func:`average_gradients` runs in the one place every update happens, after ``loss.backward()`` and before the
  gradient clip: each (device, dtype) bucket of gradients is flattened, all-reduced once and divided by N.
- **Exact means.** A loss that is a mean over valid positions is not the mean of the ranks' means when their
  counts differ. The losses divide by :func:`mean_denominator` (masked means) or use :func:`row_mean`
  (means over rows): during data-parallel training these divide the local sum by (global count / N), so the
  average over ranks of the local losses, and of their gradients, is exactly the global batch's mean.
  :func:`rank_mean` gives a detached statistic's global value (QT's ``sg(mean |Q|)`` normaliser). Logged metrics
  are averaged over ranks (:func:`average_metrics`): the losses then are the global batch's; diagnostics such as
  correlations are the mean of the ranks' values.
- **Rank 0 writes** the checkpoint (with every rank's torch RNG state, for an exact resume), ``metrics.csv``,
  TensorBoard, ``summary.json`` and the progress bar. **Evaluation runs on rank 0 only**; the others wait for its
  result (:func:`on_main`), so every rank keeps the same evaluation history.
- **Agreement.** Whatever makes a rank stop is agreed on by all: a non-finite loss on any rank
  (:func:`check_finite`), a SIGINT/SIGTERM received by any rank (:func:`agree_signal`), an evaluation error.

Single-process training never enters this module's collective paths: every helper is the identity (or the very
same arithmetic as before) when no data-parallel run is active, so single-process numbers are unchanged bit for bit.

Launching: ``qtkit train --nproc N`` (:func:`launch`: N local processes, monitored), ``torchrun`` (the ranks read
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``: :func:`init_from_env`), or
``agent.fit(...)`` in a process group the caller initialised.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch
from torch import Tensor

from qtkit.errors import CheckpointError, ConfigError, QtkitError, TrainingError

__all__ = [
    "DataParallel", "RankLostError", "active", "agree_signal", "average_gradients", "average_metrics", "barrier",
    "check_batch_size", "check_finite", "collective", "init_from_env", "launch", "leave", "mean_denominator", "on_main",
    "rank_mean", "row_mean", "shard_rows", "sharding", "world",
]

#: seconds a collective may wait for the other ranks (e.g. while rank 0 evaluates) before the run fails
TIMEOUT_ENV = "QTKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
#: set by ``qtkit train --nproc`` in the processes it starts (the resume command then names ``--nproc``)
LAUNCHER_ENV = "QTKIT_NPROC_LAUNCHER"

T = TypeVar("T")


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run: ``rank`` of ``world_size``; ``local_rank`` picks its GPU."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_active: DataParallel | None = None  # set by sharding() for the duration of a data-parallel fit
_control: Any = None  # a gloo group for the small CPU messages (objects, flags) when the default group is NCCL
_control_of: Any = None  # the default group _control was made for (a re-initialised group gets a new one)


def world() -> DataParallel | None:
    """The data-parallel layout when ``torch.distributed`` is initialised with more than one process, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    if size <= 1:
        return None
    rank = dist.get_rank()
    local = os.environ.get("LOCAL_RANK")
    if local is None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        local_rank = rank % count if count else rank
    else:
        local_rank = int(local)
    return DataParallel(rank=rank, world_size=size, local_rank=local_rank)


def active() -> DataParallel | None:
    """The data-parallel run in progress (inside :func:`sharding`), or None: one process, or not training."""
    return _active


@contextlib.contextmanager
def sharding(dp: DataParallel | None) -> Iterator[DataParallel | None]:
    """Mark the block as data-parallel training over ``dp`` (None: a no-op): the loss helpers then compute their
    share of the global batch's means, and the loop and the agent synchronise the ranks."""
    global _active, _control, _control_of
    if dp is None:
        yield None
        return
    import torch.distributed as dist

    default = dist.group.WORLD
    if _control is None or _control_of is not default:
        # object and flag collectives run on CPU tensors: gloo; an NCCL-only default group gets a gloo twin
        _control = dist.new_group(backend="gloo") if "gloo" not in str(dist.get_backend()) else default
        _control_of = default
    previous, _active = _active, dp
    try:
        yield dp
    finally:
        _active = previous


@contextlib.contextmanager
def _suspended() -> Iterator[None]:
    """No data-parallel arithmetic inside (rank 0's evaluation, which the other ranks do not run)."""
    global _active
    previous, _active = _active, None
    try:
        yield
    finally:
        _active = previous


def timeout_s() -> float:
    """``QTKIT_DIST_TIMEOUT`` (seconds a collective waits for the others), default 1800."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds > 0 (default {DEFAULT_TIMEOUT_S:.0f}).")
    return value


def init_from_env() -> DataParallel | None:
    """Join the process group described by ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (set by
    ``torchrun`` or ``qtkit train --nproc``); None when ``WORLD_SIZE`` is absent or 1.

    Backend: NCCL for CUDA tensors (each rank on ``cuda:LOCAL_RANK``) plus gloo for CPU ones when CUDA is present,
    else gloo. Collectives time out after ``QTKIT_DIST_TIMEOUT`` seconds (default 1800: longer than an
    evaluation, which the other ranks wait for).
    """
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return None
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={size} asks for {size} processes but this torch has no torch.distributed.")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={size} but {', '.join(missing)} not set: launch with torchrun or "
                          "`qtkit train --nproc N`, which set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.")
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or size)
        backend, gpu = backend_for(local_rank, local_world,
                                   torch.cuda.device_count() if torch.cuda.is_available() else 0)
        if gpu is not None:
            torch.cuda.set_device(gpu)  # this rank's GPU ("cuda" means it)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s()))
        # a script that simply ends still tears the group down before the interpreter's finalisation, where gloo's
        # live threads abort the process (benchmarks/gloo_exit.py); `qtkit train` ends through leave() instead
        atexit.register(destroy)
    return world()


def backend_for(local_rank: int, local_world: int, gpus: int) -> tuple[str, int | None]:
    """``(backend, GPU index or None)`` of local rank ``local_rank`` of ``local_world`` on a node with ``gpus`` GPUs.

    The same backend on every rank: NCCL (CUDA tensors) + gloo (CPU ones) when each local rank has a GPU of its
    own; gloo alone otherwise. NCCL refuses two ranks on one GPU, and gloo carries CUDA tensors too, so more ranks
    than GPUs share them round-robin (e.g. ``--nproc 2`` on one GPU: both on GPU 0). No GPU: gloo on the CPU.
    """
    if gpus <= 0:
        return "gloo", None
    if local_world <= gpus:
        return "cpu:gloo,cuda:nccl", local_rank
    return "gloo", local_rank % gpus


def destroy() -> None:
    """Leave the process group (if one is initialised)."""
    global _control, _control_of
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control = _control_of = None


def leave(code: int, *, together: bool) -> NoReturn:
    """End this rank's process with exit status ``code`` (the end of a rank's ``qtkit train``).

    ``together``: every rank got here at the same step (the run finished, or stopped on an agreed interrupt), so
    they meet at a barrier and tear the process group down cleanly. Otherwise (an error, a lost rank, a second
    Ctrl-C) the group is left as it is: a peer may be gone or blocked in a collective, and a barrier would wait for
    it until the timeout; the peers see the closed connection and stop (:func:`collective`).

    Either way the process ends with ``os._exit`` once stdout and stderr are flushed, skipping the interpreter's
    finalisation: gloo's worker threads still alive at that point abort the process ("terminate called without an
    active exception", SIGABRT). ``benchmarks/gloo_exit.py`` on this machine: of pairs of ranks that simply
    returned after a few collectives with the group alive, 1 to 14 in 30 crashed (by run); of 120 ended by
    ``leave`` (either way), none. Everything a rank writes (checkpoint, metrics, summary) is closed before this point.
    """
    if together:
        try:
            barrier()
            destroy()
        except QtkitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = code or 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# ----------------------------------------------------------------------------------------------- the batch
def check_batch_size(batch_size: int, world_size: int) -> None:
    """The global batch must split evenly over the processes; else a ConfigError naming both and the fix."""
    if world_size > 1 and batch_size % world_size:
        lower = batch_size - batch_size % world_size
        fix = f"--set batch_size={lower or world_size}"
        if lower and lower != world_size:
            fix += f" or --set batch_size={lower + world_size}"
        raise ConfigError(
            f"train.batch_size={batch_size} does not split over {world_size} processes (--nproc {world_size} / "
            f"WORLD_SIZE={world_size}): each process trains on batch_size / processes windows of the global batch. "
            f"Fix: {fix}, or a --nproc that divides {batch_size}."
        )


def shard_rows(batch_size: int) -> slice | None:
    """The rows of the global batch ``[B, ...]`` this rank trains on (None: all of them, one process)."""
    dp = _active
    if dp is None:
        return None
    per = batch_size // dp.world_size
    return slice(dp.rank * per, (dp.rank + 1) * per)


class RankLostError(TrainingError):
    """A collective failed: another rank stopped (killed, crashed, or raised an error of its own)."""


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn the failure of a collective (gloo: "Connection closed by peer"; NCCL; a timeout) into one clear
    :class:`RankLostError` naming this rank, instead of a backend traceback."""
    try:
        yield
    except RuntimeError as exc:  # torch.distributed's DistError is a RuntimeError too
        dp = _active or world()
        who = f"rank {dp.rank} of {dp.world_size}" if dp is not None else "this rank"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RankLostError(f"{who} lost the other ranks during {what} ({first}): another rank stopped or failed; "
                            "its own message (or the launcher's) names it.") from None


# ----------------------------------------------------------------------------------------------- exact means
def _all_reduce(tensor: Tensor, op: Any = None) -> Tensor:
    import torch.distributed as dist

    with collective("an all-reduce"):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op)
    return tensor


def mean_denominator(count: Tensor) -> Tensor:
    """The denominator of a masked mean ``sum_local / mean_denominator(count_local)``.

    One process: ``count.clamp(min=1)`` (exactly what the losses divided by before). Data-parallel:
    ``max(global count, 1) / N`` (float64), so that the mean over ranks of the local quotients, and of their
    gradients, is the global batch's masked mean. ``count``: a scalar tensor (this rank's valid positions).
    """
    dp = _active
    if dp is None:
        return count.clamp(min=1)
    total = _all_reduce(count.detach().to(torch.float64).clone())
    return total.clamp(min=1) / dp.world_size


def row_mean(x: Tensor, dim: int = -1) -> Tensor:
    """``x.mean(dim)`` over rows of the batch (e.g. the valid positions ``[H, N]`` of ar-q's loss, dim -1).

    Data-parallel: ``x.sum(dim)`` divided by (global row count / N), so the mean over ranks is the global mean.
    """
    if _active is None:
        return x.mean(dim)
    count = torch.tensor(x.shape[dim], dtype=torch.float64, device=x.device)
    return x.sum(dim) / mean_denominator(count).to(x.dtype)


def rank_mean(x: Tensor) -> Tensor:
    """The mean over ranks of a detached statistic (the global value of one computed with :func:`mean_denominator`
    or :func:`row_mean`); ``x`` itself in one process."""
    dp = _active
    if dp is None:
        return x
    return _all_reduce(x.detach().clone()) / dp.world_size


# ----------------------------------------------------------------------------------------------- gradients
def average_gradients(parameters: Sequence[Tensor]) -> None:
    """Replace every gradient of ``parameters`` by its mean over the ranks: one all-reduce per (device, dtype).

    Each bucket is the flattened gradients plus one presence flag per parameter, so a parameter that got no
    gradient on some rank (None there) is averaged with zeros and one that got none anywhere stays None: the
    ranks always agree on the bucket's size. No-op outside a data-parallel run.
    """
    dp = _active
    if dp is None:
        return
    buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in parameters:
        if p.requires_grad:
            buckets.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), params in sorted(buckets.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        pieces = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device, dtype=dtype)
                  for p in params]
        flags = torch.tensor([p.grad is not None for p in params], device=device, dtype=dtype)
        flat = _all_reduce(torch.cat([*pieces, flags]))
        flat[: -len(params)].div_(dp.world_size)
        # every local gradient present: present on every rank, nothing to read back (on a GPU: no sync)
        local = all(p.grad is not None for p in params)
        present = [1.0] * len(params) if local else flat[-len(params):].tolist()
        offset = 0
        for p, seen in zip(params, present, strict=True):
            n = p.numel()
            if seen > 0:
                p.grad = flat[offset: offset + n].view_as(p).clone() if p.grad is None else p.grad.copy_(
                    flat[offset: offset + n].view_as(p))
            offset += n


def check_finite(loss: Tensor, what: str, step: int) -> None:
    """Every rank raises the same :class:`~qtkit.errors.TrainingError` when the ``what`` loss is non-finite on ANY
    rank (one all-reduce of the loss), so no rank waits forever for a rank that stopped. No-op in one process."""
    dp = _active
    if dp is None:
        return
    total = _all_reduce(loss.detach().to(torch.float64).reshape(1).clone())
    if not bool(torch.isfinite(total)):
        raise TrainingError(
            f"non-finite {what} loss at step {step} on at least one of the {dp.world_size} ranks (this rank's: "
            f"{float(loss.detach())}); the step was not applied. Lower the learning rate or eta, check the dataset for "
            "extreme values, or raise grad clipping."
        )


# ----------------------------------------------------------------------------------------------- control
def _objects(value: Any) -> list[Any]:
    """Every rank's ``value``, by rank (an all-gather over the gloo control group)."""
    import torch.distributed as dist

    dp = _active or world()
    assert dp is not None
    out: list[Any] = [None] * dp.world_size
    with collective("an all-gather"):
        dist.all_gather_object(out, value, group=_control)
    return out


def average_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The ranks' metrics averaged key by key (over the ranks that have the key); ``metrics`` itself in one process.

    Losses computed with :func:`mean_denominator` / :func:`row_mean` average to the global batch's value. Values
    may be floats or scalar tensors."""
    if _active is None:
        return dict(metrics) if not isinstance(metrics, dict) else metrics
    local = {k: float(v) for k, v in metrics.items()}
    gathered = _objects(local)
    out: dict[str, Any] = {}
    for key in local:
        values = [g[key] for g in gathered if key in g]
        out[key] = sum(values) / len(values)
    return out


def agree_signal(signum: int | None) -> int | None:
    """The signal any rank received since the last step (None: none), the same on every rank, so all stop at the
    same step. One small all-reduce per step, only while interrupt handlers are installed (``qtkit train``)."""
    from qtkit.training import interrupts

    if _active is None or not interrupts.active():
        return signum
    import torch.distributed as dist

    flag = torch.tensor([signum or 0], dtype=torch.int64)
    with collective("the signal check"):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_control)
    return int(flag) or None


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only, its result given to every rank (an error it raises is raised on every rank,
    same type when possible, so none waits). Inside, no data-parallel arithmetic applies. ``fn()`` in one process."""
    import torch.distributed as dist

    dp = _active
    if dp is None:
        return fn()
    payload: list[Any] = [None]
    if dp.is_main:
        try:
            with _suspended():
                payload[0] = ("ok", fn())
        except Exception as exc:  # handed to every rank, raised again below
            payload[0] = ("error", _picklable(exc))
    with collective("rank 0's evaluation"):
        dist.broadcast_object_list(payload, src=0, group=_control)
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return (QtkitError if isinstance(exc, QtkitError) else RuntimeError)(f"{type(exc).__name__}: {exc}")


def barrier() -> None:
    """Wait for every rank of the initialised process group (no-op without one, or with one process)."""
    import torch.distributed as dist

    if world() is not None:
        with collective("a barrier"):
            dist.barrier(group=_control)  # None (before the first fit): the default group


def broadcast_modules(modules: Iterable[torch.nn.Module]) -> None:
    """Rank 0's parameters and buffers to every rank (the ranks start from the same weights whatever their RNG)."""
    import torch.distributed as dist

    if _active is None:
        return
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                with collective("the broadcast of rank 0's weights"):
                    dist.broadcast(tensor.data, src=0)


def rng_state() -> tuple[Tensor, list[Tensor] | None]:
    """This process's torch CPU (and CUDA) random state."""
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def gather_rng_states() -> list[tuple[Tensor, list[Tensor] | None]]:
    """Every rank's :func:`rng_state`, by rank (a collective: every rank calls it)."""
    return _objects(rng_state())


def seed_rank(seed: int) -> None:
    """Give rank r > 0 its own torch random stream (dropout, augmentation), derived from ``seed``; rank 0 keeps
    the stream of a one-process run."""
    dp = _active
    if dp is not None and dp.rank > 0:
        torch.manual_seed(seed + 1_000_003 * dp.rank)


def check_world_size(saved: int, directory: Any) -> None:
    """A checkpoint made with ``saved`` processes resumes only with as many (the batch slices and the ranks' random
    streams depend on it); else a CheckpointError naming both and the fix."""
    now = _active.world_size if _active is not None else (world().world_size if world() is not None else 1)
    if saved != now:
        raise CheckpointError(
            f"cannot resume {str(directory)!r} with {now} process{'es' if now > 1 else ''}: it was trained with "
            f"{saved} (--nproc {saved} / WORLD_SIZE={saved}). Resume with --nproc {saved} (or the same torchrun "
            "--nproc-per-node and --nnodes), or start a new run."
        )


# ----------------------------------------------------------------------------------------------- the launcher
def free_port() -> int:
    """A TCP port free on this machine now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL when the launcher dies (a SIGKILLed launcher leaves no orphan ranks)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch(argv: list[str], nproc: int, *, resume_hint: str | None = None, grace_s: float = 5.0,
           echo: Callable[[str], None] | None = None, program: Sequence[str] | None = None) -> int:
    """Run ``python -m qtkit ARGV`` (``program``: another command before ARGV) in ``nproc`` local processes (ranks
    0 .. nproc-1) and wait for them.

    Each process gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` (127.0.0.1) and
    a free ``MASTER_PORT``, its own session (a terminal's Ctrl-C reaches the launcher only, which forwards it
    once) and, on Linux, death with the launcher. ``OMP_NUM_THREADS`` defaults to the cores / ``nproc``.
    SIGINT/SIGTERM are forwarded to every rank (they checkpoint and stop at the same step). When a rank fails while
    the others run, the others get ``grace_s`` seconds to stop on their own (an error they all raise), then are
    killed; the failing rank is named with its exit code (and ``resume_hint``): of the ranks that ended by
    themselves, one killed by a signal (its peers exit with an error when they lose it, and may be seen to end
    first), else the first seen to fail. Returns the exit code: the ranks'
    common one when they agree (0, 2 for an error, 130/143 for an interrupt), else the failing rank's (1 for a rank
    killed by a signal).
    """
    say = echo or (lambda message: print(message, file=sys.stderr, flush=True))
    port = free_port()
    env = dict(os.environ)
    env.update({"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port), LAUNCHER_ENV: str(nproc)})
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    procs: list[subprocess.Popen[bytes]] = []
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    linux = sys.platform.startswith("linux")
    try:
        for s in previous:
            signal.signal(s, forward)
        for rank in range(nproc):
            child_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            procs.append(subprocess.Popen([*(program or (sys.executable, "-m", "qtkit")), *argv], env=child_env,
                                          start_new_session=True, preexec_fn=_die_with_parent if linux else None))
        ended: dict[int, int] = {}  # rank -> the order in which the launcher saw it end by itself
        deadline: float | None = None
        while True:
            codes = [p.poll() for p in procs]
            for rank, code in enumerate(codes):
                if code is not None and rank not in ended:
                    ended[rank] = len(ended)
            if all(c is not None for c in codes):
                break
            if deadline is None and any(c not in (None, 0) for c in codes):
                # a rank killed by a signal: stop the others at once; a rank's error: they get grace_s to stop
                # on their own (an error they all raise)
                killed = any(c is not None and c < 0 for c in codes)
                deadline = time.monotonic() + (0.0 if killed else grace_s)
            if deadline is not None and time.monotonic() >= deadline:
                for p in procs:
                    if p.poll() is None:
                        with contextlib.suppress(ProcessLookupError):
                            p.kill()
                for p in procs:
                    p.wait()
                break
            time.sleep(0.05)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in procs:  # the launcher itself failing (e.g. KeyboardInterrupt): no orphans
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [int(p.returncode) for p in procs]
    if len(set(codes)) == 1 and (codes[0] >= 0 or received):
        return codes[0] if codes[0] >= 0 else 128 + -codes[0]
    # the cause, among the ranks that ended by themselves: one killed by a signal (the others lost it and exited
    # with an error, possibly before the launcher saw it die), else the first seen to fail
    failures = [(rank, codes[rank]) for rank in ended if codes[rank] != 0] or [
        (rank, code) for rank, code in enumerate(codes) if code != 0]
    rank, code = min(failures, key=lambda rc: (rc[1] >= 0, ended.get(rc[0], nproc)))
    message = (f"error: rank {rank} of {nproc} (pid {procs[rank].pid}) {_describe(code)}; the other ranks were "
               "stopped.")
    if resume_hint:
        message += f" {resume_hint}"
    say(message)
    return code if code > 0 else 1
