"""Greedy decoding speed of the ``ar-q`` critic: actions per second for D action dimensions.

    .venv/bin/python benchmarks/ar_q.py --device cpu --threads 1 --repeats 7

Times ``critic.greedy(states)`` both ways in one run, rounds alternating: with the backbone's key/value
cache (``gpt2.forward_cached``: one pass over the w+1 first tokens, then one token per dimension) and
with the recompute path (``use_kv_cache = False``: D backbone passes of w+1 .. w+D tokens), for D = 2, 3,
8 and ``--bins`` bins (256, the paper's) with the dt-gpt backbone (width 256, depth 4, 4 heads, MLP 1024)
in eval mode, for batches of 1 and 10 states. The two paths' bins are checked identical first. For scale,
the table also times one teacher-forced pass (``q_values``: all D dimensions in one w+D-token pass).
``--no-cache`` times the recompute path alone. ``--train`` adds the critic's training step (bootstrap +
loss + backward) on B x K windows. Prints a Markdown table of medians over ``--repeats`` rounds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from qtkit.backbones.gpt2 import GPT2Backbone
from qtkit.critics.ar_q import ARQCritic
from qtkit.data import Batch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_critic(act_dim: int, args: argparse.Namespace, device: str, obs_dim: int = 17) -> ARQCritic:
    torch.manual_seed(0)
    backbone = GPT2Backbone(width=args.width, depth=args.depth, heads=args.heads, mlp_dim=args.mlp_dim, dropout=0.0)
    critic = ARQCritic(obs_dim=obs_dim, act_dim=act_dim, action_low=[-1.0] * act_dim, action_high=[1.0] * act_dim,
                       gamma=0.99, backbone=backbone, bins=args.bins, state_window=args.state_window, floor=0.0)
    return critic.to(device).eval()


def time_per_call(fn: Callable[[], Any], device: str, repeats: int, calls: int) -> float:
    """Median seconds per call over ``repeats`` rounds of ``calls`` calls, after a warm-up."""

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(max(3, calls // 5)):
        fn()
    sync()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def time_interleaved(fns: dict[str, Callable[[], Any]], device: str, repeats: int, calls: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating rounds (same load for all)."""

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for fn in fns.values():
        for _ in range(max(3, calls // 5)):
            fn()
    sync()
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            for _ in range(calls):
                fns[name]()
            sync()
            rounds[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in rounds.items()}


def greedy_fn(critic: ARQCritic, states: torch.Tensor, cache: bool) -> Callable[[], Any]:
    """``critic.greedy(states)`` with (``cache``) or without the key/value cache."""

    def call() -> Any:
        critic.use_kv_cache = cache
        return critic.greedy(states)

    return call


def train_step_fn(critic: ARQCritic, B: int, K: int, device: str) -> Callable[[], Any]:
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(B, K, critic.obs_dim, generator=gen)
    mask = torch.ones(B, K, dtype=torch.bool)
    batch = Batch(
        observations=obs, next_observations=torch.randn(B, K, critic.obs_dim, generator=gen),
        actions=torch.rand(B, K, critic.act_dim, generator=gen) * 2 - 1, rewards=torch.rand(B, K, generator=gen),
        rtg=torch.zeros(B, K), returns=torch.rand(B, K, generator=gen), timesteps=torch.zeros(B, K, dtype=torch.long),
        terminals=torch.zeros(B, K, dtype=torch.bool), mask=mask,
    ).to(device)
    critic.train()

    def step() -> None:
        next_values, next_valid = critic.bootstrap(batch.observations, batch.next_observations, None, batch.mask)
        targets = batch.rewards + 0.99 * next_values  # one-step, stand-in for the backup (negligible cost)
        loss, _ = critic.loss(batch.observations, batch.actions, targets, next_valid, batch=batch)
        critic.net.zero_grad(set_to_none=True)
        loss.backward()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", nargs="+", choices=["cpu", "cuda"], default=None,
                        help="devices to time (default: cpu, plus cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds; the median is reported")
    parser.add_argument("--calls", type=int, default=20, help="calls per round")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3, 8], help="action dimensions D")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10], help="states decoded per call")
    parser.add_argument("--bins", type=int, default=256)
    parser.add_argument("--state-window", type=int, default=1)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mlp-dim", type=int, default=1024)
    parser.add_argument("--no-cache", action="store_true", help="time the recompute path only (no KV cache)")
    parser.add_argument("--train", action="store_true", help="also time a critic training step on B x K windows")
    parser.add_argument("--train-batch", type=int, nargs=2, default=[256, 20], metavar=("B", "K"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    print(f"# ar-q greedy decoding: bins={args.bins}, w={args.state_window}, gpt2 width {args.width} depth {args.depth} "
          f"heads {args.heads} mlp {args.mlp_dim}, twin heads, fp32, threads={args.threads}, repeats={args.repeats} x "
          f"{args.calls} calls, torch {torch.__version__}, {cpu_name()}")
    for device in devices:
        if device == "cuda":
            print(f"# cuda: {torch.cuda.get_device_name()}")
    print()
    if args.no_cache:
        print("| device | D | states / call | greedy ms / call (recompute) | actions / s | one q_values pass ms | "
              "greedy / pass |")
        print("|---|---:|---:|---:|---:|---:|---:|")
    else:
        print("| device | D | states / call | KV cache: greedy ms | actions / s | recompute: greedy ms | actions / s | "
              "speed-up | one q_values pass ms | cached / pass |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for device in devices:
        for dims in args.dims:
            critic = make_critic(dims, args, device)
            for batch in args.batches:
                states = torch.randn(batch, args.state_window, critic.obs_dim, device=device)
                bins = torch.zeros(batch, dims, dtype=torch.long, device=device)
                fns = {"recompute": greedy_fn(critic, states, False),
                       "pass": lambda c=critic, s=states, b=bins: c.q_values(s, b)}
                if not args.no_cache:
                    fns["cache"] = greedy_fn(critic, states, True)
                with torch.no_grad():
                    if not args.no_cache:  # the two paths agree before they are timed
                        (b_cache, q_cache), (b_plain, q_plain) = fns["cache"](), fns["recompute"]()
                        assert torch.equal(b_cache, b_plain), "cached and recompute decoding chose different bins"
                        assert torch.allclose(q_cache, q_plain, rtol=0, atol=1e-4), (q_cache - q_plain).abs().max()
                    t = time_interleaved(fns, device, args.repeats, args.calls)
                plain, single = t["recompute"], t["pass"]
                if args.no_cache:
                    print(f"| {device} | {dims} | {batch} | {plain * 1e3:,.2f} | {batch / plain:,.0f} | "
                          f"{single * 1e3:,.2f} | {plain / single:.1f}x |", flush=True)
                else:
                    cached = t["cache"]
                    print(f"| {device} | {dims} | {batch} | {cached * 1e3:,.2f} | {batch / cached:,.0f} | "
                          f"{plain * 1e3:,.2f} | {batch / plain:,.0f} | {plain / cached:.2f}x | {single * 1e3:,.2f} | "
                          f"{cached / single:.1f}x |", flush=True)
    if args.train:
        B, K = args.train_batch
        print()
        print(f"| device | D | critic train step (bootstrap + loss + backward), B={B} K={K}: ms | windows / s |")
        print("|---|---:|---:|---:|")
        for device in devices:
            for dims in args.dims:
                step = train_step_fn(make_critic(dims, args, device), B, K, device)
                seconds = time_per_call(step, device, max(3, args.repeats // 2), 2)
                print(f"| {device} | {dims} | {seconds * 1e3:,.0f} | {B / seconds:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
