"""``qtkit data ...``: make datasets with real simulators and list local ones (typer sub-app)."""

from __future__ import annotations

from typing import Any

import typer

app = typer.Typer(
    help=(
        "Datasets: make them with real simulators and expert controllers (no downloads), list local ones. "
        "Made datasets are local Minari datasets with ids qtkit/<maker>-v0 (load them as 'minari:<id>')."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(exc: BaseException, code: int = 2) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def _parse_options(items: list[str]) -> dict[str, Any]:
    import yaml

    from qtkit.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--opt {item!r}: expected KEY=VALUE, e.g. --opt episode_length=500 "
                              f"or --opt net_arch=[64,64].")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


_MAKE_HELP = (
    "Make dataset NAME with a real simulator and write it as a local Minari dataset (see: qtkit data list).\n\n"
    "PointMaze makers (pointmaze-{umaze,medium,large}-{sparse,dense}) take seconds (~5-10k steps/s: 100k "
    "steps of pointmaze-umaze-sparse in about 25 s). *-random makers run at simulator speed. "
    "The SAC makers (*-medium-replay, *-medium) need stable-baselines3 (the 'makers' extra) and train SAC "
    "online first: about 15 minutes per 100k SAC steps on 2 idle CPU cores, several times more on shared ones "
    "(default budget 300k steps, stopping "
    "early at the medium level); the finished run is cached, so making -medium after -medium-replay trains "
    "once.\n\n"
    "An existing dataset is only replaced with --overwrite; a failed or interrupted make leaves nothing behind."
)


@app.command("make", help=_MAKE_HELP)
def make_cmd(
    name: str = typer.Argument(..., help="maker name, e.g. pointmaze-umaze-sparse (see: qtkit data list)"),
    steps: int | None = typer.Option(None, "--steps", help="env steps in the dataset (default: the maker's; "
                                     "*-medium-replay: the SAC step budget)"),
    seed: int = typer.Option(0, "--seed", help="seed of env resets and action noise: same seed, same data"),
    noise: float | None = typer.Option(None, "--noise", help="std of the expert's Gaussian action noise "
                                       "(PointMaze makers; default 0.5)"),
    dataset_id: str | None = typer.Option(None, "--id", help="Minari id to write (default qtkit/<maker>-v0)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing dataset with this id"),
    exist_ok: bool = typer.Option(False, "--exist-ok", help="keep an existing dataset with this id: print its id "
                                  "and make nothing"),
    opt: list[str] = typer.Option([], "--opt", help="maker option KEY=VALUE, repeatable, e.g. --opt "
                                  "episode_length=500, --opt train_steps=50000, --opt net_arch=[64,64]"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar with steps/s"),
) -> None:
    """Make dataset NAME with a real simulator and write it as a local Minari dataset."""
    from qtkit.data.makers import get_maker, make_dataset
    from qtkit.errors import QtkitError

    try:
        maker = get_maker(name)
        options = maker.check_options(_parse_options(opt))
        if maker.extra:
            typer.secho(f"{name}: trains SAC online first (~15 min per 100k SAC steps on 2 cores).", err=True)
        made_id = make_dataset(name, steps=steps, seed=seed, noise=noise, dataset_id=dataset_id,
                               overwrite=overwrite, exist_ok=exist_ok, progress=progress, **options)
    except QtkitError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _fail(KeyboardInterrupt("interrupted; no dataset was written."), code=130)
    else:
        typer.echo(made_id)


@app.command("list")
def list_cmd(
    filter: str = typer.Option("", "--filter", "-f", help="fnmatch pattern on maker names and dataset ids"),
) -> None:
    """List the dataset makers and the local Minari datasets (size, steps, reference scores)."""
    import fnmatch

    from qtkit.data.makers import get_maker, list_makers
    from qtkit.data.makers.writer import datasets_root, list_local_datasets

    typer.secho("makers (qtkit data make NAME):", bold=True)
    for name in list_makers(filter):
        maker = get_maker(name)
        typer.echo(f"  {name:<26} {maker.default_steps:>8,d} steps  {maker.summary}")
    datasets = {k: v for k, v in list_local_datasets().items() if not filter or fnmatch.fnmatch(k, filter)}
    typer.secho(f"local Minari datasets ({datasets_root()}):", bold=True)
    if not datasets:
        typer.echo("  (none)")
    for dataset_id, meta in datasets.items():
        size = meta.get("dataset_size")
        size_s = f"{float(size):.1f} MB" if isinstance(size, (int, float)) else "?"
        refs = ""
        if "ref_min_score" in meta and "ref_max_score" in meta:
            refs = f"  ref {float(meta['ref_min_score']):.2f} / {float(meta['ref_max_score']):.2f}"
        typer.echo(f"  {dataset_id:<40} {int(meta.get('total_episodes', 0)):>6,d} episodes "
                   f"{int(meta.get('total_steps', 0)):>9,d} steps {size_s:>9}{refs}")
