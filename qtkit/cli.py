"""The ``qtkit`` command line (typer)."""

from __future__ import annotations

import contextlib
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(
    help="qtkit: offline RL with transformers (QT, Q-Transformer). Presets, training, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _mount_subcommands() -> None:
    from qtkit.data.cli import app as data_app

    app.add_typer(data_app, name="data", help="Make, list and inspect offline datasets.")


_mount_subcommands()


class ListWhat(str, Enum):
    presets = "presets"
    components = "components"


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


THREADS_HELP = ("torch threads for this process (default: torch's, one per core); give each of several runs "
                "sharing a machine its share, e.g. --threads 1 for two runs on 2 cores")


def _set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (None: torch's default) and the process's early CPU setting (:func:`qtkit.cpu.prepare_process`)."""
    if threads is not None and threads < 1:
        _fail(ValueError(f"--threads must be >= 1, got {threads}; leave it out to use torch's default."))
    from qtkit.cpu import prepare_process
    from qtkit.errors import QtkitError

    try:
        prepare_process(threads)
    except QtkitError as exc:  # a bad QTKIT_CPU_TUNING value
        _fail(exc)


@app.command("list")
def list_cmd(
    what: ListWhat = typer.Argument(ListWhat.presets, help="presets or components"),
    filter: str = typer.Option("", "--filter", "-f", help="fnmatch pattern, e.g. 'qt-*'"),
) -> None:
    """List the presets of registry.yaml, or every registered component by kind."""
    import qtkit
    from qtkit.config import load_preset

    if what is ListWhat.presets:
        for name in qtkit.list_presets(filter):
            description = load_preset(name).get("description", "")
            typer.echo(f"{name:<20} {description}")
        return
    from qtkit.registry import get_component

    for kind, names in qtkit.list_components(filter=filter).items():  # type: ignore[union-attr]
        typer.secho(f"{kind}:", bold=True)
        for name in names:
            typer.echo(f"  {name:<14} {get_component(kind, name).doc()}")


@app.command("show")
def show_cmd(
    preset: str = typer.Argument(..., help="preset name or path.yaml:name"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. --set backup=one-step --set eta=2"),
) -> None:
    """Print the fully resolved preset as YAML (every default filled in)."""
    from qtkit.config import apply_overrides, dump_yaml, load_preset, resolve_config
    from qtkit.errors import QtkitError

    try:
        config = apply_overrides(load_preset(preset), parse_sets(set_))
        typer.echo(dump_yaml(resolve_config(config)), nl=False)
    except QtkitError as exc:
        _fail(exc)


def parse_sets(items: list[str]) -> dict[str, object]:
    """``["backup=one-step", "critic.hidden=[512,512]", "eta=2"]`` -> nested override dict."""
    import yaml

    from qtkit.errors import ConfigError

    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set eta=2.0 or --set critic.hidden=512.")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            if isinstance(node.get(part), str):  # --set encoder=timm --set encoder.model=resnet18
                node[part] = {"type": node[part]}
            node = node.setdefault(part, {})  # type: ignore[assignment]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set both as a value and as a section.")
        if isinstance(node.get(parts[-1]), dict) and isinstance(value, str):  # encoder.model=... then encoder=timm
            node[parts[-1]] = {"type": value, **node[parts[-1]]}
        else:
            node[parts[-1]] = value
    return out


CHECKPOINT_EVERY_HELP = ("save a checkpoint every N steps (and at the end, before the final evaluation); default: every "
                         "10 %% of the run, at most 1000 steps apart. Checkpoints are swapped in atomically: a kill "
                         "keeps the last complete one").replace("%%", "%")
#: What marks a folder as holding a run of `qtkit train` (refused as --out without --resume or --overwrite).
RUN_FILES = ("checkpoint", "metrics.csv", "summary.json", "tensorboard")


def default_checkpoint_every(steps: int) -> int:
    """Every 10 % of a run of ``steps`` steps, at most 1000 steps apart (at least every step)."""
    return max(1, min(1000, -(-steps // 10)))


def _run_files(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()] if out.is_dir() else []


def _check_out_path(out: Path) -> None:
    """The checks of --out that create nothing: it is a file, or lies under one."""
    from qtkit.errors import OutputPathError

    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            cause = "it is a file, not a folder" if parent == out else f"{str(parent)!r} is a file, not a folder"
            raise OutputPathError(f"cannot use {str(out)!r} as the run folder: {cause}. Fix: choose another --out.")


def _clear_run(out: Path) -> None:
    """--overwrite: remove the old run's files (checkpoint, metrics, summary, TensorBoard events), nothing else."""
    import shutil

    from qtkit.checkpoint import leftovers
    from qtkit.fileio import output_errors

    with output_errors(out, "the run folder (clearing the old run for --overwrite)"):
        for path in [*(out / name for name in RUN_FILES), *leftovers(out / "checkpoint")]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()


def _train_words(args: dict[str, object], sets: list[str]) -> list[str]:
    """The `train ...` arguments that repeat this run's options (without --resume, --overwrite, --nproc)."""
    words = ["train", "--preset", args["preset"], "--dataset", args["dataset"], "--out", args["out"]]
    if args.get("steps") is not None:
        words += ["--steps", args["steps"]]
    words += ["--seed", args["seed"]]
    for item in sets:
        words += ["--set", item]
    for flag in ("eval_every", "eval_episodes", "checkpoint_every", "threads"):
        if args.get(flag) is not None:
            words += ["--" + flag.replace("_", "-"), args[flag]]
    if args.get("no_eval"):
        words.append("--no-eval")
    return [str(w) for w in words]


def _resume_command(args: dict[str, object], sets: list[str]) -> str:
    """The exact `qtkit train ... --resume` that continues this run (with its --nproc; under torchrun: the
    arguments to relaunch torchrun with)."""
    import os
    import shlex

    from qtkit.training.distributed import LAUNCHER_ENV

    words = _train_words(args, sets)
    nproc = args.get("nproc") or os.environ.get(LAUNCHER_ENV)
    if nproc and int(nproc) > 1:
        words += ["--nproc", str(nproc)]
    elif int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # launched by torchrun: the same launch, resumed
        return "torchrun <the same torchrun options> -m qtkit " + shlex.join([*words, "--resume"])
    return shlex.join(["qtkit", *words, "--resume"])


NPROC_HELP = ("train data-parallel in N local processes (gloo on CPU, NCCL on GPUs, one GPU each): "
              "train.batch_size is the global batch and must divide by N; rank 0 writes and evaluates. "
              "Under torchrun leave it out")


def _check_nproc(preset: str, sets: list[str], nproc: int) -> None:
    """--nproc before any process starts: >= 1, not under torchrun, and the preset's batch splits into N."""
    import os

    from qtkit.config import apply_overrides, load_preset, resolve_config
    from qtkit.errors import ConfigError, ParameterRangeError
    from qtkit.training.distributed import check_batch_size

    if nproc < 1:
        raise ParameterRangeError(f"--nproc must be >= 1, got {nproc} (1: one process, the default).")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise ConfigError("--nproc starts its own processes, but this one was started by a launcher (WORLD_SIZE="
                          f"{os.environ['WORLD_SIZE']}, e.g. torchrun): leave --nproc out under torchrun.")
    config = resolve_config(apply_overrides(load_preset(preset), parse_sets(sets)))
    check_batch_size(int(config["train"]["batch_size"]), nproc)


@app.command("train")
def train_cmd(
    preset: str = typer.Option(..., "--preset", "-p", help="preset name or path.yaml:name"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="minari:ID, a D4RL .hdf5 or an .npz"),
    steps: int = typer.Option(None, "--steps", help="gradient steps (default: the preset's train.steps; with --resume: "
                              "the run's, or more to extend it)"),
    seed: int = typer.Option(0, "--seed"),
    out: str = typer.Option(..., "--out", "-o", help="run folder (metrics, checkpoint, summary); a folder holding "
                            "another run is refused unless --resume or --overwrite"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. --set eta=2 --set backup=one-step"),
    eval_every: int = typer.Option(None, "--eval-every", help="evaluate every N steps (and at the end)"),
    eval_episodes: int = typer.Option(None, "--eval-episodes", help="episodes per evaluation (default: the preset's "
                                      "train.eval_episodes, 10)"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip evaluation (e.g. a dataset without an env)"),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", help=CHECKPOINT_EVERY_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue the (killed or interrupted) run in --out exactly"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the run in --out (its checkpoint, metrics, "
                                   "summary and TensorBoard events are deleted first)"),
    threads: int = typer.Option(None, "--threads", help=THREADS_HELP),
    nproc: int = typer.Option(None, "--nproc", help=NPROC_HELP),
) -> None:
    """Train a preset on a dataset; writes metrics.csv, TensorBoard logs, a checkpoint and summary.json.

    Every option is checked before any work starts. Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a
    checkpoint and prints the command that resumes it (exit 130 / 143); a second Ctrl-C stops at once, keeping the
    last checkpoint. ``--nproc N`` (or torchrun) trains data-parallel: see the README's multi-process section.
    """
    from pathlib import Path

    from qtkit.errors import QtkitError
    from qtkit.training import distributed

    _set_threads(threads)
    args = {"preset": preset, "dataset": dataset, "out": out, "steps": steps, "seed": seed, "eval_every": eval_every,
            "eval_episodes": eval_episodes, "checkpoint_every": checkpoint_every, "threads": threads,
            "no_eval": no_eval, "nproc": nproc}
    run_dir = Path(out)
    if nproc is not None:
        try:
            _check_nproc(preset, set_, nproc)
        except QtkitError as exc:
            _fail(exc)
        if nproc > 1:
            words = [*_train_words(args, set_), *(["--resume"] if resume else []),
                     *(["--overwrite"] if overwrite else [])]
            hint = (f"The last checkpoint (if one was saved) is in {run_dir / 'checkpoint'}; resume with:\n  "
                    f"{_resume_command(args, set_)}")
            raise typer.Exit(code=distributed.launch(words, nproc, resume_hint=hint))
    try:
        dp = distributed.init_from_env()  # a rank of torchrun or of --nproc: join the others
    except QtkitError as exc:
        _fail(exc)
    if dp is None:
        _train_ranked(args, set_, run_dir, resume=resume, overwrite=overwrite, dp=dp)
        return
    # a rank of a data-parallel run: every way out ends in distributed.leave (clean teardown when the ranks agree)
    code, together = 0, True
    try:
        _train_ranked(args, set_, run_dir, resume=resume, overwrite=overwrite, dp=dp)
    except _AgreedExit as exc:
        code = exc.exit_code
    except typer.Exit as exc:
        code, together = exc.exit_code, False
    except BaseException:  # a bug: its traceback, then the status of an uncaught exception
        import traceback

        traceback.print_exc()
        code, together = 1, False
    distributed.leave(code, together=together)


class _AgreedExit(typer.Exit):
    """The exit of a data-parallel run that every rank takes at the same step (an agreed interrupt)."""


def _train_ranked(args: dict, sets: list[str], run_dir: Path, *, resume: bool, overwrite: bool, dp: object) -> None:
    """The body of `qtkit train` in one process, or in one rank of a data-parallel run (``dp``: its
    :class:`~qtkit.training.distributed.DataParallel`). Ranks plan together: rank 0 alone moves files, and an error
    in any rank's plan stops every rank before training (rank 0 prints it); rank 0 prints the notices and results."""
    import os
    import sys

    from qtkit.errors import QtkitError
    from qtkit.training.distributed import DataParallel
    from qtkit.training.interrupts import TrainingInterrupted, exit_code, graceful_interrupts, ignore_further_signals

    rank = dp.rank if isinstance(dp, DataParallel) else 0
    if rank > 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the notices and results are rank 0's to print
    try:
        plan = _plan_ranked(args, sets, run_dir, resume=resume, overwrite=overwrite, dp=dp)
        if plan is None:
            return
        agent, data, fit_kwargs = plan
        with graceful_interrupts():
            try:
                result = agent.fit(data, **fit_kwargs)
            except TrainingInterrupted as exc:
                if isinstance(dp, DataParallel):
                    ignore_further_signals()  # a late copy of the signal must not kill this rank while it leaves
                if rank == 0:
                    typer.secho(f"\n{exc}.", fg=typer.colors.YELLOW, err=True)
                    typer.echo(f"resume with:\n  {_resume_command(args, sets)}", err=True)
                raise _AgreedExit(code=exit_code(exc.signum)) from None
            except KeyboardInterrupt:
                if rank == 0:
                    typer.secho(f"\nstopped at once (a second interrupt); the last checkpoint in "
                                f"{run_dir / 'checkpoint'} is intact.", fg=typer.colors.YELLOW, err=True)
                    typer.echo(f"resume with:\n  {_resume_command(args, sets)}", err=True)
                raise typer.Exit(code=130) from None
    except QtkitError as exc:
        if rank > 0:
            typer.secho(f"error (rank {rank}): {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        _fail(exc)
    _print_result(result)


def _plan_ranked(args: dict, sets: list[str], run_dir: Path, *, resume: bool, overwrite: bool,
                 dp: object) -> tuple | None:
    """:func:`_plan_training` in every rank: rank 0 first puts back a checkpoint a kill left aside, then all plan
    at once (rank 0 alone clears an --overwrite folder) and agree: any rank's error is raised by every rank (rank 0's
    message names the ranks that failed)."""
    from qtkit.errors import ConfigError, QtkitError
    from qtkit.training.distributed import DataParallel

    if not isinstance(dp, DataParallel):
        return _plan_training(args, sets, run_dir, resume=resume, overwrite=overwrite)
    import torch.distributed as dist

    from qtkit.checkpoint import recover_checkpoint
    from qtkit.training.distributed import collective

    if resume and dp.is_main and (run_dir / "checkpoint").parent.is_dir():
        with contextlib.suppress(QtkitError):  # a failure is reported by the plan below
            recover_checkpoint(run_dir / "checkpoint")
    with collective("the start"):
        dist.barrier()
    plan, error = None, None
    try:
        plan = _plan_training(args, sets, run_dir, resume=resume, overwrite=overwrite, dp=dp)
    except QtkitError as exc:
        error = exc
    messages: list = [None] * dp.world_size
    with collective("the checks before training"):
        dist.all_gather_object(messages, None if error is None else str(error))
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        if error is not None and dp.rank == 0:
            raise error
        if dp.rank == 0:
            raise ConfigError("; ".join(f"rank {r}: {m}" for r, m in failed))
        raise typer.Exit(code=2)  # rank 0 prints it
    return plan


def _plan_training(args: dict, sets: list[str], run_dir: Path, *, resume: bool,
                   overwrite: bool, dp: object = None) -> tuple | None:
    """Everything `qtkit train` checks and sets up before the first step, in order: the options, the run folder's
    state, the dataset, the agent (config ranges, context, device), the evaluation env, then the folder itself.
    Returns ``(agent, dataset, fit kwargs)``, or None when a resumed run is already finished (reported here).
    ``dp``: this process's rank of a data-parallel run (the batch must divide by the ranks; a checkpoint resumes
    with as many ranks; only rank 0 moves or deletes files)."""
    import qtkit
    from qtkit.agents.evaluation import check_eval_env
    from qtkit.checkpoint import read_checkpoint_config, read_checkpoint_state, recover_checkpoint
    from qtkit.data import load_dataset
    from qtkit.errors import ConfigError, DataError, ParameterRangeError
    from qtkit.fileio import check_output_dir
    from qtkit.training.loop import check_schedule

    check_schedule(args["steps"], eval_every=args["eval_every"], eval_episodes=args["eval_episodes"],
                   checkpoint_every=args["checkpoint_every"],
                   names={k: "--" + k.replace("_", "-") for k in ("steps", "eval_every", "eval_episodes",
                                                                   "checkpoint_every")})
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                          "--overwrite deletes it. Give one of them.")
    _check_out_path(run_dir)
    found = _run_files(run_dir)
    state, notice, finished = None, None, False
    from qtkit.training.distributed import DataParallel, check_batch_size, check_world_size

    main = not isinstance(dp, DataParallel) or dp.is_main  # the process that moves and deletes files
    if resume:
        checkpoint = run_dir / "checkpoint"
        if not (run_dir.is_dir() and (recover_checkpoint(checkpoint) if main else checkpoint.is_dir())):
            what = f"it holds {', '.join(found)} but no checkpoint" if found else (
                "it holds no run" if run_dir.is_dir() else "it does not exist")
            raise ConfigError(f"--resume: nothing to continue in {str(run_dir)!r}: {what}. Fix: drop --resume to "
                              "start a new run there.")
        state = read_checkpoint_state(checkpoint)
        check_world_size(int(state.get("world_size", 1)), checkpoint)
    elif found and not overwrite:
        raise ConfigError(
            f"--out {str(run_dir)!r} already holds a run ({', '.join(found)}). Fix: --resume to continue it, "
            "--overwrite to replace it, or choose another --out."
        )
    total = args["steps"]
    if state is not None:
        step, saved_total = int(state.get("step", 0)), int(state.get("total_steps") or 0)
        if total is not None and total < step:
            raise ParameterRangeError(f"--steps {total} with --resume: the checkpoint in {str(run_dir)!r} is already at "
                                      f"step {step}. Give --steps >= {step}, or leave it out to finish the run's "
                                      f"{saved_total} steps.")
        total = saved_total if total is None else total
        history = state.get("eval_history") or []
        eval_missing = not args["no_eval"] and not (history and history[-1].get("step") == step)
        finished = step >= total and not eval_missing
        if finished:
            notice = (f"the run in {run_dir} is already finished: step {step} of {total}; nothing to train. To train "
                      f"longer, resume with a larger --steps (e.g. --steps {2 * total}).")
        elif step >= total:
            notice = (f"the run in {run_dir} finished training at step {step} but has no final evaluation: "
                      "evaluating it.")
        elif total != saved_total:
            notice = (f"resuming {run_dir} at step {step} and changing its length from {saved_total} to {total} "
                      f"steps: the LR schedule spans {total} steps from here on.")
        else:
            notice = f"resuming {run_dir} at step {step} of {total}."
        args["steps"] = total
    data = load_dataset(args["dataset"])
    agent = qtkit.build(args["preset"], dataset=data, seed=args["seed"], **parse_sets(sets))
    agent.check_fit(data)
    if isinstance(dp, DataParallel):
        check_batch_size(agent.train_config.batch_size, dp.world_size)
    if state is not None:
        agent.check_resumable(read_checkpoint_config(run_dir / "checkpoint"), run_dir / "checkpoint")
        if finished:
            typer.echo(notice)
            _print_summary(run_dir)
            return None
    total = int(total if total is not None else agent.train_config.steps)
    args["steps"] = total
    if not args["no_eval"]:
        md = data.metadata
        if md.get("source") != "minari" and not any(md.get(k) for k in ("eval_env_spec", "env_spec", "env_id")):
            raise DataError(
                f"cannot evaluate during training: dataset {data.name} records no environment (no env_spec or env_id "
                f"in its metadata). Fix: add --no-eval to train without evaluating (and evaluate later with `qtkit eval "
                f"{run_dir} --env ENV-ID`), or record the env in the dataset."
            )
        try:
            check_eval_env(data)
        except (DataError, ConfigError) as exc:
            raise type(exc)(f"cannot evaluate during training: {exc} Or add --no-eval to train without evaluating "
                            f"(and evaluate later with `qtkit eval {run_dir} --env ENV-ID`).") from None
    every = args["checkpoint_every"] or default_checkpoint_every(total)
    check_output_dir(run_dir)
    if overwrite and found and main:
        _clear_run(run_dir)
        typer.echo(f"--overwrite: removed the old run in {run_dir} ({', '.join(found)}).")
    if notice:
        typer.echo(notice)
    fit_kwargs = {
        "steps": total, "eval_env": None if args["no_eval"] else data, "eval_every": args["eval_every"],
        "eval_episodes": args["eval_episodes"], "log_dir": run_dir, "checkpoint_every": every,
        "resume": run_dir / "checkpoint" if resume else None,
    }
    return agent, data, fit_kwargs


def _print_summary(run_dir: Path) -> None:
    import json

    path = run_dir / "summary.json"
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            _print_result(json.loads(path.read_text(encoding="utf-8")))


def _print_result(result: dict) -> None:
    for label in ("final", "best"):
        entry = result.get(label)
        if entry:
            score = entry.get("normalized_score")
            shown = f"normalised {score:.1f}" if score is not None else f"return {entry['mean_return']:.2f}"
            typer.echo(f"{label:>5}: step {entry['step']}, {shown} (mean return {entry['mean_return']:.2f})")


@app.command("eval")
def eval_cmd(
    run: str = typer.Argument(..., help="run folder of `qtkit train` (or a checkpoint folder)"),
    episodes: int = typer.Option(10, "--episodes", "-n"),
    seed: int = typer.Option(0, "--seed"),
    num_envs: int = typer.Option(None, "--num-envs"),
    env: str = typer.Option(None, "--env", help="gymnasium id (default: the dataset's env)"),
    normalized: bool = typer.Option(False, "--normalized", help="fail unless a normalised score can be reported"),
    threads: int = typer.Option(None, "--threads", help=THREADS_HELP),
) -> None:
    """Evaluate a trained agent: mean/std return and normalised score."""
    import qtkit
    from qtkit.errors import QtkitError

    _set_threads(threads)
    try:
        for name, value in (("--episodes", episodes), ("--num-envs", num_envs)):
            if value is not None and value < 1:
                from qtkit.errors import ParameterRangeError

                raise ParameterRangeError(f"{name} must be an integer >= 1, got {value}.")
        agent = qtkit.load(run)
        result = agent.evaluate(env, episodes=episodes, seed=seed, num_envs=num_envs, progress=True,
                                normalized=True if normalized else None)
    except QtkitError as exc:
        _fail(exc)
    line = f"{agent.name}: return {result['mean_return']:.2f} ± {result['std_return']:.2f} over {result['episodes']} episodes"
    if "normalized_score" in result:
        line += f", normalised score {result['normalized_score']:.1f} ± {result['normalized_std']:.1f}"
    typer.echo(line)


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("runs/demo", "--out"),
    steps: int = typer.Option(None, "--steps", help="training steps per preset (default: the demo budget)"),
    dataset: str = typer.Option("maze2d-umaze", "--dataset", help="a qtkit maker name"),
) -> None:
    """The main job: make D4RL-style maze2d-umaze if missing, train dt-gpt and qt-maze2d side by side, compare them."""
    from qtkit.demo import run_demo

    run_demo(out=out, steps=steps, dataset=dataset)


@app.command("sweep")
def sweep_cmd(
    file: str = typer.Argument(..., help="sweep YAML (presets/peers × datasets × seeds, budget, resources)"),
    address: str = typer.Option(None, "--address", help="join an existing Ray cluster (e.g. auto or ray://host:10001)"),
    num_cpus: int = typer.Option(None, "--num-cpus", help="CPUs of the local Ray (default: this machine's cores)"),
    serial: bool = typer.Option(False, "--serial", help="debugging: run trials one by one in this process, no Ray"),
    out: str = typer.Option(None, "--out", help="run folder (default: the file's out:)"),
    check: bool = typer.Option(False, "--check", help="validate the file and list the trials; run nothing"),
) -> None:
    """Run a sweep on Ray: every trial in its own run folder; finished trials are skipped, interrupted ones resume."""
    from pathlib import Path

    from qtkit.errors import QtkitError
    from qtkit.sweep import expand_trials, load_sweep, read_status, run_sweep

    try:
        spec = load_sweep(file)
        if out:
            spec.out = Path(out)
        trials = expand_trials(spec)
        if check:
            for trial in trials:
                typer.echo(f"{read_status(trial.run_dir).get('state', 'pending'):<8} {trial.key}")
            typer.echo(f"{len(trials)} trials, {spec.steps} steps each, out {spec.out}")
            packed = f" ({1 / spec.gpus_per_trial:g} trials share a GPU)" if 0 < spec.gpus_per_trial < 1 else ""
            typer.echo(f"resources per trial: {spec.cpus_per_trial:g} CPU, {spec.gpus_per_trial:g} GPU{packed}")
            if spec.gpus_per_trial > 0:
                from qtkit.sweep.runner import local_gpus

                if local_gpus() == 0:
                    typer.secho("note: this machine has no GPU: run the sweep with --address on a Ray cluster that has "
                                "GPUs, or set resources.gpus_per_trial: 0 to train on CPU.", fg=typer.colors.YELLOW)
            return
        typer.echo(f"sweep {spec.name}: {len(trials)} trials ({len(spec.methods)} methods × {len(spec.datasets)} "
                   f"datasets × {len(spec.seeds)} seeds), {spec.steps} steps each, out {spec.out}")
        result = run_sweep(spec, address=address, num_cpus=num_cpus, executor="serial" if serial else "ray")
    except QtkitError as exc:
        _fail(exc)
    typer.echo(f"{result['done']} done, {result['skipped']} skipped (already done), {result['failed']} failed "
               f"in {result['seconds']:.0f} s; report: {result['report']}")
    if result["failed"]:
        for r in result["results"]:
            if r["state"] == "failed":
                typer.secho(f"  failed {r['key']}: {r.get('error')}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)


@app.command("report")
def report_cmd(
    runs_dir: str = typer.Argument(..., help="a sweep's out folder (any tree of run folders with summary.json)"),
    out: str = typer.Option(None, "--out", "-o", help="where to write report.md/.json and PNGs (default: RUNS_DIR)"),
) -> None:
    """Markdown + JSON report and learning-curve PNGs: mean ± std over seeds, final and best, ranked per dataset.

    A folder without run folders (none with summary.json or status.json) is an error (exit 2), as is an --out
    that is a file, lies under a file or cannot be written; nothing is written then."""
    from pathlib import Path

    from qtkit.errors import QtkitError
    from qtkit.report import write_report_files

    if not Path(runs_dir).is_dir():
        what = "a file" if Path(runs_dir).exists() else "missing"
        _fail(FileNotFoundError(f"{runs_dir!r} is not a folder of runs (it is {what}). Give the out folder of "
                                "`qtkit sweep` or of `qtkit train` runs."))
    try:
        written = write_report_files(runs_dir, out)
    except QtkitError as exc:
        _fail(exc)
    typer.echo(written[0].read_text(encoding="utf-8"), nl=False)
    typer.echo(f"\nwrote {', '.join(str(p) for p in written)}")


def main() -> None:
    """The ``qtkit`` entry point: a qtkit error or a filesystem failure from any command is one ``error: ...``
    line and exit 2 (genuine bugs keep their tracebacks)."""
    import sys

    from qtkit.errors import QtkitError

    try:
        app()
    except QtkitError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        typer.secho(f"error: {exc.strerror or exc}{where}.", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
