"""Training steps/s of the pixel presets at their CPU size, with the conv encoder and with a timm model.

    .venv/bin/python benchmarks/pixel_rates.py --dataset minari:qtkit/maze2d-umaze-pixels-v0

One torch thread (a sweep runs one trial per core). Each configuration takes a few set-up steps through
``fit`` (optimisers, warm-up), then ``--steps`` timed ``train_step`` calls on freshly sampled windows; window
sampling is included (it is part of every step). Prints a Markdown table.

``--variants`` adds the encoder options next to the plain configuration, measured in the same run:
``frame_stack=3`` (the last 3 frames per position) and ``critic_encoder=separate`` (QT: the critic's own
encoder). A dataset with a proprioceptive vector (``-pixels-state``) measures that path, and ``frames-only`` the
same dataset without it:

    .venv/bin/python benchmarks/pixel_rates.py --dataset minari:qtkit/maze2d-umaze-pixels-state-v0 \
        --encoders conv --variants plain frames-only frame_stack=3 critic_encoder=separate
"""

from __future__ import annotations

import argparse
import time

import torch

import qtkit
from qtkit.data import load_dataset

#: ``--variants``: name -> (encoder options, train options); ``critic_encoder`` applies to QT presets only.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "plain": ({}, {}),
    "frames-only": ({}, {}),  # a -pixels-state dataset without its state vector (load_dataset(..., proprio=False))
    "frame_stack=3": ({"frame_stack": 3}, {}),
    "critic_encoder=separate": ({}, {"critic_encoder": "separate"}),
}

ENCODERS = {"conv": {"type": "conv"}, "timm convnext_atto": {"type": "timm", "model": "convnext_atto"},
            "timm resnet18": {"type": "timm", "model": "resnet18"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="minari:qtkit/maze2d-umaze-pixels-v0")
    parser.add_argument("--presets", nargs="*", default=["qt-gpt-pixels", "qtransformer-pixels"])
    parser.add_argument("--encoders", nargs="*", default=["conv", "timm convnext_atto"], choices=list(ENCODERS))
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per configuration")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="*", default=["plain"], choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    print(f"dataset {data.name}: {data.num_steps} steps, frames {tuple(data.obs_shape)}, proprio_dim "
          f"{data.proprio_dim}, {args.threads} thread(s)")
    print("| preset | encoder | variant | batch x context | training steps/s | frames/s |\n"
          "|---|---|---|---:|---:|---:|")
    for preset in args.presets:
        for name in args.encoders:
            for variant in args.variants:
                encoder_options, train_options = VARIANTS[variant]
                if "critic_encoder" in train_options and not preset.startswith("qt-"):
                    continue  # Q-Transformer's one network is the critic: its encoder is the critic's already
                used = data.without_proprio() if variant == "frames-only" and data.proprio_dim else data
                agent = qtkit.build(preset, dataset=used, encoder={**ENCODERS[name], **encoder_options},
                                    **train_options)
                agent.fit(used, steps=args.steps + 3, until=3, progress=False)  # set-up and warm-up steps
                tc, stack = agent.train_config, agent.encoder.frame_stack
                started = time.perf_counter()
                for _ in range(args.steps):
                    batch = used.sample_windows(tc.batch_size, tc.context, agent.generator, rtg_scale=tc.rtg_scale,
                                                frame_stack=stack)
                    agent.train_step(batch.to(agent.device))
                rate = args.steps / (time.perf_counter() - started)
                frames = rate * tc.batch_size * tc.context * stack
                print(f"| {preset} | {name} | {variant} | {tc.batch_size} x {tc.context} | {rate:.2f} | {frames:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
