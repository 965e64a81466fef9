"""The ``qtkit`` command line (typer)."""

from __future__ import annotations

from enum import Enum

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
    """Apply ``--threads`` (None: torch's default)."""
    if threads is None:
        return
    if threads < 1:
        _fail(ValueError(f"--threads must be >= 1, got {threads}; leave it out to use torch's default."))
    from qtkit.cpu import set_torch_threads

    set_torch_threads(threads)


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
            typer.echo(f"{name:<16} {description}")
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
            node = node.setdefault(part, {})  # type: ignore[assignment]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set both as a value and as a section.")
        node[parts[-1]] = value
    return out


@app.command("train")
def train_cmd(
    preset: str = typer.Option(..., "--preset", "-p", help="preset name or path.yaml:name"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="minari:ID, a D4RL .hdf5 or an .npz"),
    steps: int = typer.Option(None, "--steps", help="gradient steps (default: the preset's train.steps)"),
    seed: int = typer.Option(0, "--seed"),
    out: str = typer.Option(..., "--out", "-o", help="run folder (metrics, checkpoint, summary)"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. --set eta=2 --set backup=one-step"),
    eval_every: int = typer.Option(None, "--eval-every", help="evaluate every N steps (and at the end)"),
    eval_episodes: int = typer.Option(10, "--eval-episodes"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip evaluation (e.g. a dataset without an env)"),
    resume: bool = typer.Option(False, "--resume", help="continue the checkpoint in --out"),
    threads: int = typer.Option(None, "--threads", help=THREADS_HELP),
) -> None:
    """Train a preset on a dataset; writes metrics.csv, TensorBoard logs, a checkpoint and summary.json."""
    from pathlib import Path

    import qtkit
    from qtkit.data import load_dataset
    from qtkit.errors import QtkitError

    _set_threads(threads)
    try:
        data = load_dataset(dataset)
        agent = qtkit.build(preset, dataset=data, seed=seed, **parse_sets(set_))
        result = agent.fit(
            data, steps, eval_env=None if no_eval else data, eval_every=eval_every, eval_episodes=eval_episodes,
            log_dir=out, resume=Path(out) / "checkpoint" if resume else None,
        )
    except QtkitError as exc:
        _fail(exc)
    _print_result(result)


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
    app()


if __name__ == "__main__":
    main()
