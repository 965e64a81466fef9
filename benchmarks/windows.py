"""Training windows sampled per second by ``TrajectoryDataset.sample_windows`` (one core by default).

    .venv/bin/python benchmarks/windows.py                          # hopper-sized synthetic data, B=256, K=20
    .venv/bin/python benchmarks/windows.py --generator torch --scheme reference
    .venv/bin/python benchmarks/windows.py --dataset minari:qtkit/pointmaze-umaze-dense-v0

The synthetic dataset looks like D4RL hopper-medium-replay: ``--steps`` transitions in episodes of
random length (10 .. ``--max-length``), ``--obs-dim`` 11, ``--act-dim`` 3. One "window" is one row
of the returned Batch (all nine fields gathered, tensors made); the target is >= 20,000 windows/s
for B=256, K=20 on one core. The figure is the median of ``--repeats`` timed runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from qtkit.data import TrajectoryDataset, load_dataset


def synthetic(steps: int, max_length: int, obs_dim: int, act_dim: int, seed: int) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < steps:
        lengths.append(int(rng.integers(10, max_length + 1)))
    lengths[-1] -= sum(lengths) - steps
    if lengths[-1] < 1:
        lengths.pop()
    n, e = sum(lengths), len(lengths)
    term = np.zeros(n, bool)
    term[np.cumsum(lengths) - 1] = rng.random(e) < 0.5
    return TrajectoryDataset(
        rng.normal(size=(n + e, obs_dim)).astype(np.float32), rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        rng.normal(size=n).astype(np.float32), term, np.zeros(n, bool), np.asarray(lengths),
        metadata={"dataset_id": "synthetic"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=None, help="a load_dataset spec; default: synthetic data")
    parser.add_argument("--steps", type=int, default=400_000, help="synthetic: number of transitions")
    parser.add_argument("--max-length", type=int, default=1000, help="synthetic: longest episode")
    parser.add_argument("--obs-dim", type=int, default=11)
    parser.add_argument("--act-dim", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--context", type=int, default=20, help="K, steps per window")
    parser.add_argument("--scheme", default="uniform", choices=["uniform", "reference", "inside"])
    parser.add_argument("--generator", default="numpy", choices=["numpy", "torch"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (numpy runs on one core)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.dataset:
        ds = load_dataset(args.dataset)
    else:
        ds = synthetic(args.steps, args.max_length, args.obs_dim, args.act_dim, seed=0)
    gen = np.random.default_rng(0) if args.generator == "numpy" else torch.Generator().manual_seed(0)
    B, K = args.batch_size, args.context

    def sample() -> None:
        ds.sample_windows(B, K, gen, rtg_scale=1000.0, scheme=args.scheme)

    for _ in range(20):  # warm-up
        sample()
    rates = []
    for _ in range(args.repeats):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < args.seconds:
            sample()
            n += 1
        rates.append(n * B / elapsed)
    median = statistics.median(rates)
    print(f"dataset: {ds!r}")
    print(f"batch {B}, K {K}, scheme {args.scheme}, generator {args.generator}, torch threads {args.threads}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"runs (windows/s): {', '.join(f'{r:,.0f}' for r in rates)}")
    print(f"windows/s: {median:,.0f}  (batches/s {median / B:,.1f}, {1e3 * B / median:.2f} ms per batch)")


if __name__ == "__main__":
    main()
