"""The CPU-only process settings sit behind one switch, ``QTKIT_CPU_TUNING`` (qtkit/cpu.py), and ``fit`` on a
CPU goes through it. Each test names the defect it catches: the switch ignored, a bad value accepted silently,
fit tuning the heap directly (or not at all)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import qtkit
import qtkit.agents.base
import qtkit.cpu
from qtkit.data import TrajectoryDataset
from qtkit.errors import ConfigError


@pytest.fixture
def heap_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record calls of keep_freed_memory instead of changing this process's allocator."""
    calls: list[int] = []
    monkeypatch.setattr(qtkit.cpu, "keep_freed_memory", lambda: calls.append(1) or True)
    return calls


@pytest.mark.parametrize(("value", "expected"), [(None, 1), ("on", 1), ("ON ", 1), ("off", 0), ("Off", 0)])
def test_the_switch_decides_whether_the_heap_is_tuned(monkeypatch: pytest.MonkeyPatch, heap_calls: list[int],
                                                       value: str | None, expected: int) -> None:
    if value is None:
        monkeypatch.delenv("QTKIT_CPU_TUNING", raising=False)
    else:
        monkeypatch.setenv("QTKIT_CPU_TUNING", value)
    assert qtkit.cpu.apply_cpu_tuning() is bool(expected)
    assert len(heap_calls) == expected


def test_a_bad_switch_value_is_an_error_naming_the_switch(monkeypatch: pytest.MonkeyPatch, heap_calls: list[int]) -> None:
    monkeypatch.setenv("QTKIT_CPU_TUNING", "yes")
    with pytest.raises(ConfigError, match=r"QTKIT_CPU_TUNING='yes'.*'on'.*'off'"):
        qtkit.cpu.apply_cpu_tuning()
    assert heap_calls == []


def test_fit_on_cpu_goes_through_the_switch(monkeypatch: pytest.MonkeyPatch, heap_calls: list[int]) -> None:
    rng = np.random.default_rng(0)
    lengths = [12, 12]
    data = TrajectoryDataset(rng.normal(size=(26, 3)), rng.uniform(-1, 1, size=(24, 2)), rng.normal(size=24),
                             np.zeros(24, bool), np.zeros(24, bool), lengths)
    agent = qtkit.build("dt-gpt", dataset=data, backbone={"width": 16, "depth": 1, "heads": 1, "mlp_dim": 16},
                        batch_size=4, context=3, device="cpu")
    monkeypatch.setenv("QTKIT_CPU_TUNING", "off")
    agent.fit(data, steps=1)
    assert heap_calls == []
    monkeypatch.setenv("QTKIT_CPU_TUNING", "on")
    agent.fit(data, steps=1)
    assert heap_calls == [1]


denormals_flushed = qtkit.cpu.denormals_flushed


@pytest.fixture
def denormals_kept() -> Any:
    """Start and end with denormals kept (the default of a process)."""
    import torch

    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


def test_the_switch_decides_whether_denormals_are_flushed(monkeypatch: pytest.MonkeyPatch, heap_calls: list[int],
                                                         denormals_kept: None) -> None:
    """Denormal weights and Adam moments made a pixel run 8x slower on this CPU (qtkit/cpu.py): with the switch on,
    the process setting (prepare_process, what the commands run first) and apply_cpu_tuning (what fit runs in)
    flush them; off, neither does."""
    monkeypatch.setenv("QTKIT_CPU_TUNING", "off")
    assert not denormals_flushed()
    qtkit.cpu.prepare_process()
    qtkit.cpu.apply_cpu_tuning()
    assert not denormals_flushed()
    monkeypatch.setenv("QTKIT_CPU_TUNING", "on")
    qtkit.cpu.prepare_process()
    assert denormals_flushed()
    import torch

    torch.set_flush_denormal(False)
    qtkit.cpu.apply_cpu_tuning()
    assert denormals_flushed()


def test_prepare_process_sets_threads_and_checks_the_switch(monkeypatch: pytest.MonkeyPatch,
                                                            denormals_kept: None) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("QTKIT_CPU_TUNING", "on")
        qtkit.cpu.prepare_process(1)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("QTKIT_CPU_TUNING", "maybe")
        with pytest.raises(ConfigError, match="QTKIT_CPU_TUNING='maybe'"):
            qtkit.cpu.prepare_process()
    finally:
        torch.set_num_threads(before)


def test_fit_flushes_denormals_while_it_trains_and_puts_the_flag_back(monkeypatch: pytest.MonkeyPatch,
                                                                      heap_calls: list[int],
                                                                      denormals_kept: None) -> None:
    """fit on a CPU trains with denormals flushed and returns with the flag as it found it (a library call must
    not leave process state behind: hypothesis refuses to run with denormals flushed)."""
    rng = np.random.default_rng(0)
    data = TrajectoryDataset(rng.normal(size=(26, 3)), rng.uniform(-1, 1, size=(24, 2)), rng.normal(size=24),
                             np.zeros(24, bool), np.zeros(24, bool), [12, 12])
    agent = qtkit.build("dt-gpt", dataset=data, backbone={"width": 16, "depth": 1, "heads": 1, "mlp_dim": 16},
                        batch_size=4, context=3, device="cpu")
    during: list[bool] = []
    step = agent.train_step
    monkeypatch.setattr(agent, "train_step", lambda batch, diagnose=False: during.append(denormals_flushed())
                        or step(batch, diagnose))
    monkeypatch.setenv("QTKIT_CPU_TUNING", "on")
    agent.fit(data, steps=2, progress=False)
    assert during == [True, True] and not denormals_flushed()
    monkeypatch.setenv("QTKIT_CPU_TUNING", "off")
    agent.fit(data, steps=3, progress=False)
    assert during[-1] is False and not denormals_flushed()
