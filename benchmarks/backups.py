"""Throughput of the Bellman backups: targets per second for a training-size batch.

    .venv/bin/python benchmarks/backups.py --device cpu --threads 1 --repeats 7

Times each registered backup called as in training (``backup(batch, next_values)`` under
``torch.no_grad``) on B x T windows with some left/right padding and terminals, plus the bare
functional ``n_step_targets``. Prints a Markdown table: median time per call over ``--repeats``
rounds and targets (B * T positions) per second.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import qtkit
from qtkit.backups.functional import discounted_returns, n_step_targets
from qtkit.data import Batch

CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("one-step", "one-step", {}),
    ("n-step (n=5)", "n-step", {"n": 5}),
    ("window (n=inf)", "window", {}),
    ("nstep-mc-max (n=5)", "nstep-mc-max", {"n": 5}),
    ("mc", "mc", {}),
]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_batch(B: int, T: int, device: str, dtype: torch.dtype, seed: int = 0) -> tuple[Batch, torch.Tensor]:
    """Random windows: 10% start an episode (left padding), 10% end one (right padding + terminal)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(T)
    start = torch.where(torch.rand(B, 1, generator=gen) < 0.1, torch.randint(0, T, (B, 1), generator=gen), 0)
    stop = torch.where(torch.rand(B, 1, generator=gen) < 0.1, torch.randint(1, T + 1, (B, 1), generator=gen), T)
    stop = torch.maximum(stop, start + 1)
    mask = (idx >= start) & (idx < stop)
    terminals = (idx == stop - 1) & (stop < T)
    rewards = torch.randn(B, T, generator=gen, dtype=dtype)
    zeros3 = torch.zeros(B, T, 3, dtype=dtype)
    batch = Batch(
        observations=zeros3, next_observations=zeros3, actions=zeros3, rewards=rewards, rtg=rewards,
        returns=torch.randn(B, T, generator=gen, dtype=dtype) * 10, timesteps=idx.expand(B, T).clone(),
        terminals=terminals, mask=mask,
    )
    next_values = torch.randn(B, T, generator=gen, dtype=dtype) * 10
    return batch.to(device), next_values.to(device)


def _cases(batch: Batch, next_values: torch.Tensor, gamma: float) -> list[tuple[str, Callable[[], Any]]]:
    """(label, zero-argument call) for every timed case."""
    rows: list[tuple[str, Callable[[], Any]]] = []
    for label, name, params in CASES:
        backup = qtkit.get_component("backup", name).target(gamma=gamma, **params)
        rows.append((label, lambda b=backup: b(batch, next_values)))
    rows.append(("functional n_step_targets (n=5)", lambda: n_step_targets(
        batch.rewards, next_values, batch.terminals, batch.mask, gamma, 5)))
    rows.append(("functional discounted_returns", lambda: discounted_returns(
        batch.rewards, batch.terminals, batch.mask, gamma)))
    return rows


def time_per_call(fn: Callable[[], Any], device: str, repeats: int, calls: int) -> tuple[float, float]:
    """(median, best) seconds per call over ``repeats`` rounds of ``calls`` calls, after a warm-up."""

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(max(10, calls // 10)):
        fn()
    sync()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds), min(rounds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", nargs="+", choices=["cpu", "cuda"], default=None,
                        help="devices to time (default: cpu, plus cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds; the median is reported")
    parser.add_argument("--calls", type=int, default=200, help="calls per round")
    parser.add_argument("--batch", type=int, default=256, help="B, windows per batch")
    parser.add_argument("--context", type=int, default=20, help="T (K), steps per window")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--gamma", type=float, default=0.99)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    dtype = getattr(torch, args.dtype)
    B, T = args.batch, args.context

    print(f"# backups: B={B}, T={T}, {args.dtype}, gamma={args.gamma}, threads={args.threads}, "
          f"repeats={args.repeats} x {args.calls} calls, torch {torch.__version__}, {cpu_name()}")
    for device in devices:
        if device == "cuda":
            print(f"# cuda: {torch.cuda.get_device_name()}")
    print()
    print("| backup | device | us / call (median) | us / call (best) | targets / s (median) |")
    print("|---|---|---:|---:|---:|")
    for device in devices:
        batch, next_values = make_batch(B, T, device, dtype)
        with torch.no_grad():
            for label, fn in _cases(batch, next_values, args.gamma):
                median, best = time_per_call(fn, device, args.repeats, args.calls)
                print(f"| {label} | {device} | {median * 1e6:,.0f} | {best * 1e6:,.0f} | "
                      f"{B * T / median / 1e6:,.1f} M |", flush=True)


if __name__ == "__main__":
    main()
