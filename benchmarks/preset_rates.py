"""Training steps/s and evaluation time of each preset at a sweep suite's reduced size, to plan a suite's budget.

    .venv/bin/python benchmarks/preset_rates.py --dataset minari:qtkit/pointmaze-umaze-sparse-v0

Uses the cpu suite's model (GPT width 64, 2 layers, 1 head, MLP 256, batch 64, context 20; twin-MLP
critics 2 x 128; 10 scored candidates) and 1 torch thread (the suite runs one trial per core).
"""

from __future__ import annotations

import argparse
import time

import torch

import qtkit
from qtkit.data import load_dataset

COMMON = {"backbone": {"width": 64, "depth": 2, "heads": 1, "mlp_dim": 256, "dropout": 0.1},
          "batch_size": 64, "context": 20, "rtg_scale": 10.0}
EXTRA = {"qt-gpt-nstep": {"critic": {"hidden": [128, 128]}, "sampler": {"candidates": 10}},
         "qt-gpt-1step": {"critic": {"hidden": [128, 128]}, "sampler": {"candidates": 10}},
         "qt-gpt-arq": {"sampler": {"candidates": 10}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="minari:qtkit/pointmaze-umaze-sparse-v0")
    parser.add_argument("--presets", nargs="*", default=["dt-gpt", "qt-gpt-nstep", "qtransformer", "qt-gpt-arq"])
    parser.add_argument("--steps", type=int, default=25, help="timed training steps per preset")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    print("| preset | training steps/s | evaluation s |\n|---|---:|---:|")
    for preset in args.presets:
        train_keys = qtkit.build(preset, obs_dim=1, act_dim=1).config["train"]
        config = {k: v for k, v in COMMON.items() if k == "backbone" or k in train_keys}
        agent = qtkit.build(preset, dataset=data, **config, **EXTRA.get(preset, {}))
        agent.fit(data, steps=args.steps + 5, until=5, progress=False)  # set-up and warm-up steps
        tc = agent.train_config
        started = time.perf_counter()
        for _ in range(args.steps):
            agent.train_step(data.sample_windows(tc.batch_size, tc.context, agent.generator, rtg_scale=tc.rtg_scale))
        rate = args.steps / (time.perf_counter() - started)
        started = time.perf_counter()
        agent.evaluate(data, episodes=args.episodes, seed=0)
        print(f"| {preset} | {rate:.1f} | {time.perf_counter() - started:.1f} |", flush=True)


if __name__ == "__main__":
    main()
