"""Training speed of qtkit's ``dt-gpt`` against d3rlpy 2.8.0's ``DecisionTransformer``, in one run, as a ratio.

Both at the same size: context 20, batch 64, 3 layers, 1 head, width 128 (MLP 4 x width), dropout 0.1, on the
same data (a Hopper-shaped dataset: obs 11, act 3, 1000-step episodes of random numbers; speed does not depend
on the values). Each timed step is the body of the library's own training loop: sample a batch, one gradient
step (qtkit: ``dataset.sample_windows`` + ``agent.train_step``; d3rlpy: ``sample_trajectory_batch`` +
``algo.update``). The two are timed in alternating blocks so that a shared machine's load hits both alike;
the figure to quote is the ratio of the medians.

    python benchmarks/peer_speed.py --threads 2 --rounds 5 --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import qtkit
from qtkit.data import TrajectoryDataset

WIDTH, LAYERS, HEADS, CONTEXT, BATCH = 128, 3, 1, 20, 64


def hopper_like(episodes: int = 20, length: int = 1000, seed: int = 0) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(episodes):
        truncs = np.zeros(length, dtype=bool)
        truncs[-1] = True
        eps.append({"observations": rng.normal(size=(length + 1, 11)).astype(np.float32),
                    "actions": rng.uniform(-1, 1, size=(length, 3)).astype(np.float32),
                    "rewards": rng.uniform(0, 3, size=length).astype(np.float32),
                    "terminations": np.zeros(length, dtype=bool), "truncations": truncs})
    return TrajectoryDataset.from_episodes(eps, metadata={"dataset_id": "hopper-like", "ref_min_score": 0.0,
                                                          "ref_max_score": 3000.0})


def qtkit_stepper(data: TrajectoryDataset) -> tuple[object, dict]:
    overrides = {"backbone": {"width": WIDTH, "depth": LAYERS, "heads": HEADS, "mlp_dim": 4 * WIDTH, "dropout": 0.1},
                 "batch_size": BATCH, "context": CONTEXT, "warmup_steps": 10, "device": "cpu", "log_every": 10_000}
    agent = qtkit.build("dt-gpt", dataset=data, **overrides)
    agent.fit(data, steps=100_000, until=3, progress=False)  # sets up optimisers and schedule, 3 warm-up steps
    tc = agent.train_config

    def step() -> None:
        batch = data.sample_windows(tc.batch_size, tc.context, agent.generator, rtg_scale=tc.rtg_scale)
        agent.train_step(batch.to(agent.device))

    return step, agent.config


def d3rlpy_stepper(data: TrajectoryDataset) -> tuple[object, dict]:
    from qtkit.peers.d3rlpy_runners import _Setup, resolve_peer_params

    params = resolve_peer_params("d3rlpy-dt", {"width": WIDTH, "num_layers": LAYERS, "num_heads": HEADS,
                                               "context_size": CONTEXT, "batch_size": BATCH, "device": "cpu"})
    setup = _Setup("d3rlpy-dt", data, 100_000, params, seed=0)
    for _ in range(3):
        setup.algo.update(setup.sample())

    def step() -> None:
        setup.algo.update(setup.sample())

    return step, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed blocks per library")
    parser.add_argument("--steps", type=int, default=20, help="gradient steps per timed block")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = hopper_like()
    steppers = {"qtkit dt-gpt": qtkit_stepper(data)[0], "d3rlpy DecisionTransformer": d3rlpy_stepper(data)[0]}
    rates: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(args.rounds):
        for name, step in steppers.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[name].append(args.steps / (time.perf_counter() - start))
    median = {name: statistics.median(r) for name, r in rates.items()}
    ratio = median["qtkit dt-gpt"] / median["d3rlpy DecisionTransformer"]
    result = {"config": {"width": WIDTH, "layers": LAYERS, "heads": HEADS, "context": CONTEXT, "batch": BATCH},
              "threads": args.threads, "rounds": args.rounds, "steps_per_block": args.steps,
              "steps_per_s": {k: [round(x, 3) for x in v] for k, v in rates.items()},
              "median_steps_per_s": {k: round(v, 3) for k, v in median.items()}, "ratio": round(ratio, 3)}
    print("| library | median steps/s | blocks |\n|---|---|---|")
    for name in steppers:
        print(f"| {name} | {median[name]:.2f} | {', '.join(f'{x:.2f}' for x in rates[name])} |")
    print(f"\nratio qtkit / d3rlpy = {ratio:.2f}x  ({args.threads} threads, context {CONTEXT}, batch {BATCH}, "
          f"{LAYERS} layers, {HEADS} head, width {WIDTH})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
