"""``make demo``: DT against QT on a PointMaze dataset qtkit makes itself, on a CPU budget."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

#: The demo's model and budget: small enough for < 10 minutes on 2 CPU cores (the reference sizes are
#: in registry.yaml; the GPU suite runs them). Context 10 instead of 20 and 20 scored candidates
#: instead of 50 halve the training and evaluation cost on CPU.
DEMO_OVERRIDES: dict[str, Any] = {
    "backbone": {"width": 128, "depth": 3, "heads": 1, "mlp_dim": 512, "dropout": 0.1},
    "batch_size": 64,
    "context": 10,
    "rtg_scale": 10.0,
    "warmup_steps": 100,
    "ema_start": 200,
    "log_every": 50,
}
#: Per-preset extras on top of DEMO_OVERRIDES.
DEMO_PRESET_OVERRIDES: dict[str, dict[str, Any]] = {"qt-gpt-nstep": {"sampler": {"candidates": 20}}}
DEMO_STEPS = 1000
DEMO_EVALUATIONS = 2  # evaluations per run: half-way and at the end
DEMO_DATA_STEPS = 100_000
PRESETS = ("dt-gpt", "qt-gpt-nstep")


def run_demo(out: str | Path = "runs/demo", steps: int | None = None, dataset: str = "pointmaze-umaze-sparse",
             seed: int = 0, eval_episodes: int = 10) -> dict[str, Any]:
    """Make the dataset if missing, train each preset, evaluate, write results.md and curves.png."""
    import torch

    import qtkit
    from qtkit.checkpoint import atomic_write_text
    from qtkit.data import load_dataset, make_dataset
    from qtkit.report import learning_curves_png, markdown_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = steps or DEMO_STEPS
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    started = time.perf_counter()
    dataset_id = make_dataset(dataset, steps=DEMO_DATA_STEPS, seed=seed, exist_ok=True)
    data = load_dataset(f"minari:{dataset_id}")
    print(f"dataset {dataset_id}: {len(data.episode_returns)} episodes, {int(sum(data.episode_lengths))} steps")
    results: dict[str, Any] = {}
    for preset in PRESETS:
        print(f"\n== {preset}: {steps} steps ==")
        agent = qtkit.build(preset, dataset=data, seed=seed, **DEMO_OVERRIDES, **DEMO_PRESET_OVERRIDES.get(preset, {}))
        results[preset] = agent.fit(data, steps, eval_env=data, eval_every=max(1, steps // DEMO_EVALUATIONS),
                                    eval_episodes=eval_episodes, log_dir=out / preset)
    rows = [
        {"method": preset, "final": r["final"], "best": r["best"]} for preset, r in results.items()
    ]
    table = markdown_table(rows)
    header = (f"# qtkit demo\n\nDataset `{dataset_id}`, {steps} gradient steps per method, "
              f"{eval_episodes} evaluation episodes, seed {seed}, "
              f"{time.perf_counter() - started:.0f} s in all. Model: GPT width 128, 3 layers, 1 head, context 10, "
              "batch 64 (`qtkit.demo.DEMO_OVERRIDES`); qt-gpt-nstep scores 20 candidates per step.\n\n")
    atomic_write_text(out / "results.md", header + table + "\n\n![learning curves](curves.png)\n")
    learning_curves_png({p: r["evaluations"] for p, r in results.items()},
                        {p: r["metrics"] for p, r in results.items()}, out / "curves.png")
    atomic_write_text(out / "results.json", json.dumps(
        {p: {k: r[k] for k in ("final", "best")} for p, r in results.items()}, indent=2, default=float))
    print("\n" + table)
    print(f"\nwrote {out / 'results.md'} and {out / 'curves.png'}")
    return results
