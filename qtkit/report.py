"""Tables and plots people look at: Markdown score tables and learning-curve PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
