"""CPU-only process settings, in one module behind one switch.

qtkit changes two process-wide things when it trains on a CPU, and nothing else anywhere:

- **threads** (:func:`set_torch_threads`, :func:`torch_threads`): how many torch threads this process uses.
  Set only when asked (``--threads``, a sweep's ``cpus_per_trial``, the demo, the data makers' ``threads``).
- **heap** (:func:`keep_freed_memory`): on glibc, keep freed blocks in the heap instead of returning them to
  the kernel. Applied by ``Agent.fit`` on CPU through :func:`apply_cpu_tuning`.

The switch: the environment variable ``QTKIT_CPU_TUNING``. ``on`` (the default) applies the heap setting when
a CPU fit starts; ``off`` leaves the process's allocator alone (``QTKIT_CPU_TUNING=off qtkit train ...``).
Thread counts are never changed unless asked, whatever the switch says. :func:`apply_cpu_tuning` logs what
it applied (logger ``qtkit.cpu``) once per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

__all__ = ["apply_cpu_tuning", "cpu_tuning_enabled", "keep_freed_memory", "set_torch_threads", "torch_threads"]

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
    """What ``Agent.fit`` calls before training on a CPU: :func:`keep_freed_memory` unless the switch is off.

    Returns whether the heap setting is in force."""
    global _REPORTED
    applied = keep_freed_memory() if cpu_tuning_enabled() else False
    if not _REPORTED:
        _REPORTED = True
        log.info("CPU tuning %s (%s=%s)", "applied: glibc heap keeps freed memory" if applied else "not applied",
                 SWITCH, os.environ.get(SWITCH, "on"))
    return applied


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
