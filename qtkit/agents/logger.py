"""Training metrics: CSV and TensorBoard under a run folder, plus a tqdm progress bar."""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class MetricsLogger:
    """Writes ``metrics.csv`` (one row per logged step, columns grow as metrics appear) and TensorBoard
    events under ``log_dir``; shows losses, steps/s and the ETA on a progress bar.

    Resuming (``start`` > 0 with a ``metrics.csv`` there), the rows past ``start`` are dropped and the
    ``time_s`` column (wall-clock seconds of training) continues from the last kept row instead of restarting
    at 0; ``steps_per_s`` is this session's rate."""

    def __init__(self, log_dir: str | Path | None, total: int, start: int = 0, progress: bool = True) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.rows: list[dict[str, Any]] = []
        self._writer = None
        self.started = start  # the step this session began at
        self._progress = progress
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            csv_path = self.log_dir / "metrics.csv"
            if csv_path.exists():  # resuming: keep what is there, drop rows past the resume point
                with csv_path.open(newline="") as handle:
                    self.rows = [row for row in csv.DictReader(handle) if int(float(row["step"])) <= start]
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.log_dir / "tensorboard"), purge_step=start + 1)
            except ImportError:  # tensorboard is a core dependency, but never fail training over logs
                self._writer = None
        self.bar = tqdm(total=total, initial=start, disable=not progress, dynamic_ncols=True, unit="step")
        self._t0, self._s0 = time.perf_counter(), start
        self._time_offset = 0.0  # seconds of training before this session (a resumed run's metrics.csv)
        for row in reversed(self.rows):
            try:
                self._time_offset = float(row.get("time_s") or 0.0)
                break
            except ValueError:
                continue

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """One row at ``step``: ``metrics`` are floats, or 0-d tensors (``train.sync_free``), read here."""
        metrics = {k: float(v) if hasattr(v, "item") else v for k, v in metrics.items()}
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._s0) / elapsed if elapsed > 0 else math.nan
        row = {"step": step, "time_s": round(self._time_offset + elapsed, 3), "steps_per_s": round(rate, 3), **metrics}
        self.rows.append(row)
        if self._writer is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
        shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("bc_loss", "critic_loss", "q_loss", "score",
                                                                       "q_mc_corr", "lq_grad_ratio")}
        self.bar.set_postfix(shown, refresh=False)
        self._flush_csv()

    def announce(self, message: str) -> None:
        """A line above the progress bar (e.g. that the final evaluation is running), when it is shown."""
        if self._progress:
            self.bar.write(message, file=sys.stderr)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def _flush_csv(self) -> None:
        if self.log_dir is None:
            return
        from qtkit.fileio import atomic_write_text

        columns: list[str] = []
        for row in self.rows:
            columns.extend(k for k in row if k not in columns)
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.log_dir / "metrics.csv", buffer.getvalue())

    def close(self) -> None:
        self.bar.close()
        if self._writer is not None:
            self._writer.close()
