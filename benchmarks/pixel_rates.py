"""Training steps/s of the pixel presets at their CPU size, with the conv encoder and with a timm model.

    .venv/bin/python benchmarks/pixel_rates.py --dataset minari:qtkit/maze2d-umaze-pixels-v0

One torch thread (a sweep runs one trial per core). Each configuration takes a few set-up steps through
``fit`` (optimisers, warm-up), then ``--steps`` timed ``train_step`` calls on freshly sampled windows; window
sampling is included (it is part of every step). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

import qtkit
from qtkit.data import load_dataset

ENCODERS = {"conv": {"type": "conv"}, "timm convnext_atto": {"type": "timm", "model": "convnext_atto"},
            "timm resnet18": {"type": "timm", "model": "resnet18"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="minari:qtkit/maze2d-umaze-pixels-v0")
    parser.add_argument("--presets", nargs="*", default=["qt-gpt-pixels", "qtransformer-pixels"])
    parser.add_argument("--encoders", nargs="*", default=["conv", "timm convnext_atto"], choices=list(ENCODERS))
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per configuration")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    print(f"dataset {data.name}: {data.num_steps} steps, frames {tuple(data.obs_shape)}, {args.threads} thread(s)")
    print("| preset | encoder | batch x context | training steps/s | frames/s |\n|---|---|---:|---:|---:|")
    for preset in args.presets:
        for name in args.encoders:
            agent = qtkit.build(preset, dataset=data, encoder=ENCODERS[name])
            agent.fit(data, steps=args.steps + 3, until=3, progress=False)  # set-up and warm-up steps
            tc = agent.train_config
            started = time.perf_counter()
            for _ in range(args.steps):
                batch = data.sample_windows(tc.batch_size, tc.context, agent.generator, rtg_scale=tc.rtg_scale)
                agent.train_step(batch.to(agent.device))
            rate = args.steps / (time.perf_counter() - started)
            frames = rate * tc.batch_size * tc.context
            print(f"| {preset} | {name} | {tc.batch_size} x {tc.context} | {rate:.2f} | {frames:.0f} |", flush=True)


if __name__ == "__main__":
    main()
