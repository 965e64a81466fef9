"""Training steps/s from one checkpoint with denormal floats kept or flushed (``torch.set_flush_denormal``).

    .venv/bin/python benchmarks/denormals.py \\
        runs/sweeps/pixels-options/maze2d-umaze-pixels-state-v0/qt-pixels+state-stack3/seed1/checkpoint \\
        --dataset minari:qtkit/maze2d-umaze-pixels-state-v0 --threads 1 2

(the checkpoint: ``qtkit sweep benchmarks/suites/pixels-options.yaml``, a 2000-step run whose weights and Adam
moments hold ~430k denormal values). Each configuration runs in a fresh process, one after the other: the
checkpoint is restored exactly (``fit``'s resume path), one warm-up step, then ``--steps`` timed training steps.
Modes: ``kept`` (QTKIT_CPU_TUNING=off: no flush), ``at start`` (flushed before torch starts its threads: what
``qtkit train`` and sweep trials do, ``qtkit.cpu.prepare_process``), ``late`` (flushed after the threads started:
only the calling thread is covered). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODES = ("kept", "at start", "late")


def child(checkpoint: str, dataset: str, threads: int, mode: str, steps: int) -> None:
    import torch

    if mode == "at start":
        torch.set_flush_denormal(True)  # before any torch work: the intra-op threads inherit it
    torch.set_num_threads(threads)
    import qtkit
    from qtkit.data import load_dataset

    data = load_dataset(dataset)
    agent = qtkit.load(checkpoint)
    agent._restore(checkpoint, data, total=agent.step + steps + 1)
    agent.train_mode()
    tc = agent.train_config
    tiny = torch.finfo(torch.float32).tiny
    denormal = sum(int(((p != 0) & (p.abs() < tiny)).sum()) for m in agent.modules().values() for p in m.parameters())
    moments = sum(int(((v != 0) & (v.abs() < tiny)).sum()) for opt in (agent.policy_optimizer, agent.critic_optimizer)
                  if opt is not None for st in opt.state.values() for v in st.values() if torch.is_tensor(v))

    def step() -> None:
        batch = data.sample_windows(tc.batch_size, tc.context, agent.generator, rtg_scale=tc.rtg_scale,
                                    frame_stack=agent.encoder.frame_stack)
        agent.train_step(batch)

    step()  # warm-up (and, for "late", the intra-op threads now exist)
    if mode == "late":
        torch.set_flush_denormal(True)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    print(json.dumps({"seconds": seconds, "denormal_weights": denormal, "denormal_moments": moments}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.checkpoint, args.dataset, args.threads[0], args.child, args.steps)
        return
    print("| threads | denormals | s / step | speed-up |\n|---:|---|---:|---:|")
    env = {**os.environ, "QTKIT_CPU_TUNING": "off"}  # the modes decide, not qtkit's switch
    for threads in args.threads:
        kept = None
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, args.checkpoint, "--dataset", args.dataset, "--threads", str(threads),
                 "--steps", str(args.steps), "--child", mode], capture_output=True, text=True, env=env, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            kept = kept or result["seconds"]
            print(f"| {threads} | {mode} | {result['seconds']:.3f} | {kept / result['seconds']:.1f}x |", flush=True)
    print(f"\n(denormal values in the checkpoint: {result['denormal_weights']} weights, "
          f"{result['denormal_moments']} Adam moments)")


if __name__ == "__main__":
    main()
