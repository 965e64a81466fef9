"""Training steps/s of ``dt-gpt`` and ``qt-gpt-nstep`` side by side, and ``rtg-grid`` actions/s.

    .venv/bin/python benchmarks/training.py --threads 2                  # reference size (batch 256, K 20, 256/4/4)
    .venv/bin/python benchmarks/training.py --sizes small --threads 2    # width 128, 3 layers, 1 head, batch 64
    .venv/bin/python benchmarks/training.py --sizes reference,small --what training
    .venv/bin/python benchmarks/training.py --sizes reference,small --what qtransformer --threads 1

Training: both agents are built with ``qtkit.build`` (reference = the presets' defaults; small =
backbone width 128 / depth 3 / heads 1 / MLP 512, batch 64), prepared and given their optimizers
exactly as ``fit`` does (``prepare`` -> ``to(device)`` -> ``make_optimizers`` -> train mode), then
``agent.train_step(batch)`` is timed on fresh ``sample_windows`` batches of synthetic hopper-sized
data (obs 11, act 3; sampling is outside the timer). DT and QT steps alternate in one loop, so the
QT/DT ratio is measured under the same load; the table gives the median seconds per step and the
median of the per-pair ratios. GFLOP counts the matmul work of one step as
``torch.utils.flop_counter`` sees it (forward, backward, the EMA bootstrap pass and the critic).

Inference: ``Rollout.act`` (the code path ``evaluate`` uses: rolling K-step context, the sampler's
``select``) for ``--envs`` environments, with ``rtg-grid`` (``--candidates`` rows per env, scored by
the critic) and ``single-rtg`` (the DT sampler, one row per env) at the same size, after the context
has filled (K steps). actions/s = envs / seconds per ``act`` call.

``--what compare`` times the speed work side by side (one process, variants alternating step by
step, the same batches; ratios are medians of per-step ratios against ``plain``):

- ``plain``: the policy (and EMA policy) forward before the speed work: all 3K tokens through every
  layer, outputs read afterwards; ``rtg-grid`` candidates through the same plain forward, every row;
- ``fast``: the library as it is (last layer at the read tokens only, final action token dropped when
  unused, identical candidate rows once, last position only at inference);
- ``fast+ema``: also the EMA bootstrap pass asks for actions only (``predict_next=False``; proposed
  change to ``QTAgent.train_step``);
- ``fast+ema+fused``: also fused AdamW (``create_optimizer_v2(..., fused=True)``; proposed change
  to ``QTAgent.make_optimizers``).

``--what qtransformer`` times ``qtransformer`` (the ``ar-q`` critic alone: bootstrap, target pass, loss,
backward, AdamW, polyak) against ``qt-gpt-nstep`` with the same backbone size, on the same data, steps of
four agents alternating in one process (order rotated every round): each preset at its own batch and
context (``qt-gpt-nstep``: the size's B x K, 256 x 20 or 64 x 20; ``qtransformer``: its preset's 128 x 8
at both sizes) and each at the other's B x K (a matched batch of windows). The ratio columns are medians
of per-round ratios against ``qt-gpt-nstep`` at the same B x K and at its own defaults.

``--malloc tuned`` (default) keeps glibc from returning big freed blocks to the kernel (see
benchmarks/backbones.py); ``--malloc default`` to compare. Report ``/proc/loadavg`` with the figures:
the machine is shared and 2-thread figures are only meaningful with both cores free.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial
from typing import Any

import numpy as np
import torch

import qtkit
from qtkit.data import TrajectoryDataset

try:  # run as a script (benchmarks/ on sys.path) or as a module
    from backbones import tune_malloc  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from benchmarks.backbones import tune_malloc

SIZES: dict[str, dict[str, Any]] = {
    "reference": {},  # the presets' defaults: batch 256, K 20, width 256, depth 4, heads 4, MLP 1024
    "small": {"backbone": {"width": 128, "depth": 3, "heads": 1, "mlp_dim": 512}, "batch_size": 64},
}


def describe(agent: Any) -> str:
    b, tc = agent.config["backbone"], agent.train_config
    return f"B {tc.batch_size}, K {tc.context}, {b['width']}/{b['depth']}/{b['heads']}"


def synthetic_dataset(episodes: int, seed: int = 0, obs_dim: int = 11, act_dim: int = 3,
                      max_length: int = 1000) -> TrajectoryDataset:
    """Random hopper-sized episodes (10..max_length steps, obs 11, act 3), built with ``from_episodes``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        t = int(rng.integers(10, max_length + 1))
        out.append({
            "observations": rng.normal(size=(t + 1, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (t, act_dim)).astype(np.float32),
            "rewards": rng.uniform(0, 4, t).astype(np.float32),
            "terminations": np.r_[np.zeros(t - 1, bool), rng.random() < 0.5],
        })
    return TrajectoryDataset.from_episodes(out, metadata={"dataset_id": "synthetic-hopper"})


def build(preset: str, size: str, dataset: TrajectoryDataset, device: str, preset_batch: bool = False,
          **extra: Any) -> Any:
    """An agent set up as ``fit`` does before its first step; ``preset_batch``: keep the preset's own batch
    size (not the size's); ``extra`` overrides last (e.g. ``batch_size``, ``context``)."""
    size_overrides = {k: v for k, v in SIZES[size].items() if not (preset_batch and k == "batch_size")}
    agent = qtkit.build(preset, dataset=dataset, device=device, **{**size_overrides, **extra})
    agent.prepare(dataset)
    agent.to(agent.resolve_device())
    agent.make_optimizers(agent.train_config.steps)
    agent.policy.train()
    if agent.critic is not None:
        agent.critic.train()
    return agent


def batch_for(agent: Any, dataset: TrajectoryDataset, generator: np.random.Generator) -> Any:
    tc = agent.train_config
    return dataset.sample_windows(tc.batch_size, tc.context, generator, rtg_scale=tc.rtg_scale).to(agent.device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def acting_times(rollout: Any, observations: Any, calls: int, rewards: np.ndarray, dones: np.ndarray) -> list[float]:
    """Seconds of each of ``calls`` ``rollout.act`` calls (device-synchronised) after the K-step context is full;
    ``observations()`` gives each call's observations, ``rewards``/``dones`` go to ``observe`` after it."""
    agent, times = rollout.agent, []
    for i in range(agent.train_config.context + calls):  # fill the K-step context first
        obs = observations()
        sync(agent.device)
        start = time.perf_counter()
        rollout.act(obs)
        sync(agent.device)
        if i >= agent.train_config.context:
            times.append(time.perf_counter() - start)
        rollout.observe(rewards, dones)
    return times


def plain_forward(policy: Any, states: Any, actions: Any, rtg: Any, timesteps: Any, mask: Any = None,
                  **_: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``GPTPolicy.forward`` before the speed work: all 3K tokens through every layer, outputs read after."""
    from einops import rearrange

    t = policy.embed_timestep(timesteps.clamp(0, policy.max_timestep - 1))
    tokens = torch.stack((policy.embed_return(rtg.unsqueeze(-1).to(states.dtype)) + t,
                          policy.embed_state(states) + t, policy.embed_action(actions) + t), dim=2)
    tokens = policy.embed_drop(policy.embed_ln(rearrange(tokens, "b k three w -> b (k three) w")))
    token_mask = None if mask is None else rearrange(torch.stack((mask,) * 3, dim=2), "b k three -> b (k three)")
    hidden = rearrange(policy.backbone(tokens, token_mask), "b (k three) w -> b k three w", three=3)
    squashed = torch.tanh(policy.action_head(hidden[:, :, 1]))
    action = policy.action_low + (squashed + 1.0) * 0.5 * (policy.action_high - policy.action_low)
    next_state = policy.next_state_head(hidden[:, :, 2]) if policy.next_state_head is not None else None
    return action, next_state


def plain_candidate_actions(policy: Any, ctx: Any) -> torch.Tensor:
    """``candidate_actions`` before the speed work: every row (repeated states), the full window."""
    e, n = ctx.num_envs, ctx.num_rows
    rows = torch.arange(e, device=ctx.states.device).repeat_interleave(n)
    predicted, _ = plain_forward(policy, ctx.states[rows], ctx.actions[rows], ctx.rtg.reshape(e * n, -1),
                                 ctx.timesteps[rows], ctx.mask[rows])
    return predicted[:, -1].reshape(e, n, -1)


VARIANTS = ["plain", "fast", "fast+ema", "fast+ema+fused"]


def apply_variant(agent: Any, variant: str) -> Any:
    """Make ``agent`` (built by :func:`build`) run ``variant`` (see the module docstring)."""
    import functools

    parts = set(variant.split("+"))
    policies = [agent.policy] + ([agent.ema_policy] if agent.ema_policy is not None else [])
    if "plain" in parts:
        for policy in policies:
            policy.forward = functools.partial(plain_forward, policy)
    if "ema" in parts and agent.ema_policy is not None:
        agent.ema_policy.forward = functools.partial(type(agent.ema_policy).forward, agent.ema_policy,
                                                     predict_next=False)
    if "fused" in parts:  # make_optimizers as it would be with fused=True passed to timm
        import timm.optim

        create = timm.optim.create_optimizer_v2
        timm.optim.create_optimizer_v2 = functools.partial(create, fused=True)
        try:
            agent.make_optimizers(agent.train_config.steps)
        finally:
            timm.optim.create_optimizer_v2 = create
    return agent


def step_gflop(agent: Any, batch: Any) -> float:
    """Matmul GFLOP of one ``train_step`` (counted on a deep copy, so the timed agents are untouched)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    clone = copy.deepcopy(agent)
    clone.make_optimizers(clone.train_config.steps)
    with FlopCounterMode(display=False) as counter:
        clone.train_step(batch)
    return counter.get_total_flops() / 1e9


def time_training(size: str, dataset: TrajectoryDataset, args: argparse.Namespace) -> list[str]:
    agents = {name: build(name, size, dataset, args.device) for name in ("dt-gpt", "qt-gpt-nstep")}
    gen = np.random.default_rng(1)
    gflop = {name: step_gflop(agent, batch_for(agent, dataset, gen)) for name, agent in agents.items()}
    times: dict[str, list[float]] = {name: [] for name in agents}
    for i in range(args.warmup + args.repeats):
        for name, agent in agents.items():
            batch = batch_for(agent, dataset, gen)
            sync(agent.device)
            start = time.perf_counter()
            agent.train_step(batch)
            sync(agent.device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    dt, qt = times["dt-gpt"], times["qt-gpt-nstep"]
    ratio = statistics.median(q / d for q, d in zip(qt, dt, strict=True))
    rows = []
    for name, agent in agents.items():
        sec = statistics.median(times[name])
        rows.append(
            f"| {size} | {describe(agent)} | {name} | {agent.device.type} | {1 / sec:.3f} | {1000 * sec:.0f} | "
            f"{1000 * min(times[name]):.0f} | {gflop[name]:.0f} | {gflop[name] / sec:.0f} | "
            f"{ratio:.2f} |" if name == "qt-gpt-nstep" else
            f"| {size} | {describe(agent)} | {name} | {agent.device.type} | {1 / sec:.3f} | {1000 * sec:.0f} | "
            f"{1000 * min(times[name]):.0f} | {gflop[name]:.0f} | {gflop[name] / sec:.0f} | 1 |"
        )
    return rows


def time_qtransformer(size: str, dataset: TrajectoryDataset, args: argparse.Namespace) -> list[str]:
    """``qtransformer`` vs ``qt-gpt-nstep`` training steps, each at its own and at the other's batch x context."""
    qt = build("qt-gpt-nstep", size, dataset, args.device)
    qtr = build("qtransformer", size, dataset, args.device, preset_batch=True)
    qt_bk = (qt.train_config.batch_size, qt.train_config.context)
    qtr_bk = (qtr.train_config.batch_size, qtr.train_config.context)
    agents = {
        ("qt-gpt-nstep", "own"): qt,
        ("qtransformer", "own"): qtr,
        ("qtransformer", "matched"): build("qtransformer", size, dataset, args.device, batch_size=qt_bk[0],
                                           context=qt_bk[1]),
        ("qt-gpt-nstep", "matched"): build("qt-gpt-nstep", size, dataset, args.device, batch_size=qtr_bk[0],
                                           context=qtr_bk[1]),
    }

    def shape(agent: Any) -> tuple[int, int]:
        return agent.train_config.batch_size, agent.train_config.context

    baseline = {shape(a): key for key, a in agents.items() if key[0] == "qt-gpt-nstep"}  # B x K -> qt-gpt-nstep
    gen = np.random.default_rng(4)
    gflop = {key: step_gflop(agent, batch_for(agent, dataset, gen)) for key, agent in agents.items()}
    times: dict[Any, list[float]] = {key: [] for key in agents}
    keys = list(agents)
    for i in range(args.warmup + args.repeats):
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:  # rotate the order every round
            agent = agents[key]
            batch = batch_for(agent, dataset, gen)
            sync(agent.device)
            start = time.perf_counter()
            agent.train_step(batch)
            sync(agent.device)
            if i >= args.warmup:
                times[key].append(time.perf_counter() - start)
    own_qt = times[("qt-gpt-nstep", "own")]
    rows = []
    for key, agent in agents.items():
        sec = statistics.median(times[key])
        b, k = shape(agent)
        same = statistics.median(t / q for t, q in zip(times[key], times[baseline[(b, k)]], strict=True))
        vs_own = statistics.median(t / q for t, q in zip(times[key], own_qt, strict=True))
        rows.append(
            f"| {size} | {key[0]} | {b} x {k} ({key[1]}) | {describe(agent).split(', ')[-1]} | {1 / sec:.3f} | "
            f"{1000 * sec:.0f} | {1000 * min(times[key]):.0f} | {b * k / sec:,.0f} | {gflop[key]:.1f} | "
            f"{gflop[key] / sec:.0f} | {same:.2f} | {vs_own:.2f} |"
        )
    return rows


def time_inference(size: str, dataset: TrajectoryDataset, args: argparse.Namespace) -> list[str]:
    from qtkit.agents.evaluation import Rollout

    rows = []
    samplers = [
        ("qt-gpt-nstep", {"type": "rtg-grid", "candidates": args.candidates}),
        ("dt-gpt", {"type": "single-rtg"}),
    ]
    for preset, sampler in samplers:
        agent = build(preset, size, dataset, args.device, sampler=sampler)
        rollout = Rollout(agent, num_envs=args.envs, seed=0)
        draw = partial(np.random.default_rng(2).normal, size=(args.envs, agent.shapes["obs_dim"]))
        times = acting_times(rollout, lambda draw=draw: draw().astype(np.float32), args.inference_steps,
                             np.ones(args.envs, np.float32), np.zeros(args.envs, bool))
        sec = statistics.median(times)
        rows.append(
            f"| {size} | {describe(agent)} | {sampler['type']} | {args.envs} x {agent.sampler.num_rows} | "
            f"{agent.device.type} | {args.envs / sec:.1f} | {1000 * sec:.1f} | {1000 * min(times):.1f} |"
        )
    return rows


def time_compare(size: str, dataset: TrajectoryDataset, args: argparse.Namespace) -> list[str]:
    """Training steps of every variant (and rtg-grid act() calls of plain vs fast), alternating."""
    import qtkit.samplers.candidates as candidates
    from qtkit.agents.evaluation import Rollout

    rows = []
    gen = np.random.default_rng(3)
    for preset in ("qt-gpt-nstep", "dt-gpt"):
        agents = {v: apply_variant(build(preset, size, dataset, args.device), v) for v in VARIANTS}
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for i in range(args.warmup + args.repeats):
            batch = batch_for(agents["plain"], dataset, gen)
            for v in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
                sync(agents[v].device)
                start = time.perf_counter()
                agents[v].train_step(batch)
                sync(agents[v].device)
                if i >= args.warmup:
                    times[v].append(time.perf_counter() - start)
        for v in VARIANTS:
            ratio = statistics.median(t / p for t, p in zip(times[v], times["plain"], strict=True))
            rows.append(f"| {size} | {preset} train_step | {v} | {1000 * statistics.median(times[v]):.0f} | "
                        f"{1000 * min(times[v]):.0f} | {ratio:.3f} |")
    agent = build("qt-gpt-nstep", size, dataset, args.device, sampler={"type": "rtg-grid", "candidates": args.candidates})
    paths = {"plain": plain_candidate_actions, "fast": candidates.candidate_actions}
    rollouts = {v: Rollout(agent, num_envs=args.envs, seed=0) for v in paths}
    act_times: dict[str, list[float]] = {v: [] for v in paths}
    rng = np.random.default_rng(2)
    fast_path = candidates.candidate_actions
    try:
        for i in range(agent.train_config.context + args.inference_steps):
            obs = rng.normal(size=(args.envs, agent.shapes["obs_dim"])).astype(np.float32)
            for v in list(paths) if i % 2 == 0 else list(paths)[::-1]:
                candidates.candidate_actions = paths[v]
                sync(agent.device)
                start = time.perf_counter()
                rollouts[v].act(obs)
                sync(agent.device)
                if i >= agent.train_config.context:
                    act_times[v].append(time.perf_counter() - start)
                rollouts[v].observe(np.ones(args.envs, np.float32), np.zeros(args.envs, bool))
    finally:
        candidates.candidate_actions = fast_path
    for v in paths:
        ratio = statistics.median(t / p for t, p in zip(act_times[v], act_times["plain"], strict=True))
        rows.append(f"| {size} | rtg-grid act ({args.envs} x {args.candidates}) | {v} | "
                    f"{1000 * statistics.median(act_times[v]):.0f} | {1000 * min(act_times[v]):.0f} | {ratio:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per agent (median)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps per agent first (glibc's heap takes ~3 steps to settle)")
    parser.add_argument("--sizes", default="reference", help="comma-separated: reference, small")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--what", default="training,inference",
                        help="comma-separated: training, inference, compare, qtransformer")
    parser.add_argument("--envs", type=int, default=10, help="inference: parallel environments")
    parser.add_argument("--candidates", type=int, default=50, help="inference: rtg-grid rows per env")
    parser.add_argument("--inference-steps", type=int, default=10, help="inference: timed act() calls")
    parser.add_argument("--episodes", type=int, default=200, help="synthetic dataset: episodes of 10-1000 steps")
    parser.add_argument("--malloc", choices=["tuned", "default"], default="tuned")
    args = parser.parse_args()

    tuned = args.malloc == "tuned" and tune_malloc()
    torch.set_num_threads(args.threads)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {sorted(SIZES)}")
    what = {w.strip() for w in args.what.split(",")}
    dataset = synthetic_dataset(args.episodes)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"threads={args.threads} torch={torch.__version__} cpu={torch.backends.cpu.get_cpu_capability()} "
          f"device={args.device} repeats={args.repeats} malloc={'tuned' if tuned else 'default'} "
          f"loadavg(start)={load} nproc={os.cpu_count()}")
    if "training" in what:
        print("\n| size | config | preset | device | steps/s | ms/step (median) | ms/step (best) | GFLOP/step | "
              "GFLOP/s | QT/DT step |")
        print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
        for size in sizes:
            for row in time_training(size, dataset, args):
                print(row, flush=True)
    if "qtransformer" in what:
        print("\n| size | preset | B x K | backbone | steps/s | ms/step (median) | ms/step (best) | positions/s | "
              "GFLOP/step | GFLOP/s | time / qt-gpt-nstep, same B x K | time / qt-gpt-nstep, its defaults |")
        print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for size in sizes:
            for row in time_qtransformer(size, dataset, args):
                print(row, flush=True)
    if "inference" in what:
        print("\n| size | config | sampler | envs x rows | device | actions/s | ms/act (median) | ms/act (best) |")
        print("|---|---|---|---|---|---:|---:|---:|")
        for size in sizes:
            for row in time_inference(size, dataset, args):
                print(row, flush=True)
    if "compare" in what:
        print("\n| size | what | variant | ms (median) | ms (best) | time / plain (median of per-step ratios) |")
        print("|---|---|---|---:|---:|---:|")
        for size in sizes:
            for row in time_compare(size, dataset, args):
                print(row, flush=True)
    with open("/proc/loadavg") as f:
        print(f"\nloadavg(end)={' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
