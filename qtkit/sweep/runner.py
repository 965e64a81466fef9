"""Running a sweep: datasets made first, then every trial as an independent Ray task.

Ray is the engine (``pip install 'qtkit[sweep]'``): local by default (``ray.init`` with this machine's cores),
an existing cluster with ``address=``. Each trial is a task with the sweep's ``cpus_per_trial`` /
``gpus_per_trial``; Ray schedules them. ``executor="serial"`` runs the trials one after another in this
process, for debugging only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from qtkit.sweep.spec import SweepSpec, Trial, expand_trials
from qtkit.sweep.trial import is_done, read_status, run_trial, write_status

__all__ = ["check_gpus", "local_gpus", "make_datasets", "require_ray", "run_sweep"]


def local_gpus() -> int:
    """The CUDA GPUs this machine has (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(trials: list[Trial], *, have: float, where: str) -> None:
    """A sweep whose trials ask for GPUs (``resources.gpus_per_trial``) where ``have`` GPUs exist (``where``: "this
    machine", "the Ray cluster") is refused with a ConfigError: Ray would otherwise wait forever for one."""
    from qtkit.errors import ConfigError

    need = max((t.gpus for t in trials), default=0.0)
    if need > have:
        has = "has no GPU" if have == 0 else f"has {have:g} GPU"
        raise ConfigError(
            f"resources.gpus_per_trial is {need:g} but {where} {has}: Ray would wait forever for it. Fix: "
            "gpus_per_trial: 0 to train the trials on CPU, or run the sweep where there are GPUs (--address joins a "
            "Ray cluster that has them)."
        )


def require_ray() -> Any:
    """Import Ray or say which extra to install."""
    from qtkit.data.makers import MissingExtraError

    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError(
            "qtkit sweep runs trials on Ray, which is not installed. Install the optional extra: "
            "pip install 'qtkit[sweep]' (pinned: -c constraints.txt)."
        ) from exc
    return ray


def make_datasets(spec: SweepSpec, progress: bool = True) -> list[str]:
    """Make the sweep's ``make:`` datasets that are missing (``qtkit.data.make_dataset``); returns their ids."""
    from qtkit.data.makers import make_dataset

    made = []
    for ds in spec.datasets:
        if ds.make is None:
            continue
        make = dict(ds.make)
        name = make.pop("name")
        options = make.pop("options", None) or {}
        made.append(make_dataset(name, exist_ok=True, progress=progress, **make, **options))
    return made


class _Progress:
    """One line: trials done / running / failed / pending (tqdm)."""

    def __init__(self, trials: list[Trial], enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.trials = trials
        self.bar = tqdm(total=len(trials), disable=not enabled, unit="trial", dynamic_ncols=True, file=sys.stderr)
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.running = 0

    def finished(self, result: dict[str, Any]) -> None:
        self.counts[result["state"]] += 1
        self.bar.update(1)
        if result["state"] == "failed":
            self.bar.write(f"failed: {result['key']}: {result.get('error', '')}")
        self.refresh(max(0, self.running - 1))

    def refresh(self, running: int | None = None) -> None:
        running = self.running if running is None else running
        self.running = running
        finished = sum(self.counts.values())
        pending = max(0, len(self.trials) - finished - running)
        self.bar.set_postfix_str(
            f"done {self.counts['done'] + self.counts['skipped']} (skipped {self.counts['skipped']}), "
            f"running {running}, failed {self.counts['failed']}, pending {pending}", refresh=True)

    def close(self) -> None:
        self.bar.close()


def _run_serial(trials: list[Trial], progress: _Progress) -> list[dict[str, Any]]:
    results = []
    for trial in trials:
        progress.refresh(running=1)
        result = run_trial(trial)
        results.append(result)
        progress.finished(result)
        progress.refresh(running=0)
    return results


def _run_ray(trials: list[Trial], progress: _Progress, address: str | None, num_cpus: int | None,
             num_gpus: int | None) -> list[dict[str, Any]]:
    ray = require_ray()
    started_here = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        started_here = True
    try:
        total = ray.cluster_resources()
        need_cpu = max(t.cpus for t in trials)
        need_gpu = max(t.gpus for t in trials)
        from qtkit.errors import ConfigError

        check_gpus(trials, have=float(total.get("GPU", 0)), where="this machine's Ray" if not address else
                   f"the Ray cluster at {address}")
        if need_cpu > total.get("CPU", 0) or need_gpu > total.get("GPU", 0):
            raise ConfigError(
                f"each trial asks for {need_cpu:g} CPU and {need_gpu:g} GPU but the Ray cluster has "
                f"{total.get('CPU', 0):g} CPU and {total.get('GPU', 0):g} GPU; lower resources.cpus_per_trial / "
                "gpus_per_trial in the sweep file (or start Ray with more)."
            )
        remote = ray.remote(max_retries=0)(run_trial)
        pending = {remote.options(num_cpus=t.cpus, num_gpus=t.gpus, name=f"trial:{t.key}").remote(t): t for t in trials}
        results = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
            for ref in ready:
                trial = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the worker died (OOM kill, segfault): record it like a crash
                    error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                    write_status(trial.run_dir, state="failed", error=error, traceback=str(exc),
                                 attempts=int(read_status(trial.run_dir).get("attempts", 0)))
                    result = {"key": trial.key, "run_dir": trial.run_dir, "state": "failed", "error": error}
                results.append(result)
                progress.finished(result)
            running = sum(1 for t in pending.values() if read_status(t.run_dir).get("state") == "running")
            progress.refresh(running=running)
        return results
    finally:
        if started_here:
            ray.shutdown()


def run_sweep(
    spec: SweepSpec,
    *,
    address: str | None = None,
    executor: str = "ray",
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    progress: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Run every trial of ``spec`` (skipping finished ones, resuming interrupted ones) and write the report.

    ``executor``: ``"ray"`` (default; ``address`` joins an existing cluster, else a local Ray with
    ``num_cpus`` = this machine's cores) or ``"serial"`` (in this process, for debugging).
    Returns ``{"trials": n, "done", "skipped", "failed", "results": [...], "report": path or None}``.
    """
    from qtkit.fileio import atomic_write_text, check_output_dir, output_errors

    if executor not in ("ray", "serial"):
        from qtkit.errors import ConfigError

        raise ConfigError(f"executor must be 'ray' or 'serial', got {executor!r}.")
    if executor == "ray":
        require_ray()  # fail before making datasets
    trials = expand_trials(spec)
    if executor == "ray" and address is None:  # a local Ray: its GPUs are this machine's (or --num-gpus)
        check_gpus(trials, have=float(local_gpus() if num_gpus is None else num_gpus), where="this machine")
    elif executor == "serial" and any(t.gpus > 0 for t in trials) and local_gpus() == 0:
        import warnings

        warnings.warn("resources.gpus_per_trial > 0 but this machine has no GPU: --serial trains the trials on CPU.",
                      UserWarning, stacklevel=2)
    check_output_dir(spec.out, "sweep folder")  # a file in the way, read-only...: one clear error before any work
    import yaml

    with output_errors(spec.out, "the sweep"):
        atomic_write_text(spec.out / "sweep.yaml", yaml.safe_dump(spec.raw, sort_keys=False))
    make_datasets(spec, progress=progress)
    with output_errors(spec.out, "the sweep"):
        for trial in trials:
            if not is_done(trial.run_dir) and not (Path(trial.run_dir) / "status.json").exists():
                write_status(trial.run_dir, state="pending", attempts=0)
    bar = _Progress(trials, progress)
    started = time.perf_counter()
    try:
        if executor == "serial":
            results = _run_serial(trials, bar)
        else:
            results = _run_ray(trials, bar, address, num_cpus, num_gpus)
    finally:
        bar.close()
    summary = {
        "trials": len(trials),
        "done": sum(r["state"] == "done" for r in results),
        "skipped": sum(r["state"] == "skipped" for r in results),
        "failed": sum(r["state"] == "failed" for r in results),
        "seconds": time.perf_counter() - started,
        "results": results,
        "report": None,
    }
    if report:
        from qtkit.report import write_report

        summary["report"] = str(write_report(spec.out))
    return summary
