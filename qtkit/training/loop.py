"""One training loop for every learner: QT and Q-Transformer agents (:meth:`qtkit.agents.base.Agent.fit`) and
the d3rlpy peers (:func:`qtkit.peers.d3rlpy_runners.fit_peer`).

The loop owns the schedule and everything around the gradient steps: when to log (every ``log_every``
steps and at the last one, with the value diagnostics on exactly those steps), when to evaluate (every
``eval_every`` steps and at the end), when to checkpoint (every ``checkpoint_every`` steps and at the end),
stopping early at ``until`` (training in chunks, continued by a resume), the metrics files (``metrics.csv``,
TensorBoard: :class:`~qtkit.agents.logger.MetricsLogger`), the final and best evaluations and
``summary.json``. A learner (:class:`Trainable`) provides the gradient step, evaluation and saving; the
caller provides the batches. Exact resume is the learner's part: it restores its weights, optimisers,
step and random states, then runs the loop again from its step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qtkit.errors import QtkitError, TrainingError


class Trainable(Protocol):
    """What :func:`train` drives (an agent, or a peer's adapter).

    ``step``: gradient steps taken so far (``train_step`` advances it by one); ``eval_history``: the
    evaluations of this run so far, one dict per evaluation (the loop appends to it; the learner saves it
    with its checkpoint, so a resumed run keeps them).
    """

    step: int
    eval_history: list[dict[str, Any]]

    def train_step(self, batch: Any, diagnose: bool = False) -> dict[str, float]:
        """One gradient step; returns the metrics to log. ``diagnose`` is True exactly on the steps the loop
        logs (extra diagnostics may be computed then)."""
        ...

    def evaluate(self, env: Any, episodes: int, seed: int) -> dict[str, Any]:
        """Evaluation episodes on ``env`` (seeded ``seed + i``): ``mean_return``, ... (see
        :func:`qtkit.agents.evaluation.run_episodes`)."""
        ...

    def train_mode(self) -> None:
        """Back to training after an evaluation."""
        ...

    def save(self, directory: Path) -> Any:
        """Write a checkpoint folder that an exact resume continues from."""
        ...


@dataclass(frozen=True)
class Schedule:
    """When the loop logs, evaluates and checkpoints.

    ``steps``: the run's gradient steps (what the LR schedule spans); ``until``: stop at this step instead
    (train in chunks; the next chunk resumes the checkpoint); ``log_every``: metrics every that many steps
    and at the last one (the value diagnostics are computed on those steps); ``eval_every``: an evaluation of
    ``eval_episodes`` episodes seeded ``eval_seed + i`` every that many steps (None: only at the end);
    ``checkpoint_every``: a checkpoint every that many steps (None: only at the end).
    """

    steps: int
    until: int | None = None
    log_every: int = 100
    eval_every: int | None = None
    eval_episodes: int = 10
    eval_seed: int = 10_000
    checkpoint_every: int | None = None

    @property
    def stop(self) -> int:
        """The step this call of the loop stops at."""
        return min(self.steps, self.until) if self.until is not None else self.steps


def summarize(step: int, history: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"steps", "final", "best", "metrics", "evaluations"}``: ``final`` is the last evaluation, ``best``
    the one with the highest normalised score (the highest mean return when no evaluation has one)."""
    scored = [h for h in history if h.get("normalized_score") is not None] or history
    key = "normalized_score" if scored and scored[0].get("normalized_score") is not None else "mean_return"
    return {
        "steps": step,
        "final": history[-1] if history else None,
        "best": max(scored, key=lambda h: h[key]) if scored else None,
        "metrics": rows,
        "evaluations": history,
    }


def check_schedule(steps: int | None = None, *, eval_every: int | None = None, eval_episodes: int | None = None,
                   checkpoint_every: int | None = None, until: int | None = None,
                   names: dict[str, str] | None = None) -> None:
    """Raise :class:`~qtkit.errors.ParameterRangeError` for a schedule value below 1 (None: not given), naming
    it as ``names`` says (e.g. ``{"steps": "--steps"}`` for the command line)."""
    from qtkit.errors import ParameterRangeError

    names = names or {}
    values = {"steps": steps, "eval_every": eval_every, "eval_episodes": eval_episodes,
              "checkpoint_every": checkpoint_every, "until": until}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            name = names.get(key, key)
            hint = " (leave it out for the default)" if key != "steps" else ""
            raise ParameterRangeError(f"{name} must be an integer >= 1, got {value!r}{hint}.")


def train(
    learner: Trainable,
    next_batch: Callable[[], Any],
    schedule: Schedule,
    *,
    eval_env: Any = None,
    log_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``learner`` from its current step to ``schedule.stop`` on batches from ``next_batch()``.

    Logs, evaluates on ``eval_env`` and checkpoints to ``log_dir / "checkpoint"`` as ``schedule`` says; writes
    ``metrics.csv``, TensorBoard events and ``summary.json`` under ``log_dir`` (when given). At the stop the
    checkpoint is saved *before* the final evaluation (an evaluation that fails never loses the trained model) and
    again after it (with the evaluation in its history); a learner already at the stop whose final evaluation is
    missing is only evaluated. A :class:`~qtkit.errors.TrainingError` (a non-finite loss) is raised again naming
    the folder that holds the last good checkpoint. Under :func:`qtkit.training.interrupts.graceful_interrupts`, a
    SIGINT/SIGTERM finishes the current step, saves a checkpoint and raises
    :class:`~qtkit.training.interrupts.TrainingInterrupted`. Filesystem failures raise
    :class:`~qtkit.errors.OutputPathError` naming the path and the cause. Returns :func:`summarize`'s dict.

    Data-parallel (:mod:`qtkit.training.distributed`, every rank runs this loop): rank 0 alone writes the metrics,
    TensorBoard, ``summary.json``, the checkpoint and the progress bar and runs the evaluations (the others wait for
    the result); logged metrics are averaged over the ranks; a signal any rank receives stops all at the same step.
    """
    from qtkit.agents.logger import MetricsLogger
    from qtkit.fileio import atomic_write_text, output_errors
    from qtkit.training import distributed, interrupts

    stop, every = schedule.stop, schedule.log_every
    main = (dp := distributed.active()) is None or dp.is_main  # this process writes and evaluates
    checkpoint = Path(log_dir) / "checkpoint" if log_dir is not None else None

    def save() -> None:
        if checkpoint is not None:
            with output_errors(checkpoint, "the checkpoint"):
                learner.save(checkpoint)

    def evaluate(step: int) -> None:
        result = distributed.on_main(  # rank 0 evaluates; every rank gets its result (or its error)
            lambda: learner.evaluate(eval_env, episodes=schedule.eval_episodes, seed=schedule.eval_seed))
        learner.train_mode()
        learner.eval_history.append({"step": step, **{k: v for k, v in result.items() if k != "returns"}})
        logger.log(step, {f"eval_{k}": v for k, v in result.items() if isinstance(v, float)})

    with output_errors(log_dir or ".", "the run folder"):
        logger = MetricsLogger(log_dir if main else None, total=schedule.steps, start=learner.step,
                               progress=progress and main)
    try:
        while learner.step < stop:
            batch = next_batch()
            logged = (learner.step + 1) % every == 0 or learner.step + 1 >= stop  # this step's metrics are logged
            try:
                metrics = learner.train_step(batch, diagnose=logged)
                if logged:
                    metrics = distributed.average_metrics(metrics)  # data-parallel: over the ranks (else as is)
            except TrainingError as exc:
                where = f" The last good checkpoint is in {log_dir}." if log_dir else ""
                raise TrainingError(f"{exc}{where}") from None
            logger.advance()
            step = learner.step
            done = step >= stop
            if step % every == 0 or done:
                logger.log(step, metrics)
            if done:
                break  # the final checkpoint and evaluation follow the loop
            if eval_env is not None and schedule.eval_every and step % schedule.eval_every == 0:
                evaluate(step)
            saved = bool(schedule.checkpoint_every and step % schedule.checkpoint_every == 0)
            if saved:
                save()
            signum = distributed.agree_signal(interrupts.pending())  # data-parallel: any rank's, on every rank
            if signum is not None:
                if step % every:
                    logger.log(step, metrics)  # the row of the step the run stopped at (its time carries on at resume)
                if not saved:
                    save()
                raise interrupts.TrainingInterrupted(signum, step, str(checkpoint) if checkpoint else None)
        step = learner.step
        history = learner.eval_history
        needs_eval = eval_env is not None and not (history and history[-1].get("step") == step)
        if logger.started < step or needs_eval:
            save()  # before the final evaluation: a failing evaluation never loses the trained model
        if needs_eval:
            logger.announce(f"evaluating {schedule.eval_episodes} episodes at step {step} ...")
            try:
                evaluate(step)
            except QtkitError as exc:
                if checkpoint is not None:
                    exc.args = (f"{exc} (The model trained to step {step} was saved in {checkpoint} before the final "
                                "evaluation; evaluate it with `qtkit eval`.)", *exc.args[1:])
                raise
            save()  # again, with the final evaluation in its history
    finally:
        logger.close()
    summary = summarize(learner.step, learner.eval_history, logger.rows)
    if log_dir is not None and main:
        atomic_write_text(Path(log_dir) / "summary.json", json.dumps(
            {k: v for k, v in summary.items() if k != "metrics"}, indent=2, default=float))
    return summary
