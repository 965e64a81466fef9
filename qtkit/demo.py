"""``make demo``: Decision Transformer against QT on D4RL-style maze2d-umaze, data made here, on 2 CPU cores.

maze2d is where the QT paper's claim lives: the data's planner drives to random goals and the reward counts
only time spent at ONE fixed target, so a return-conditioned imitator has to stitch the pieces of trajectories
that happen to pass the target. The demo trains ``dt-gpt`` and ``qt-maze2d`` (the reference's maze2d settings)
with the reduced model of the maze2d study (``benchmarks/suites/maze2d.yaml``, seed 0 of the same trials, cut
at the study's first evaluation), side by side (one process and one core each), evaluates both at half-way and
at the end and writes ``results.md``, ``results.json`` and ``curves.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

#: The maze2d study's reduced model (benchmarks/suites/maze2d.yaml ``set:``); tests/test_demo.py checks they agree.
DEMO_OVERRIDES: dict[str, Any] = {
    "backbone": {"width": 64, "depth": 2, "heads": 1, "mlp_dim": 256, "dropout": 0.1},
    "batch_size": 64,
    "context": 20,
    "rtg_scale": 10.0,
    "log_every": 250,
}
#: Per-preset extras on top of DEMO_OVERRIDES: the study's method ``set:`` entries.
DEMO_PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "dt-gpt": {"warmup_steps": 1000},
    "qt-maze2d": {"critic": {"hidden": [128, 128, 128]}, "lr_schedule_steps": 39216},
}
DEMO_STEPS = 5000  # the study's first evaluation point
DEMO_EVALUATIONS = 2  # evaluations per run: half-way and at the end
DEMO_DATASET = "maze2d-umaze"
DEMO_DATA_STEPS = 1_000_000  # D4RL's size for maze2d-umaze (~30 s to make)
PRESETS = ("dt-gpt", "qt-maze2d")


def _train_one(preset: str, dataset_id: str, steps: int, seed: int, eval_episodes: int, log_dir: str,
               threads: int) -> dict[str, Any]:
    """Train and evaluate one preset (run in its own process when the demo runs presets side by side)."""
    import qtkit
    from qtkit.cpu import prepare_process
    from qtkit.data import load_dataset

    prepare_process(threads)
    data = load_dataset(f"minari:{dataset_id}")
    agent = qtkit.build(preset, dataset=data, seed=seed, **DEMO_OVERRIDES, **DEMO_PRESET_OVERRIDES.get(preset, {}))
    result = agent.fit(data, steps, eval_env=data, eval_every=max(1, steps // DEMO_EVALUATIONS),
                       eval_episodes=eval_episodes, log_dir=log_dir, progress=False)
    return {k: result[k] for k in ("final", "best", "evaluations", "metrics")}


def _last_step(log_dir: Path) -> int:
    import csv

    path = log_dir / "metrics.csv"
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return 0
    return int(float(rows[-1]["step"])) if rows else 0


def _progress_line(out: Path, steps: int, started: float, firsts: dict[str, tuple[float, int]]) -> str:
    """``preset step/steps (steps/s, ETA)`` for every preset, from the runs' metrics.csv files."""
    now = time.perf_counter()
    parts = []
    for preset in PRESETS:
        step = _last_step(out / preset)
        if step and preset not in firsts:  # rates count from the first logged step (after start-up)
            firsts[preset] = (now, step)
        t0, s0 = firsts.get(preset, (now, step))
        rate = (step - s0) / (now - t0) if step > s0 else 0.0
        eta = f"ETA {int((steps - step) / rate // 60)}m{int((steps - step) / rate % 60):02d}s" if rate else "ETA ?"
        parts.append(f"{preset} {step}/{steps} ({rate:.1f} steps/s, {eta})" if step < steps else f"{preset} done")
    return f"[{int(now - started)} s] " + " | ".join(parts)


def run_demo(out: str | Path = "runs/demo", steps: int | None = None, dataset: str = DEMO_DATASET,
             seed: int = 0, eval_episodes: int = 10, parallel: bool | None = None) -> dict[str, Any]:
    """Make the dataset if missing, train each preset (side by side on 2+ cores), evaluate, write the results.

    ``parallel``: None trains the presets in two processes (one thread each) when the machine has 2 or more
    cores, else one after the other.
    """
    import os

    from qtkit.data import load_dataset, make_dataset
    from qtkit.fileio import atomic_write_text
    from qtkit.report import learning_curves_png, markdown_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = steps or DEMO_STEPS
    started = time.perf_counter()
    dataset_id = make_dataset(dataset, steps=DEMO_DATA_STEPS, seed=seed, exist_ok=True)
    data = load_dataset(f"minari:{dataset_id}")
    print(f"dataset {dataset_id}: {len(data.episode_returns)} episodes, {int(sum(data.episode_lengths))} steps, "
          f"{sum(r > 0 for r in data.episode_returns)} of them pass the target (return > 0)")
    del data
    cores = os.cpu_count() or 1
    parallel = cores >= 2 if parallel is None else parallel
    print(f"training {', '.join(PRESETS)} for {steps} steps each"
          f"{' side by side (one core each)' if parallel else ''}; evaluation every {steps // DEMO_EVALUATIONS} steps")
    results: dict[str, Any] = {}
    if parallel:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        firsts: dict[str, tuple[float, int]] = {}
        with ProcessPoolExecutor(max_workers=len(PRESETS), mp_context=context) as pool:
            futures = {p: pool.submit(_train_one, p, dataset_id, steps, seed, eval_episodes, str(out / p), 1)
                       for p in PRESETS}
            while not all(f.done() for f in futures.values()):
                time.sleep(15)
                print(_progress_line(out, steps, started, firsts), flush=True)
            results = {p: f.result() for p, f in futures.items()}
    else:
        for preset in PRESETS:
            print(f"\n== {preset}: {steps} steps ==")
            results[preset] = _train_one(preset, dataset_id, steps, seed, eval_episodes, str(out / preset),
                                         max(1, min(2, cores)))
    rows = [{"method": preset, "final": r["final"], "best": r["best"]} for preset, r in results.items()]
    table = markdown_table(rows)
    header = (f"# qtkit demo\n\nDataset `{dataset_id}` (D4RL maze2d semantics), {steps} gradient steps per method, "
              f"{eval_episodes} evaluation episodes, seed {seed}, {time.perf_counter() - started:.0f} s in all. Model: "
              "GPT width 64, 2 layers, 1 head, context 20, batch 64; QT's critic 3 x 128 (`qtkit.demo.DEMO_OVERRIDES`, "
              "the maze2d study's reduced model). Scores: 0 = uniform-random policy, 100 = the planner driving to "
              "the target; ± is the spread over evaluation episodes.\n\n")
    atomic_write_text(out / "results.md", header + table + "\n\n![learning curves](curves.png)\n")
    learning_curves_png({p: r["evaluations"] for p, r in results.items()},
                        {p: r["metrics"] for p, r in results.items()}, out / "curves.png")
    atomic_write_text(out / "results.json", json.dumps(
        {p: {k: r[k] for k in ("final", "best")} for p, r in results.items()}, indent=2, default=float))
    print("\n" + table)
    print(f"\nwrote {out / 'results.md'} and {out / 'curves.png'}")
    return results
