"""One trial: train a preset or a peer on one dataset with one seed, in its own run folder, resumably.

Run folder ``out/<dataset>/<method>/seed<k>/``:

- ``trial.yaml``  the trial (method, overrides, dataset, seed, budget)
- ``config.yaml`` the fully resolved agent config (presets) or peer parameters (peers)
- ``status.json`` ``{"state": pending|running|done|failed, "error", "traceback", "attempts", ...}``
- ``metrics.csv``, ``summary.json`` (final/best evaluations with normalised scores), ``checkpoint/``

Re-running: ``done`` (with its summary) is skipped; a folder with a checkpoint resumes from it (an
interrupted or failed trial); anything else starts afresh.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from qtkit.cpu import prepare_process
from qtkit.sweep.spec import Trial

__all__ = ["read_status", "run_trial", "write_status"]

STATUS_FILE = "status.json"


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The trial's ``status.json`` (``{"state": "pending"}`` when there is none or it is unreadable)."""
    path = Path(run_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"state": "pending"}


def write_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Write ``status.json`` atomically; returns what was written."""
    from qtkit.fileio import atomic_write_text

    status = {"updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
    atomic_write_text(Path(run_dir) / STATUS_FILE, json.dumps(status, indent=2, default=str))
    return status


def is_done(run_dir: str | Path) -> bool:
    """Finished: ``status.json`` says done and ``summary.json`` is there."""
    return read_status(run_dir).get("state") == "done" and (Path(run_dir) / "summary.json").is_file()


def _has_checkpoint(run_dir: Path, peer: bool) -> bool:
    ckpt = run_dir / "checkpoint"
    needed = ("model.d3", "state.pt") if peer else ("config.yaml", "weights.safetensors", "state.pt")
    return all((ckpt / name).is_file() for name in needed)


def _fit_preset(trial: Trial, data: Any, run_dir: Path, resume: Path | None) -> dict[str, Any]:
    import qtkit
    from qtkit.config import dump_yaml
    from qtkit.fileio import atomic_write_text

    method = trial.method
    agent = qtkit.build(method.preset, dataset=data, seed=trial.seed, **trial.overrides)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(agent.config))
    return agent.fit(
        data, trial.steps, eval_env=data, eval_every=trial.eval_every, eval_episodes=trial.eval_episodes,
        log_dir=run_dir, resume=resume, checkpoint_every=trial.checkpoint_every, progress=False,
    )


def _fit_peer(trial: Trial, data: Any, run_dir: Path, resume: Path | None) -> dict[str, Any]:
    import yaml

    from qtkit.fileio import atomic_write_text
    from qtkit.peers import fit_peer, resolve_peer_params

    params = resolve_peer_params(str(trial.method.peer), trial.overrides)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump({"peer": trial.method.peer, "params": params}))
    return fit_peer(
        str(trial.method.peer), data, trial.steps, seed=trial.seed, params=trial.overrides, eval_env=data,
        eval_every=trial.eval_every, eval_episodes=trial.eval_episodes, log_dir=run_dir, resume=resume,
        checkpoint_every=trial.checkpoint_every, progress=False,
    )


def run_trial(trial: Trial) -> dict[str, Any]:
    """Run (or skip, or resume) one trial; never raises for a failing trial: the error goes to ``status.json``.

    Returns ``{"key", "run_dir", "state": "done"|"skipped"|"failed", "error", "resumed_from", "seconds"}``.
    """
    run_dir = Path(trial.run_dir)
    base = {"key": trial.key, "run_dir": str(run_dir)}
    if is_done(run_dir):
        return {**base, "state": "skipped"}
    for key, value in trial.env.items():
        os.environ[key] = value
    previous = read_status(run_dir)
    attempts = int(previous.get("attempts", 0)) + 1
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    peer = trial.method.kind == "peer"
    resume = run_dir / "checkpoint" if _has_checkpoint(run_dir, peer) else None
    resumed_from = None
    if resume is not None:
        try:
            import torch

            resumed_from = int(torch.load(resume / "state.pt", weights_only=False).get("step", 0))
        except Exception:  # an unreadable checkpoint: start afresh
            resume = None
    if resume is None and (run_dir / "checkpoint").exists():
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    import yaml

    from qtkit.fileio import atomic_write_text

    atomic_write_text(run_dir / "trial.yaml", yaml.safe_dump(trial.to_dict(), sort_keys=False))
    from qtkit.report import hardware_summary

    where = {"host": os.uname().nodename, "hardware": hardware_summary()}
    write_status(run_dir, state="running", attempts=attempts, pid=os.getpid(), resumed_from=resumed_from, **where)
    try:
        prepare_process(max(1, int(trial.cpus)))
        from qtkit.data import load_dataset

        data = load_dataset(trial.dataset.spec)
        fit = _fit_peer if peer else _fit_preset
        summary = fit(trial, data, run_dir, resume)
    except Exception as exc:  # a crashing trial is recorded, the sweep goes on
        seconds = time.perf_counter() - started
        write_status(run_dir, state="failed", attempts=attempts, error=f"{type(exc).__name__}: {exc}",
                     traceback=traceback.format_exc(), resumed_from=resumed_from, seconds=round(seconds, 1), **where)
        return {**base, "state": "failed", "error": f"{type(exc).__name__}: {exc}", "resumed_from": resumed_from,
                "seconds": seconds}
    seconds = time.perf_counter() - started
    final, best = summary.get("final") or {}, summary.get("best") or {}
    write_status(run_dir, state="done", attempts=attempts, resumed_from=resumed_from, seconds=round(seconds, 1),
                 steps=summary.get("steps"), final_score=final.get("normalized_score"),
                 best_score=best.get("normalized_score"), **where)
    return {**base, "state": "done", "resumed_from": resumed_from, "seconds": seconds}
