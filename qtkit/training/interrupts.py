"""Graceful interrupts: SIGINT/SIGTERM during training finish the current step, checkpoint, then stop.

:func:`graceful_interrupts` (used by ``qtkit train``) installs handlers that only record the signal; the training
loop polls :func:`pending` after every step and, when a signal came, saves a checkpoint and raises
:class:`TrainingInterrupted`. A second signal stops at once (``KeyboardInterrupt``): the last checkpoint is intact,
since checkpoints are swapped in atomically. Outside the context manager (library use, sweeps) nothing changes:
:func:`pending` is always None and Python's own handlers apply.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from qtkit.errors import QtkitError

__all__ = ["TrainingInterrupted", "active", "exit_code", "graceful_interrupts", "ignore_further_signals", "pending"]

_pending: int | None = None
_active = False
_ignoring = False


class TrainingInterrupted(QtkitError):
    """Training stopped early on a signal after saving a checkpoint (``signum``, ``step``, ``checkpoint``)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = f"; checkpoint saved in {checkpoint}" if checkpoint else " (no log folder: nothing was saved)"
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}{where}")


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def pending() -> int | None:
    """The signal received since :func:`graceful_interrupts` began (None: none, or no handlers installed)."""
    return _pending


def active() -> bool:
    """Whether :func:`graceful_interrupts` handlers are installed (data-parallel ranks then agree on signals)."""
    return _active


def ignore_further_signals() -> None:
    """From now until the process ends, SIGINT/SIGTERM are ignored (inside and after :func:`graceful_interrupts`).

    For a rank of a data-parallel run that stopped on an interrupt the ranks agreed on: the launcher forwards the
    signal to every rank, and this rank's copy may arrive only after the ranks stopped on another rank's copy; it must
    not kill the rank while it checkpoints and leaves the process group. No-op outside :func:`graceful_interrupts`.
    """
    global _ignoring
    _ignoring = _active


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _ignoring:
        return
    if _pending is not None:  # a second signal: stop now
        raise KeyboardInterrupt
    _pending = signum


@contextlib.contextmanager
def graceful_interrupts(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Record SIGINT/SIGTERM instead of dying at once, for the duration of the block (main thread only;
    elsewhere a no-op). The previous handlers are restored on exit."""
    global _pending, _active, _ignoring
    if threading.current_thread() is not threading.main_thread() or _active:
        yield
        return
    previous = {s: signal.getsignal(s) for s in signals}
    _pending, _active, _ignoring = None, True, False
    try:
        for s in signals:
            signal.signal(s, _handler)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_IGN if _ignoring else handler)
        _pending, _active, _ignoring = None, False, False
