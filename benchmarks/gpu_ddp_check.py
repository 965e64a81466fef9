"""The data-parallel path on a GPU: 2 ranks sharing one GPU (gloo carries the CUDA tensors) against 1 process.

Issue 18 asks for "the DDP path with 1 GPU + a CPU equivalence run" when a GPU is lent. NCCL refuses two ranks on
one GPU, so the ranks use gloo (``distributed.backend_for``): the same code path as NCCL in qtkit (device batches,
the bucketed gradient all-reduce, the exact means), only the transport differs. For each preset and switch set, 2
ranks with B/2 windows each train ``--steps`` steps on ``cuda`` and 1 process trains the same steps with B; the
largest weight difference is printed (GPU reductions differ in order, so the tolerance is loose: 1e-4). No dropout
(each rank draws its own dropout stream). Writes a Markdown table to ``--out``.

Command (the device machine, from benchmarks/gpu_session.sh): ``python3 benchmarks/gpu_ddp_check.py --out DIR``.
On a machine without CUDA it runs on the CPU (``--device cpu``), which is how CI-less checks keep it working.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "device_windows+sync_free": {"device_windows": True, "sync_free": True},
}
PRESETS = ("qt-gpt-nstep", "qtransformer")
BATCH = 16


def overrides(preset: str, device: str, switches: dict[str, Any]) -> dict[str, Any]:
    """Small sizes, no dropout, SGD with a large step (differences grow visible), the switches."""
    out: dict[str, Any] = {"backbone": {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "dropout": 0.0},
                           "batch_size": BATCH, "log_every": 2, "optimizer": "sgd", "lr": 0.05,
                           "scheduler": "none", "warmup_steps": 0, "device": device, **switches}
    if preset.startswith("qt-"):
        out.update(policy={"embed_dropout": 0.0}, critic_lr=0.05, context=4)
    else:
        out.update(critic={"bins": 16}, context=4)
    return out


def train(preset: str, device: str, switches: dict[str, Any], steps: int) -> dict[str, torch.Tensor]:
    import qtkit
    from benchmarks.training import synthetic_dataset

    data = synthetic_dataset(12, seed=0, max_length=40)
    torch.manual_seed(0)
    agent = qtkit.build(preset, dataset=data, seed=0, **overrides(preset, device, switches))
    agent.fit(data, steps=steps, progress=False)
    return {k: v.detach().float().cpu().clone() for k, v in agent.state_dict().items()}


def rank_main(rank: int, port: int, device: str, steps: int, out: str) -> None:
    from qtkit.training import distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch.distributed as dist

    if device == "cpu":
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    else:
        distributed.init_from_env()  # one GPU, two ranks: gloo on GPU 0 for both
    result = {(p, v): train(p, device, s, steps) for p in PRESETS for v, s in VARIANTS.items()}
    result["backend"] = str(dist.get_backend())
    torch.save(result, Path(out) / f"rank{rank}.pt")
    distributed.leave(0, together=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu"))
    args = parser.parse_args()
    import tempfile

    import torch.multiprocessing as mp

    from qtkit.fileio import atomic_write_text
    from qtkit.training.distributed import free_port

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(rank_main, args=(free_port(), args.device, args.steps, tmp), nprocs=2, join=True)
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(2)]
    label = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    lines = [f"Data-parallel check on {label}: 2 ranks x B/2 (backend {ranks[0]['backend']}) against 1 process x B, "
             f"{args.steps} steps, B {BATCH}; max |weight difference| (tolerance 1e-4).", "",
             "| preset | switches | ranks agree | max diff vs 1 process | ok |", "|---|---|---|---:|---|"]
    failed = False
    for preset in PRESETS:
        for variant, switches in VARIANTS.items():
            one = train(preset, args.device, switches, args.steps)
            a, b = ranks[0][(preset, variant)], ranks[1][(preset, variant)]
            agree = all(torch.equal(a[k], b[k]) for k in a)
            diff = max(float((a[k] - one[k]).abs().max()) for k in a if a[k].numel())
            ok = agree and diff <= 1e-4
            failed |= not ok
            lines.append(f"| {preset} | {variant} | {agree} | {diff:.2e} | {'yes' if ok else 'NO'} |")
    lines.append(f"\n{time.perf_counter() - start:.0f} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    device = "cuda" if args.device == "cuda" else "cpu"
    atomic_write_text(Path(args.out) / f"ddp-check-{device}.md", text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
