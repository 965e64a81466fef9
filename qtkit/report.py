"""Tables and plots people look at: Markdown score tables and learning-curve PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtkit.errors import DataError


def _score(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "–"
    if entry.get("normalized_score") is not None:
        return f"{entry['normalized_score']:.1f} ± {entry.get('normalized_std', 0.0):.1f}"
    return f"{entry['mean_return']:.2f} ± {entry['std_return']:.2f} (return)"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """``rows``: ``{"method", "final", "best"}`` with evaluation dicts -> a Markdown table."""
    lines = ["| method | final score | best score (step) | final mean return |", "|---|---|---|---|"]
    for row in rows:
        final, best = row.get("final"), row.get("best")
        best_step = f" ({best['step']})" if best else ""
        ret = f"{final['mean_return']:.2f}" if final else "–"
        lines.append(f"| {row['method']} | {_score(final)} | {_score(best)}{best_step} | {ret} |")
    return "\n".join(lines)


def learning_curves_png(evaluations: dict[str, list[dict[str, Any]]], metrics: dict[str, list[dict[str, Any]]],
                        path: str | Path) -> Path:
    """Plot evaluation score and training losses against steps, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_score, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for method, history in evaluations.items():
        if not history:
            continue
        key = "normalized_score" if history[0].get("normalized_score") is not None else "mean_return"
        ax_score.plot([h["step"] for h in history], [h[key] for h in history], marker="o", label=method)
        ax_score.set_ylabel("normalised score" if key == "normalized_score" else "mean return")
    for method, rows in metrics.items():
        points = [(float(r["step"]), float(r["bc_loss"])) for r in rows if r.get("bc_loss") not in (None, "")]
        if points:
            ax_loss.plot(*zip(*points, strict=True), label=f"{method} bc loss")
    ax_score.set_xlabel("gradient step")
    ax_score.set_title("evaluation")
    ax_loss.set_xlabel("gradient step")
    ax_loss.set_yscale("log")
    ax_loss.set_title("behaviour-cloning loss")
    for ax in (ax_score, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically (a hidden temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    from qtkit.fileio import atomic_write_bytes

    try:
        return atomic_write_bytes(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- sweep reports
def _git_commit() -> str:
    """Short commit of the qtkit checkout (``+dirty`` with local changes), or ``unknown``."""
    import subprocess

    where = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if commit and dirty else (commit or "unknown")


def hardware_summary() -> str:
    """``CPU model (N cores)`` plus the GPU name when CUDA is available: where a trial ran."""
    import os
    import platform

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu} ({os.cpu_count()} cores)"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except Exception:
        pass
    return text


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def collect_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Every trial folder under ``runs_dir`` (one with ``summary.json`` or ``status.json``).

    Each run: ``dataset``, ``method``, ``seed`` (from ``trial.yaml``, else the folder layout
    ``<dataset>/<method>/seed<k>``), ``state``, ``summary`` (or None), ``status``, ``trial``, ``path``.
    """
    import yaml

    root = Path(runs_dir)
    folders = sorted({p.parent for name in ("summary.json", "status.json") for p in root.rglob(name)
                      if "checkpoint" not in p.parts})
    runs = []
    for folder in folders:
        trial: dict[str, Any] = {}
        if (folder / "trial.yaml").is_file():
            try:
                trial = yaml.safe_load((folder / "trial.yaml").read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                trial = {}
        rel = folder.relative_to(root).parts
        seed_part = rel[-1] if rel else "seed0"
        seed = trial.get("seed")
        if seed is None:
            seed = int(seed_part[4:]) if seed_part.startswith("seed") and seed_part[4:].isdigit() else 0
        method = (trial.get("method") or {}).get("label") or (rel[-2] if len(rel) >= 2 else folder.name)
        dataset = (trial.get("dataset") or {}).get("label") or (rel[-3] if len(rel) >= 3 else "dataset")
        status = _read_json(folder / "status.json") or {}
        summary = _read_json(folder / "summary.json")
        state = status.get("state") or ("done" if summary else "pending")
        if state == "done" and summary is None:
            state = "failed"
        runs.append({"dataset": dataset, "method": method, "seed": int(seed), "state": state, "summary": summary,
                     "status": status, "trial": trial, "path": str(folder)})
    return runs


def _score_of(entry: dict[str, Any] | None) -> tuple[float | None, str]:
    if not entry:
        return None, "normalized_score"
    if entry.get("normalized_score") is not None:
        return float(entry["normalized_score"]), "normalized_score"
    return float(entry["mean_return"]), "mean_return"


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    import numpy as np

    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)  # no spread from one seed


def aggregate_runs(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, one row per method: mean ± std over seeds (ddof 1) of the final and the best score, n, rank,
    ``seconds_mean``, the mean wall time of a finished trial (its last attempt; fit and evaluations), and
    ``resumed``, how many of its finished trials were resumed from a checkpoint (their time is partial).

    Scores are normalised (D4RL-style) where the dataset has reference scores, else mean returns (``unit``
    says which). Rows are sorted by rank: the final score's mean, highest first (ties share a rank);
    ``best_rank`` ranks the best scores the same way. Only finished runs count; ``failed`` counts the others.
    """
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        groups.setdefault(run["dataset"], {}).setdefault(run["method"], []).append(run)
    out: dict[str, list[dict[str, Any]]] = {}
    for dataset in sorted(groups):
        rows = []
        for method, members in groups[dataset].items():
            done = sorted((r for r in members if r["state"] == "done" and r["summary"]), key=lambda r: r["seed"])
            finals = [_score_of(r["summary"].get("final")) for r in done]
            bests = [_score_of(r["summary"].get("best")) for r in done]
            final_vals = [v for v, _ in finals if v is not None]
            best_vals = [v for v, _ in bests if v is not None]
            returns = [float(r["summary"]["final"]["mean_return"]) for r in done if r["summary"].get("final")]
            final_mean, final_std = _mean_std(final_vals)
            best_mean, best_std = _mean_std(best_vals)
            ret_mean, ret_std = _mean_std(returns)
            steps = sorted({int(r["summary"].get("steps", 0)) for r in done})
            seconds = [float(r["status"]["seconds"]) for r in done if r["status"].get("seconds") is not None]
            rows.append({
                "method": method, "n": len(final_vals), "seeds": [r["seed"] for r in done],
                "unit": finals[0][1] if finals else "normalized_score",
                "final_mean": final_mean, "final_std": final_std, "best_mean": best_mean, "best_std": best_std,
                "return_mean": ret_mean, "return_std": ret_std, "steps": steps,
                "seconds_mean": (sum(seconds) / len(seconds)) if seconds else None,
                "resumed": sum(r["status"].get("resumed_from") is not None for r in done),
                "failed": sum(r["state"] == "failed" for r in members),
                "unfinished": sum(r["state"] in ("pending", "running") for r in members),
            })
        for key, rank_key in (("best_mean", "best_rank"), ("final_mean", "rank")):
            ordered = sorted((r for r in rows if r[key] is not None), key=lambda r: -r[key])
            for i, row in enumerate(ordered):
                same = [o for o in ordered[:i] if o[key] == row[key]]
                row[rank_key] = same[0][rank_key] if same else i + 1
            for row in rows:
                row.setdefault(rank_key, None)
        rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0, r["method"]))
        out[dataset] = rows
    return out


