"""GPU training throughput of the fast path (issue 18): steps/s, tokens/s and model-FLOP utilisation per variant,
and the 50-candidate acting latency of QT; plus ``--compare``, the new paths against the old side by side.

    .venv/bin/python benchmarks/gpu.py                      # CUDA: the reference sizes; no CUDA: --smoke
    .venv/bin/python benchmarks/gpu.py --smoke              # tiny sizes on the CPU (CI keeps the script alive)
    .venv/bin/python benchmarks/gpu.py --peak-tflops 989    # MFU against this peak instead of the device table
    .venv/bin/python benchmarks/gpu.py --compare --threads 2  # CPU: device windows / sync-free / compiled vs old

Presets ``dt-gpt``, ``qt-gpt-nstep`` and ``qtransformer`` at the presets' reference sizes (``qtkit show``: GPT width
256, 4 layers, 4 heads; QT/DT batch 256 x context 20, Q-Transformer 128 x 8, ar-q 256 bins), on synthetic hopper-sized
data (obs 11, act 3). Variants, each a fresh agent trained by ``fit`` (the real loop) for the warm-up steps (which
include compilation and CUDA-graph recording), then timed on ``--steps`` more calls of ``train_step`` fed by the same
sampler ``fit`` uses; CUDA is synchronised before and after the timed block only:

- ``baseline``: today's default path: fp32 without TF32, host window sampler + copy, per-step sync (non-finite check
  and float metrics every step);
- ``fp32``: the fast data path (``device_windows``, ``sync_free``) in fp32 without TF32;
- ``tf32``: + TF32 matmuls; ``bf16``: + bf16 autocast;
- ``compiled``: bf16 + ``compile_step`` (inductor, default mode);
- ``cudagraphs``: bf16 + ``compile_step`` with ``compile_mode=reduce-overhead`` (inductor's CUDA graph trees).

FLOPs per step: ``torch.utils.flop_counter.FlopCounterMode`` over one eager fp32 step (matmuls and attention, forward
and backward, every pass of the step); tokens per step: the tokens that enter a backbone with gradients on in that
step (a forward hook; the no-grad bootstrap, target and EMA passes are not counted), 3 per timestep for the GPT
policy, the ar-q critic's own sequence for Q-Transformer. MFU = FLOPs/step x steps/s
/ the device's dense peak for the variant's math (fp32, TF32, or bf16 for bf16 variants) from ``PEAK_TFLOPS`` or
``--peak-tflops``. syncs/step (CUDA): host-device synchronisations of one batch + step, counted with
``torch.cuda.set_sync_debug_mode("warn")`` (the sync-free QT step should show 0; ``qtransformer``'s ``ar-q`` critic
gathers the valid rows by boolean indexing, data-dependent shapes that sync). Acting: ``Rollout.act`` of
``qt-gpt-nstep`` with its ``rtg-grid`` sampler (50 candidates scored by the critic) for one environment after the
context has filled, median milliseconds per call.

``--smoke`` (automatic without CUDA): tiny sizes, 3 timed steps, the compiled variants with the ``aot_eager`` backend
(no C++ compiler; CUDA graphs need CUDA, so that row runs the same compiled step): it checks that the script runs,
not speed. The table is printed and written atomically to ``benchmarks/results/gpu/<device>.md``.

``--compare`` (any device): one process, the old and the new path alternating call by call on the same data so the
machine's load affects both alike; ratios are medians of per-pair ratios (old / new time: > 1 means the new is faster).
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import qtkit
from qtkit.data import TrajectoryDataset
from qtkit.data.device_windows import DeviceWindowSampler
from qtkit.fileio import atomic_write_text

try:  # run as a script (benchmarks/ on sys.path) or as a module
    from training import acting_times, sync, synthetic_dataset  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from benchmarks.training import acting_times, sync, synthetic_dataset

PRESETS = ("dt-gpt", "qt-gpt-nstep", "qtransformer")
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"precision": "fp32", "tf32": False},
    "fp32": {"precision": "fp32", "tf32": False, "device_windows": True, "sync_free": True},
    "tf32": {"precision": "fp32", "tf32": True, "device_windows": True, "sync_free": True},
    "bf16": {"precision": "bf16", "tf32": True, "device_windows": True, "sync_free": True},
    "compiled": {"precision": "bf16", "tf32": True, "device_windows": True, "sync_free": True, "compile_step": True},
    "cudagraphs": {"precision": "bf16", "tf32": True, "device_windows": True, "sync_free": True, "compile_step": True,
                   "compile_mode": "reduce-overhead"},
}
#: dense peak TFLOP/s by (device name pattern, math): vendor datasheets (SXM parts; no sparsity)
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    (r"H200|H100.*(SXM|HBM3)", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
    (r"H100", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),  # PCIe
    (r"A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
    (r"L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0}),
]
SMOKE = {"backbone": {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64}, "batch_size": 8, "context": 4}
SMOKE_CRITIC = {"twin-mlp": {"hidden": [32, 32]}, "ar-q": {"bins": 16}}


def peak_for(device: torch.device, math: str, override: float | None) -> float | None:
    """Dense peak TFLOP/s of ``device`` for ``math`` (fp32, tf32, bf16); None when unknown (MFU not shown)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, name):
            return peaks[math]
    return None


