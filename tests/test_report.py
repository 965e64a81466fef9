"""Sweep reports from synthetic run folders: aggregation numbers, ranks, files, header."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from qtkit.report import aggregate_runs, collect_runs, overall_summary, write_report

#: final / best normalised scores per (dataset, method) and seed
SCORES = {
    ("maze", "qt"): ([50.0, 60.0, 70.0], [80.0, 90.0, 100.0]),
    ("maze", "dt"): ([40.0, 45.0, 50.0], [55.0, 60.0, 65.0]),
    ("maze", "iql"): ([60.0, 60.0], [61.0, 62.0]),
    ("hopper", "qt"): ([10.0, 30.0, 20.0], [30.0, 40.0, 50.0]),
    ("hopper", "dt"): ([25.0, 25.0, 25.0], [26.0, 27.0, 28.0]),
}


def write_run(root: Path, dataset: str, method: str, seed: int, final: float, best: float, steps: int = 100,
              seconds: float = 60.0) -> Path:
    run = root / dataset / method / f"seed{seed}"
    run.mkdir(parents=True)
    evaluations = [{"step": steps // 2, "normalized_score": best, "mean_return": best * 2},
                   {"step": steps, "normalized_score": final, "mean_return": final * 2}]
    summary = {"steps": steps, "final": evaluations[-1], "best": max(evaluations, key=lambda e: e["normalized_score"]),
               "evaluations": evaluations}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "status.json").write_text(json.dumps({"state": "done", "hardware": "Test CPU (2 cores)",
                                                       "seconds": seconds + seed}))
    (run / "trial.yaml").write_text(yaml.safe_dump({
        "method": {"label": method}, "dataset": {"label": dataset}, "seed": seed, "steps": steps,
        "eval_every": steps // 2, "eval_episodes": 5}))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for (dataset, method), (finals, bests) in SCORES.items():
        for seed, (f, b) in enumerate(zip(finals, bests)):
            write_run(tmp_path, dataset, method, seed, f, b)
    resumed = tmp_path / "hopper" / "dt" / "seed1" / "status.json"
    resumed.write_text(json.dumps({**json.loads(resumed.read_text()), "resumed_from": 50}))
    crashed = tmp_path / "maze" / "iql" / "seed2"
    crashed.mkdir(parents=True)
    (crashed / "status.json").write_text(json.dumps({"state": "failed", "error": "RuntimeError: boom"}))
    waiting = tmp_path / "hopper" / "iql" / "seed0"
    waiting.mkdir(parents=True)
    (waiting / "status.json").write_text(json.dumps({"state": "pending"}))
    return tmp_path


def test_aggregation_numbers_and_ranks(runs: Path) -> None:
    table = aggregate_runs(collect_runs(runs))
    assert list(table) == ["hopper", "maze"]
    maze = {row["method"]: row for row in table["maze"]}
    for method in ("qt", "dt", "iql"):
        finals, bests = SCORES[("maze", method)]
        row = maze[method]
        assert row["n"] == len(finals)
        assert row["final_mean"] == pytest.approx(np.mean(finals))
        assert row["final_std"] == pytest.approx(np.std(finals, ddof=1))
        assert row["best_mean"] == pytest.approx(np.mean(bests))
        assert row["return_mean"] == pytest.approx(2 * np.mean(finals))
    assert maze["iql"]["failed"] == 1 and maze["iql"]["n"] == 2
    # ranked by the final score: iql 60 > qt 60? no: qt mean 60 ties iql 60 -> same rank; dt last
    assert maze["qt"]["rank"] == maze["iql"]["rank"] == 1 and maze["dt"]["rank"] == 3
    assert maze["qt"]["best_rank"] == 1 and maze["iql"]["best_rank"] == 2
    hopper = table["hopper"]
    assert [r["method"] for r in hopper] == ["dt", "qt", "iql"]  # 25 > 20; iql has no finished run
    assert hopper[2]["rank"] is None and hopper[2]["unfinished"] == 1 and hopper[2]["final_mean"] is None
    assert hopper[0]["final_std"] == 0.0


def test_overall_summary_across_datasets(runs: Path) -> None:
    overall = {row["method"]: row for row in overall_summary(aggregate_runs(collect_runs(runs)))}
    # maze ranks: qt 1, iql 1, dt 3; hopper ranks: dt 1, qt 2 (iql unfinished there)
    assert overall["qt"]["mean_rank"] == pytest.approx(1.5) and overall["qt"]["mean_final"] == pytest.approx(40.0)
    assert overall["dt"]["mean_rank"] == pytest.approx(2.0) and overall["dt"]["mean_final"] == pytest.approx(35.0)
    assert overall["iql"]["mean_rank"] == pytest.approx(1.0) and overall["iql"]["datasets"] == 1
    assert overall["qt"]["of"] == 2
    assert [row["method"] for row in overall_summary(aggregate_runs(collect_runs(runs)))] == ["iql", "qt", "dt"]


def test_single_seed_has_no_spread(tmp_path: Path) -> None:
    write_run(tmp_path, "d", "m", 0, 12.0, 15.0)
    (row,) = aggregate_runs(collect_runs(tmp_path))["d"]
    assert row["n"] == 1 and row["final_std"] is None


def test_report_files_and_header(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    path = write_report(runs, out, name="unit")
    text = path.read_text()
    assert text.startswith("# qtkit report: unit")
    assert "100 gradient steps per trial, 5 evaluation episodes (every 50 steps), seeds 0, 1, 2" in text
    assert "hardware: Test CPU (2 cores)" in text and "commit " in text and "qtkit 0.1.0" in text
    assert "| 1 | qt | 60.0 ± 10.0 | 90.0 ± 10.0 | 3 | 120.0 ± 20.0 | 61 | 0 |" in text  # 60, 61, 62 s
    assert "| 1 | iql | 60.0 ± 0.0 | 61.5 ± 0.7 | 2 | 120.0 ± 0.0 | 60 | 1 |" in text  # 60, 61 s
    # 14 finished trials: 5 methods x seeds 0..2 minus iql's missing seed 2 -> 14 * 60 + seed offsets (3+3+1+3+3)
    assert "- compute: 0.24 trial-hours in all" in text
    assert "| 1 | dt | 25.0 ± 0.0 | 27.0 ± 1.0 | 3 | 50.0 ± 0.0 | 61 (1 resumed) | 0 |" in text
    assert "| qt | 1.50 | 40.0 | 2/2 |" in text and "| iql | 1.00 | 60.0 | 1/2 |" in text
    data = json.loads((out / "report.json").read_text())
    assert data["meta"]["trials"] == {"done": 14, "failed": 1, "unfinished": 1}
    assert data["meta"]["trial_seconds"] == pytest.approx(14 * 60 + 13)
    assert data["failures"][0]["error"] == "RuntimeError: boom"
    assert {r["method"] for r in data["datasets"]["maze"]} == {"qt", "dt", "iql"}
    for dataset in ("maze", "hopper"):
        png = out / f"curves_{dataset}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp*"))  # temporary files were renamed away


def test_folder_layout_without_trial_yaml(tmp_path: Path) -> None:
    run = write_run(tmp_path, "ds", "meth", 4, 1.0, 2.0)
    (run / "trial.yaml").unlink()
    (only,) = collect_runs(tmp_path)
    assert (only["dataset"], only["method"], only["seed"]) == ("ds", "meth", 4)


def test_report_cli(runs: Path) -> None:
    from typer.testing import CliRunner

    from qtkit.cli import app

    result = CliRunner().invoke(app, ["report", str(runs)])
    assert result.exit_code == 0, result.output
    assert "## maze" in result.output and (runs / "report.md").is_file()
    assert CliRunner().invoke(app, ["report", str(runs / "nope")]).exit_code == 2


def test_value_diagnostics_table_and_plot(runs: Path, tmp_path: Path) -> None:
    """Runs that log value diagnostics get a per-dataset table (mean of each run's last 5 logged values, then
    mean ± std over seeds) and a PNG; methods without them (peers) are left out; unfinished runs do not count."""
    for seed, corr in enumerate([0.2, 0.4, 0.6]):
        rows = ["step,q_mc_corr,q_bias,lq_grad_ratio,lq_grad_cos,target_valid_frac,bc_loss"]
        # 7 rows: the first two (corr 9.0) fall outside the last-5 tail and must not count
        rows += [f"{s},{9.0 if s <= 2 else corr},-1.5,0.5,{-0.1 * seed},0.9,0.1" for s in range(1, 8)]
        (runs / "maze" / "qt" / f"seed{seed}" / "metrics.csv").write_text("\n".join(rows) + "\n")
    (runs / "maze" / "dt" / "seed0" / "metrics.csv").write_text("step,bc_loss\n1,0.5\n")  # no diagnostics
    path = write_report(runs, tmp_path / "report", name="unit")
    text = path.read_text()
    assert "| qt | 3 | 0.40 ± 0.20 | -1.50 ± 0.00 | 0.50 ± 0.00 | -0.10 ± 0.10 | 0.90 ± 0.00 |" in text
    assert "| dt |" not in text.split("Value diagnostics")[1].split("## ")[0]
    assert (tmp_path / "report" / "diagnostics_maze.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "report" / "diagnostics_hopper.png").exists()
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["diagnostics"]["maze"][0]["q_mc_corr"] == pytest.approx([0.4, 0.2])