def overall_summary(table: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per method across datasets: ``mean_rank`` (mean of its per-dataset final ranks),
    ``mean_final`` (mean over datasets of its mean final score), ``datasets`` (how many it has a score on,
    out of ``of``). Sorted by mean rank, then by mean score; methods with no finished run come last."""
    methods: dict[str, list[dict[str, Any]]] = {}
    for rows in table.values():
        for row in rows:
            methods.setdefault(row["method"], [])
            if row["rank"] is not None and row["final_mean"] is not None:
                methods[row["method"]].append(row)
    out = []
    for method, rows in methods.items():
        out.append({
            "method": method, "datasets": len(rows), "of": len(table),
            "mean_rank": (sum(r["rank"] for r in rows) / len(rows)) if rows else None,
            "mean_final": (sum(r["final_mean"] for r in rows) / len(rows)) if rows else None,
        })
    out.sort(key=lambda r: (r["mean_rank"] is None, r["mean_rank"] or 0.0, -(r["mean_final"] or 0.0), r["method"]))
    return out


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def _seconds(row: dict[str, Any]) -> str:
    if row["seconds_mean"] is None:
        return "–"
    return f"{row['seconds_mean']:.0f}" + (f" ({row['resumed']} resumed)" if row.get("resumed") else "")


def sweep_markdown(table: dict[str, list[dict[str, Any]]], meta: dict[str, Any],
                   diagnostics: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """The report as Markdown: a header (budget, hardware, version, commit), one ranked table per dataset and,
    where methods log them, a value-diagnostics table per dataset (``diagnostics``: :func:`diagnostics_table`)."""
    lines = [f"# qtkit report: {meta.get('name', 'runs')}", ""]
    budget = meta.get("budget", {})
    lines.append(f"- budget: {', '.join(map(str, budget.get('steps', []))) or '?'} gradient steps per trial, "
                 f"{', '.join(map(str, budget.get('eval_episodes', []))) or '?'} evaluation episodes "
                 f"(every {', '.join(map(str, budget.get('eval_every', []))) or 'end only'} steps), "
                 f"seeds {', '.join(map(str, meta.get('seeds', [])))}")
    lines.append(f"- hardware: {'; '.join(meta.get('hardware', [])) or 'unknown'}")
    if meta.get("trial_seconds"):
        lines.append(f"- compute: {meta['trial_seconds'] / 3600:.2f} trial-hours in all (sum of the finished "
                     f"trials' wall times, fit and evaluations; 'time' below is the mean per trial; a resumed "
                     f"trial counts only its last attempt)")
    lines.append(f"- qtkit {meta.get('qtkit_version')} at commit {meta.get('commit')}; generated {meta.get('generated')}")
    lines.append(f"- trials: {meta.get('trials', {}).get('done', 0)} done, {meta.get('trials', {}).get('failed', 0)} "
                 f"failed, {meta.get('trials', {}).get('unfinished', 0)} unfinished")
    lines.append("- scores: D4RL-style normalised score (100 = the dataset's expert reference), mean ± std over seeds "
                 "(sample std; none shown for one seed); final = last evaluation, best = best evaluation during "
                 "training (optimistic), ranked by the final score")
    if len(table) > 1:
        lines += ["", "## Across datasets", "",
                  "Mean of each method's per-dataset final rank and final score (over the datasets it has a score on).",
                  "", "| method | mean rank | mean final score | datasets |", "|---|---|---|---|"]
        for row in overall_summary(table):
            rank = "–" if row["mean_rank"] is None else f"{row['mean_rank']:.2f}"
            lines.append(f"| {row['method']} | {rank} | {_pm(row['mean_final'], None)} | {row['datasets']}/{row['of']} |")
    for dataset, rows in table.items():
        lines += ["", f"## {dataset}", "",
                  "| rank | method | final score | best score | seeds (n) | final return | time (s) | failed |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in rows:
            unit = "" if row["unit"] == "normalized_score" else " (return)"
            lines.append(
                f"| {row['rank'] if row['rank'] is not None else '–'} | {row['method']} | "
                f"{_pm(row['final_mean'], row['final_std'])}{unit} | {_pm(row['best_mean'], row['best_std'])}{unit} | "
                f"{row['n']} | {_pm(row['return_mean'], row['return_std'])} | "
                f"{_seconds(row)} | {row['failed']} |"
            )
        lines += ["", f"![learning curves](curves_{dataset}.png)"]
        if diagnostics and diagnostics.get(dataset):
            lines += ["", f"Value diagnostics at the end of training (mean of each run's last {DIAGNOSTIC_TAIL} logged "
                      "values, then mean ± std over seeds; qtkit/agents/diagnostics.py says what each one means):", ""]
            lines += diagnostics_markdown(diagnostics[dataset])
            lines += ["", f"![value diagnostics](diagnostics_{dataset}.png)"]
    return "\n".join(lines) + "\n"


def sweep_curves_png(runs: list[dict[str, Any]], dataset: str, path: str | Path) -> Path:
    """Evaluation score against gradient steps for every method on ``dataset``: mean over seeds, ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_method: dict[str, list[list[dict[str, Any]]]] = {}
    for run in runs:
        if run["dataset"] == dataset and run["summary"] and run["summary"].get("evaluations"):
            by_method.setdefault(run["method"], []).append(run["summary"]["evaluations"])
    unit = "normalised score"
    for method in sorted(by_method):
        histories = by_method[method]
        steps = sorted(set.intersection(*[{int(h["step"]) for h in hist} for hist in histories]))
        if not steps:
            continue
        key = "normalized_score" if histories[0][0].get("normalized_score") is not None else "mean_return"
        unit = "normalised score" if key == "normalized_score" else "mean return"
        values = np.array([[next(h[key] for h in hist if int(h["step"]) == s) for s in steps] for hist in histories])
        mean, std = values.mean(axis=0), values.std(axis=0)
        ax.plot(steps, mean, marker="o", label=f"{method} (n={len(histories)})")
        if len(histories) > 1:
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("gradient step")
    ax.set_ylabel(unit)
    ax.set_title(dataset)
    ax.grid(alpha=0.3)
    if by_method:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


#: Value diagnostics (qtkit/agents/diagnostics.py) summarised per method in sweep reports.
DIAGNOSTICS: tuple[str, ...] = ("q_mc_corr", "q_bias", "lq_grad_ratio", "lq_grad_cos", "target_valid_frac")
#: A run's diagnostic value is the mean of its last this-many logged values (one batch each: noisy).
DIAGNOSTIC_TAIL = 5


def read_metrics(run_path: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` as floats (empty cells dropped); ``[]`` when there is none."""
    import csv
    import math

    path = Path(run_path) / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(number):
                    parsed[key] = number
            if "step" in parsed:
                rows.append(parsed)
    return rows


def diagnostics_table(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, one row per method that logs value diagnostics: for each key of :data:`DIAGNOSTICS`,
    ``(mean, std)`` over finished seeds of the mean of the run's last :data:`DIAGNOSTIC_TAIL` logged values."""
    import numpy as np

    groups: dict[str, dict[str, list[dict[str, float]]]] = {}
    for run in runs:
        if run["state"] != "done":
            continue
        rows = read_metrics(run["path"])
        tail = {}
        for key in DIAGNOSTICS:
            values = [r[key] for r in rows if key in r][-DIAGNOSTIC_TAIL:]
            if values:
                tail[key] = float(np.mean(values))
        if tail:
            groups.setdefault(run["dataset"], {}).setdefault(run["method"], []).append(tail)
    out: dict[str, list[dict[str, Any]]] = {}
    for dataset in sorted(groups):
        out[dataset] = []
        for method in sorted(groups[dataset]):
            members = groups[dataset][method]
            row: dict[str, Any] = {"method": method, "n": len(members)}
            for key in DIAGNOSTICS:
                row[key] = _mean_std([m[key] for m in members if key in m])
            out[dataset].append(row)
    return out


def diagnostics_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of one dataset's value-diagnostics table."""
    def cell(pair: tuple[float | None, float | None]) -> str:
        mean, std = pair
        if mean is None:
            return "–"
        return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"

    lines = ["| method | seeds | Q–MC corr | Q − MC bias | ‖∇ηL_Q‖/‖∇L_DT‖ | cos(∇L_Q, ∇L_DT) | valid targets |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['n']} | " + " | ".join(cell(row[k]) for k in DIAGNOSTICS) + " |")
    return lines


def diagnostics_png(runs: list[dict[str, Any]], dataset: str, path: str | Path) -> Path | None:
    """Q–MC correlation and the cosine between L_Q's and L_DT's gradients against steps, mean over seeds of each
    method on ``dataset`` (finished runs); None when no run there logs diagnostics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = (("q_mc_corr", "corr(Q(s, a_data), MC return)"), ("lq_grad_cos", "cos(grad L_Q, grad L_DT)"))
    by_method: dict[str, list[list[dict[str, float]]]] = {}
    for run in runs:
        if run["dataset"] == dataset and run["state"] == "done":
            rows = [r for r in read_metrics(run["path"]) if "q_mc_corr" in r]
            if rows:
                by_method.setdefault(run["method"], []).append(rows)
    if not by_method:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for method in sorted(by_method):
            series = [{int(r["step"]): r[key] for r in rows if key in r} for rows in by_method[method]]
            series = [s for s in series if s]
            if not series:
                continue
            steps = sorted(set.intersection(*[set(s) for s in series]))
            if steps:
                ax.plot(steps, np.mean([[s[t] for t in steps] for s in series], axis=0), label=f"{method} (n={len(series)})")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("gradient step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"{dataset}: value diagnostics (mean over seeds)")
    fig.tight_layout()
    return save_figure(fig, path)


class NoRunsError(DataError):
    """A folder to report on that holds no run folders (none with summary.json or status.json)."""


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None, name: str | None = None) -> Path:
    """Read every run under ``runs_dir`` and write ``report.md``, ``report.json`` and ``curves_<dataset>.png``
    (atomically) to ``out_dir`` (default ``runs_dir``); returns the path of ``report.md``.

    :class:`NoRunsError` when ``runs_dir`` holds no run folder; :class:`qtkit.errors.OutputPathError` (before
    anything is written) when ``out_dir`` is a file, lies under one or cannot be written."""
    return write_report_files(runs_dir, out_dir, name)[0]


def write_report_files(runs_dir: str | Path, out_dir: str | Path | None = None,
                       name: str | None = None) -> list[Path]:
    """:func:`write_report`, returning every file it wrote (``report.md`` first)."""

    from qtkit.fileio import atomic_write_text, check_output_dir, output_errors

    runs_dir = Path(runs_dir)
    out = Path(out_dir) if out_dir is not None else runs_dir
    runs = collect_runs(runs_dir)
    if not runs:
        raise NoRunsError(
            f"no run folders with summary.json (or status.json) were found under {str(runs_dir)!r}, so there is "
            "nothing to report and nothing was written. Fix: give the out folder of `qtkit sweep` or a folder of "
            "`qtkit train --out` runs."
        )
    check_output_dir(out, "report folder")
    with output_errors(out, "the report"):
        return _write_report(runs_dir, out, runs, name, atomic_write_text)


def _write_report(runs_dir: Path, out: Path, runs: list[dict[str, Any]], name: str | None,
                  atomic_write_text: Any) -> list[Path]:
    import json
    import time

    import qtkit

    table = aggregate_runs(runs)
    trials = [r["trial"] for r in runs if r["trial"]]
    hardware = sorted({r["status"]["hardware"] for r in runs if r["status"].get("hardware")}) or [hardware_summary()]

    def values(key: str) -> list[Any]:
        return sorted({t.get(key) for t in trials if t.get(key) is not None})

    if name is None and (runs_dir / "sweep.yaml").is_file():
        import yaml

        try:
            name = (yaml.safe_load((runs_dir / "sweep.yaml").read_text(encoding="utf-8")) or {}).get("name")
        except yaml.YAMLError:
            name = None
    meta = {
        "name": name or runs_dir.name,
        "budget": {"steps": values("steps"), "eval_episodes": values("eval_episodes"), "eval_every": values("eval_every")},
        "seeds": sorted({r["seed"] for r in runs}),
        "hardware": hardware,
        "qtkit_version": qtkit.__version__,
        "commit": _git_commit(),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "trial_seconds": sum(float(r["status"].get("seconds") or 0.0) for r in runs if r["state"] == "done"),
        "trials": {"done": sum(r["state"] == "done" for r in runs), "failed": sum(r["state"] == "failed" for r in runs),
                   "unfinished": sum(r["state"] in ("pending", "running") for r in runs)},
    }
    diagnostics = diagnostics_table(runs)
    pngs: list[Path] = []
    for dataset in table:
        pngs.append(sweep_curves_png(runs, dataset, out / f"curves_{dataset}.png"))
        if dataset in diagnostics:
            png = diagnostics_png(runs, dataset, out / f"diagnostics_{dataset}.png")
            if png is not None:
                pngs.append(png)
    failures = [{"run": r["path"], "error": r["status"].get("error")} for r in runs if r["state"] == "failed"]
    atomic_write_text(out / "report.json", json.dumps({"meta": meta, "datasets": table, "diagnostics": diagnostics,
                                                       "overall": overall_summary(table), "failures": failures},
                                                      indent=2, default=float))
    path = out / "report.md"
    atomic_write_text(path, sweep_markdown(table, meta, diagnostics))
    return [path, out / "report.json", *pngs]