def overrides(preset: str, smoke: bool) -> dict[str, Any]:
    """Size overrides: none at the reference size; the tiny smoke sizes with ``--smoke``."""
    if not smoke:
        return {}
    from qtkit.config import load_preset, resolve_config

    critic = resolve_config(load_preset(preset))["critic"]
    return {**SMOKE, **({"critic": SMOKE_CRITIC[critic["type"]]} if critic else {})}


def batch_source(agent: Any, dataset: TrajectoryDataset) -> Callable[[], Any]:
    """The batches ``fit`` would give this agent (device sampler or host sampler + copy)."""
    tc = agent.train_config
    if tc.device_windows:
        sampler = DeviceWindowSampler(dataset, tc.context, agent.device, rtg_scale=tc.rtg_scale)
        return lambda: sampler.sample(tc.batch_size, agent.generator)
    return lambda: dataset.sample_windows(tc.batch_size, tc.context, agent.generator,
                                          rtg_scale=tc.rtg_scale).to(agent.device)


def count_step(agent: Any, batch: Any) -> tuple[float, int]:
    """``(FLOPs, backbone tokens)`` of one eager fp32 ``train_step`` (on a deep copy: the timed agent is untouched)."""
    from torch.utils.flop_counter import FlopCounterMode

    clone = copy.deepcopy(agent)
    for wrapped in ("train_step", "step_optimizer"):  # compile_step's wrappers (bound to the timed agent): not here
        clone.__dict__.pop(wrapped, None)
    clone.train_config.precision = "fp32"
    clone.make_optimizers(clone.train_config.steps)
    tokens = [0]
    from qtkit.backbones.base import Backbone

    backbones = [sub for module in clone.modules().values() for sub in module.modules() if isinstance(sub, Backbone)]

    def hook(module: Any, args: tuple[Any, ...]) -> None:
        if torch.is_grad_enabled():  # the trained pass, not the no-grad bootstrap / target / EMA passes
            tokens[0] += int(args[0].shape[0]) * int(args[0].shape[1])

    handles = [m.register_forward_pre_hook(hook) for m in backbones]
    with FlopCounterMode(display=False) as counter:
        clone.train_step(batch, diagnose=False)  # the family's eager step
    for h in handles:
        h.remove()
    return float(counter.get_total_flops()), tokens[0]


