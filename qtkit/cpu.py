"""CPU-only process settings, in one module behind one switch.

qtkit changes three process-wide things when it trains on a CPU, and nothing else anywhere:

- **threads** (:func:`set_torch_threads`, :func:`torch_threads`): how many torch threads this process uses.
  Set only when asked (``--threads``, a sweep's ``cpus_per_trial``, the demo, the data makers' ``threads``).
- **heap** (:func:`keep_freed_memory`): on glibc, keep freed blocks in the heap instead of returning them to
  the kernel. Applied by ``Agent.fit`` on CPU through :func:`apply_cpu_tuning`.
- **denormals** (:func:`flush_denormals`): ``torch.set_flush_denormal(True)``, denormal floats (below ~1.2e-38)
  read and written as zero. Applied by ``Agent.fit`` on CPU through :func:`apply_cpu_tuning`: weights and Adam
  moments that decay into the denormal range make every operation on them take a slow path (measured: a
  ``qt-gpt-pixels`` run with 3 stacked frames fell from ~3 to ~0.4 steps/s after 1500 steps, 2.94 s against
  0.35 s a step from the same checkpoint with denormals flushed; benchmarks/RESULTS.md "Denormal floats").

The switch: the environment variable ``QTKIT_CPU_TUNING``. ``on`` (the default) applies the heap and denormal
settings when a CPU fit starts; ``off`` leaves the process alone (``QTKIT_CPU_TUNING=off qtkit train ...``).
Thread counts are never changed unless asked, whatever the switch says. :func:`apply_cpu_tuning` logs what
it applied (logger ``qtkit.cpu``) once per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

__all__ = [
    "apply_cpu_tuning",
    "cpu_training",
    "cpu_tuning_enabled",
    "denormals_flushed",
    "flush_denormals",
    "keep_freed_memory",
    "prepare_process",
    "set_torch_threads",
    "torch_threads",
]

SWITCH = "QTKIT_CPU_TUNING"

log = logging.getLogger("qtkit.cpu")
_MALLOC_TUNED = False
_REPORTED = False


def cpu_tuning_enabled() -> bool:
    """The switch: ``QTKIT_CPU_TUNING`` is ``on`` (default) or ``off``; anything else is an error naming it."""
    value = os.environ.get(SWITCH, "on").strip().lower()
    if value not in ("on", "off"):
        from qtkit.errors import ConfigError

        raise ConfigError(f"{SWITCH}={value!r}: use 'on' (default: tune the glibc heap for CPU training) or 'off'.")
    return value == "on"


def apply_cpu_tuning() -> bool:
    """What ``Agent.fit`` calls before training on a CPU: :func:`keep_freed_memory` and :func:`flush_denormals`
    unless the switch is off.

    Returns whether the heap setting is in force."""
    global _REPORTED
    enabled = cpu_tuning_enabled()
    applied = keep_freed_memory() if enabled else False
    flushed = flush_denormals() if enabled else False
    if not _REPORTED:
        _REPORTED = True
        done = [what for what, on in (("glibc heap keeps freed memory", applied), ("denormals flushed", flushed)) if on]
        log.info("CPU tuning %s (%s=%s)", f"applied: {', '.join(done)}" if done else "not applied",
                 SWITCH, os.environ.get(SWITCH, "on"))
    return applied


def flush_denormals() -> bool:
    """``torch.set_flush_denormal(True)``: denormal floats are treated as zero on this CPU (x86 FTZ/DAZ). Returns
    whether the CPU supports it.

    The setting is per thread and new threads inherit it: set before torch starts its intra-op (OpenMP) threads it
    covers them all; set later, only the calling thread. Measured from one checkpoint with 2 threads: 1.51 s a step
    without, 0.19 s set at start-up, 0.99 s set after the threads had started. So the commands call it first
    (:func:`prepare_process`); ``Agent.fit`` sets it on its calling thread for API users, and puts it back as it
    was when it returns (:func:`cpu_training`)."""
    import torch

    return bool(torch.set_flush_denormal(True))


def denormals_flushed() -> bool:
    """Whether the calling thread reads denormal floats as zero (1e-40, a float32 denormal, times 1 gives 0)."""
    import torch

    return float(torch.tensor([1e-40], dtype=torch.float32).mul(1.0)[0]) == 0.0


@contextlib.contextmanager
def cpu_training() -> Iterator[bool]:
    """``Agent.fit`` on a CPU runs inside this: :func:`apply_cpu_tuning` (yields whether the heap setting is in
    force), and on exit the calling thread's denormal setting as it was before (a library call leaves the flag as
    it found it: hypothesis, for one, refuses to run with denormals flushed). The heap setting stays (permanent)."""
    import torch

    before = denormals_flushed()
    try:
        yield apply_cpu_tuning()
    finally:
        if not before:
            torch.set_flush_denormal(False)


def prepare_process(threads: int | None = None) -> None:
    """What a training process does first, before any torch work (``qtkit train``/``eval``, sweep trials, the demo):
    flush denormals (unless ``QTKIT_CPU_TUNING=off``), so that torch's threads, started later, inherit it; then
    ``threads`` torch threads when given (:func:`set_torch_threads`)."""
    if cpu_tuning_enabled():
        flush_denormals()
    if threads is not None:
        set_torch_threads(threads)


def keep_freed_memory() -> bool:
    """glibc only, once per process: keep freed blocks in the heap instead of handing them back to the kernel.

    By default every allocation over 32 MiB (a reference-size activation) is a fresh ``mmap`` whose pages are
    faulted in and zeroed at every training step (~250k-620k page faults, 1-2.5 s of system time per
    reference CPU step): ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, 2 GiB)`` make them reuse
    the heap (0 faults after ~3 steps; benchmarks/RESULTS.md). Process-wide and permanent: the process keeps
    its peak heap until it exits. Returns whether it is in force (False on other C libraries).
    """
    import ctypes

    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return _MALLOC_TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        _MALLOC_TUNED = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        _MALLOC_TUNED = False
    return _MALLOC_TUNED


def set_torch_threads(threads: int) -> None:
    """Use ``threads`` (>= 1) torch threads in this process; also the default ``OMP_NUM_THREADS`` of its children.

    Several processes sharing a machine should each take their share of the cores: two runs with
    every core each on 2 cores trained at 2.9 steps/s each here, against 6.8 with one thread each.
    """
    import torch

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``torch.set_num_threads(n)``, restoring the previous count afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)