def time_variant(preset: str, variant: str, dataset: TrajectoryDataset, args: argparse.Namespace) -> dict[str, Any]:
    switches = dict(VARIANTS[variant])
    if args.smoke and switches.get("compile_step"):
        switches["compile_backend"] = "aot_eager"  # no C++ compile in CI; modes are inductor's
    torch._dynamo.reset()
    agent = qtkit.build(preset, dataset=dataset, device=args.device, **overrides(preset, args.smoke), **switches,
                        log_every=10_000)
    total = args.warmup + args.steps + 10
    agent.fit(dataset, steps=total, until=args.warmup, progress=False)  # set-up, compilation, CUDA graph recording
    next_batch = batch_source(agent, dataset)
    sync(agent.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        agent.train_step(next_batch(), diagnose=False)
    sync(agent.device)
    seconds = (time.perf_counter() - start) / args.steps
    syncs = count_syncs(agent, next_batch)
    flops, tokens = count_step(agent, next_batch())
    math = "bf16" if switches["precision"] == "bf16" else ("tf32" if switches["tf32"] and agent.device.type == "cuda"
                                                            else "fp32")
    peak = peak_for(agent.device, math, args.peak_tflops)
    tc = agent.train_config
    return {"preset": preset, "variant": variant, "size": f"B {tc.batch_size} x K {tc.context}",
            "steps_s": 1.0 / seconds, "ms": seconds * 1e3, "tokens_s": tokens / seconds,
            "tflops": flops / seconds / 1e12, "mfu": None if peak is None else flops / seconds / (peak * 1e12),
            "gflop": flops / 1e9, "math": math, "syncs": syncs}


def count_syncs(agent: Any, next_batch: Callable[[], Any]) -> int | None:
    """Host-device syncs of one batch + step on CUDA (``torch.cuda.set_sync_debug_mode``: one warning per
    synchronising call); None on the CPU."""
    if agent.device.type != "cuda":
        return None
    import warnings

    torch.cuda.synchronize(agent.device)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            agent.train_step(next_batch(), diagnose=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def acting_latency(dataset: TrajectoryDataset, variant: str, args: argparse.Namespace) -> float:
    """Median ms of ``Rollout.act`` for one env, ``qt-gpt-nstep`` (rtg-grid, 50 candidates), context filled."""
    from qtkit.agents.evaluation import Rollout

    switches = {k: v for k, v in VARIANTS[variant].items() if k in ("precision", "tf32")}
    agent = qtkit.build("qt-gpt-nstep", dataset=dataset, device=args.device, **overrides("qt-gpt-nstep", args.smoke),
                        **switches)
    agent.prepare(dataset)
    agent.to(agent.resolve_device())
    agent.policy.eval()
    agent.critic.eval()
    rollout = Rollout(agent, num_envs=1, seed=0)
    obs = np.zeros((1, dataset.obs_dim), np.float32)
    times = acting_times(rollout, lambda: obs, args.act_calls, np.ones(1, np.float32), np.zeros(1, bool))
    return statistics.median(times) * 1e3


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def table(rows: list[dict[str, Any]], acting: dict[str, float], args: argparse.Namespace, device: torch.device) -> str:
    mode = "smoke (tiny sizes, aot_eager for the compiled rows: not a speed figure)" if args.smoke else "reference sizes"
    lines = [
        f"# GPU fast path: {device_label(device)}, {mode}",
        "",
        f"Command: `{' '.join(['python', 'benchmarks/gpu.py', *sys.argv[1:]])}`; torch {torch.__version__}; "
        f"{args.warmup} warm-up steps (excluded), {args.steps} timed steps per variant.",
        "",
        "| preset | size | variant | steps/s | ms/step | tokens/s | GFLOP/step | TFLOP/s | MFU (math) | syncs/step |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} % ({r['math']})"
        lines.append(f"| {r['preset']} | {r['size']} | {r['variant']} | {r['steps_s']:.1f} | {r['ms']:.2f} | "
                     f"{r['tokens_s']:,.0f} | {r['gflop']:.2f} | {r['tflops']:.2f} | {mfu} | "
                     f"{'n/a' if r['syncs'] is None else r['syncs']} |")
    if acting:
        lines += ["", "Acting: `qt-gpt-nstep`, `rtg-grid` with 50 candidates scored by the critic, one env, "
                  "`Rollout.act` after the context filled (median):", "",
                  "| variant | ms per action |", "|---|---:|"]
        lines += [f"| {v} | {ms:.2f} |" for v, ms in acting.items()]
    return "\n".join(lines) + "\n"


def compare(args: argparse.Namespace) -> str:
    """Old vs new side by side (see the module docstring): sampling, per-step sync, compiled step."""
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    lines = [f"Side by side on {device_label(device)} (one process, old and new alternating; ratio = median of "
             "per-pair old/new times, > 1: the new path is faster):", "",
             "| what | size | old | new | old ms | new ms | old/new |", "|---|---|---|---|---:|---:|---:|"]

    def pairs(old: Callable[[], Any], new: Callable[[], Any], n: int) -> tuple[float, float, float]:
        to, tn, ratio = [], [], []
        for i in range(n):
            order = ((old, to), (new, tn)) if i % 2 == 0 else ((new, tn), (old, to))
            for fn, out in order:
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                out.append(time.perf_counter() - start)
            ratio.append(to[-1] / tn[-1])
        return statistics.median(to) * 1e3, statistics.median(tn) * 1e3, statistics.median(ratio)

    big = synthetic_dataset(772, seed=0)  # ~400k transitions, as benchmarks/windows.py
    host_gen, dev_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    sampler = DeviceWindowSampler(big, 20, device, rtg_scale=1000.0)
    o, n, r = pairs(lambda: big.sample_windows(256, 20, host_gen, rtg_scale=1000.0).to(device),
                    lambda: sampler.sample(256, dev_gen), args.compare_calls * 10)
    lines.append(f"| window sampling | B 256 x K 20, {big.num_steps:,} steps | host `sample_windows` + copy | "
                 f"`DeviceWindowSampler` | {o:.2f} | {n:.2f} | {r:.2f} |")

    small = {"backbone": {"width": 128, "depth": 3, "heads": 1, "mlp_dim": 512}, "batch_size": 64}
    data = synthetic_dataset(100, seed=1, max_length=300)

    def agent_with(preset: str = "qt-gpt-nstep", **switches: Any) -> tuple[Any, Callable[[], Any]]:
        torch.manual_seed(0)
        agent = qtkit.build(preset, dataset=data, device=args.device, **small, **switches, log_every=10_000)
        agent.fit(data, steps=1000, until=2, progress=False)
        return agent, batch_source(agent, data)

    a_old, b_old = agent_with()
    a_new, b_new = agent_with(sync_free=True)
    o, n, r = pairs(lambda: a_old.train_step(b_old()), lambda: a_new.train_step(b_new()), args.compare_calls)
    lines.append(f"| training step | qt-gpt-nstep 128/3/1, B 64 x K 20 | per-step sync (default) | `sync_free` | "
                 f"{o:.1f} | {n:.1f} | {r:.2f} |")
    q_old, qb_old = agent_with("qtransformer")
    q_new, qb_new = agent_with("qtransformer", sync_free=True)  # ar-q: every window position, masked
    o, n, r = pairs(lambda: q_old.train_step(qb_old()), lambda: q_new.train_step(qb_new()), args.compare_calls)
    lines.append(f"| training step | qtransformer 128/3/1, B 64 x K {q_old.train_config.context} | valid rows selected, "
                 f"per-step sync (default) | `sync_free` (all positions, masked) | {o:.1f} | {n:.1f} | {r:.2f} |")
    a_dev, b_dev = agent_with(device_windows=True)
    o, n, r = pairs(lambda: a_old.train_step(b_old()), lambda: a_dev.train_step(b_dev()), args.compare_calls)
    lines.append(f"| training step | qt-gpt-nstep 128/3/1, B 64 x K 20 | host sampler (default) | `device_windows` | "
                 f"{o:.1f} | {n:.1f} | {r:.2f} |")
    if not args.no_compile:
        start = time.perf_counter()
        a_cmp, b_cmp = agent_with(compile_step=True, compile_backend=args.compile_backend)
        for _ in range(3):  # the compiled graphs of a non-logged step (the first is compiled at fit's step 1)
            a_cmp.train_step(b_cmp())
        warm = time.perf_counter() - start
        o, n, r = pairs(lambda: a_old.train_step(b_old()), lambda: a_cmp.train_step(b_cmp()), args.compare_calls)
        lines.append(f"| training step | qt-gpt-nstep 128/3/1, B 64 x K 20 | eager (default) | `compile_step` "
                     f"({args.compile_backend}; set-up + compile {warm:.0f} s, excluded) | {o:.1f} | {n:.1f} | {r:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (automatic without CUDA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 50; smoke 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up steps by fit (default 10; smoke 6): compiled steps settle after ~3")
    parser.add_argument("--act-calls", type=int, default=None, help="timed act calls (default 50; smoke 3)")
    parser.add_argument("--budget", type=float, default=360.0,
                        help="seconds after which no further variant starts (the run must stay under 8 min on an H200)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s for MFU (default: table)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--compare", action="store_true", help="old vs new paths side by side (see the docstring)")
    parser.add_argument("--compare-calls", type=int, default=30)
    parser.add_argument("--compile-backend", default="inductor", help="--compare's compiled step backend")
    parser.add_argument("--no-compile", action="store_true", help="--compare without the compiled step")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        print(compare(args))
        return 0
    cuda = torch.cuda.is_available() and args.device != "cpu"
    args.smoke = args.smoke or not cuda
    args.device = args.device if args.device != "auto" else ("cuda" if cuda else "cpu")
    args.steps = args.steps or (3 if args.smoke else 50)
    args.warmup = args.warmup or (6 if args.smoke else 10)
    args.act_calls = args.act_calls or (3 if args.smoke else 50)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    unknown += [p for p in args.presets.split(",") if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset or variant {unknown}; presets {list(PRESETS)}, variants {list(VARIANTS)}")
    dataset = synthetic_dataset(20 if args.smoke else 772, seed=0, max_length=50 if args.smoke else 1000)
    device = torch.device(args.device)
    began = time.perf_counter()
    rows = []
    skipped = []
    # eager variants of every preset first, then the compiled ones (the slow compilations), within --budget
    order = sorted(((p, v) for p in args.presets.split(",") for v in args.variants.split(",")),
                   key=lambda pv: bool(VARIANTS[pv[1]].get("compile_step")))
    for preset, variant in order:
        if time.perf_counter() - began > args.budget:
            skipped.append(f"{preset} {variant}")
            continue
        rows.append(time_variant(preset, variant, dataset, args))
        print(f"[{time.perf_counter() - began:6.0f} s] {preset} {variant}: {rows[-1]['steps_s']:.1f} steps/s",
              file=sys.stderr)
    position = {(p, v): i for i, (p, v) in enumerate((p, v) for p in args.presets.split(",")
                                                     for v in args.variants.split(","))}
    rows.sort(key=lambda r: position[(r["preset"], r["variant"])])
    acting = {v: acting_latency(dataset, v, args) for v in args.variants.split(",")
              if v in ("baseline", "tf32", "bf16") and "qt-gpt-nstep" in args.presets.split(",")}
    text = table(rows, acting, args, device)
    if skipped:
        text += f"\nNot run (past the --budget of {args.budget:.0f} s): {', '.join(skipped)}.\n"
    print(text)
    name = re.sub(r"[^a-z0-9]+", "-", device_label(device).lower()).strip("-")
    path = atomic_write_text(Path(args.out) / f"{'smoke-' if args.smoke else ''}{name}.md", text)
    print(f"written {path} ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
