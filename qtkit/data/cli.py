"""``qtkit data ...``: make datasets with real simulators and list local ones (typer sub-app)."""

from __future__ import annotations

import contextlib
import json
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
    "Target level: a SAC run whose budget runs out before the medium level (mean of its last 10 training returns "
    ">= 1/3 of the way from D4RL's random to expert return) is refused and nothing is written (exit 2), since "
    "the data would be weaker than its name says. Raise --steps, or pass --allow-below-target to keep it (the "
    "cached run is reused, no retraining): the dataset records reached_target: false, the make ends with a "
    "WARNING and `qtkit data list` / `qtkit data inspect` mark it BELOW TARGET.\n\n"
    "An existing dataset is only replaced with --overwrite; a failed or interrupted make (error, Ctrl-C, kill) "
    "leaves nothing behind, and the staging folders of a make killed with -9 are removed by the next make."
)


def _datasets_folder(out: str | None) -> None:
    """``--out DIR``: this process writes and reads Minari datasets under DIR (as MINARI_DATASETS_PATH=DIR)."""
    import os

    if out is not None:
        os.environ["MINARI_DATASETS_PATH"] = os.path.abspath(os.path.expanduser(out))


_OUT_HELP = ("the Minari datasets folder to write into (default: $MINARI_DATASETS_PATH, else ~/.minari/datasets); "
             "load from it later with MINARI_DATASETS_PATH=DIR")


@app.command("make", help=_MAKE_HELP)
def make_cmd(
    name: str = typer.Argument(..., help="maker name, e.g. pointmaze-umaze-sparse (see: qtkit data list)"),
    steps: int | None = typer.Option(None, "--steps", help="env steps in the dataset (default: the maker's; "
                                     "*-medium-replay: the SAC step budget)"),
    seed: int = typer.Option(0, "--seed", help="seed of env resets and action noise: same seed, same data"),
    noise: float | None = typer.Option(None, "--noise", help="std of the expert's Gaussian action noise "
                                       "(PointMaze makers; default 0.5)"),
    dataset_id: str | None = typer.Option(None, "--id", help="Minari id to write (default qtkit/<maker>-v0)"),
    out: str | None = typer.Option(None, "--out", "-o", help=_OUT_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing dataset with this id"),
    exist_ok: bool = typer.Option(False, "--exist-ok", help="keep an existing dataset with this id: print its id "
                                  "and make nothing"),
    allow_below_target: bool = typer.Option(False, "--allow-below-target", help="SAC makers: write the dataset "
                                            "even if SAC missed the medium level (marked BELOW TARGET)"),
    opt: list[str] = typer.Option([], "--opt", help="maker option KEY=VALUE, repeatable, e.g. --opt "
                                  "episode_length=500, --opt train_steps=50000, --opt net_arch=[64,64]"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar with steps/s"),
) -> None:
    """Make dataset NAME with a real simulator and write it as a local Minari dataset."""
    from qtkit.data.makers import below_target, get_maker, make_dataset
    from qtkit.errors import ConfigError, QtkitError

    _datasets_folder(out)
    try:
        maker = get_maker(name)
        options = maker.check_options(_parse_options(opt))
        if allow_below_target:
            if "allow_below_target" not in maker.options():
                raise ConfigError(f"--allow-below-target: maker {name!r} has no target level to miss; only the "
                                  "SAC makers (*-medium, *-medium-replay) do. Drop the flag.")
            options["allow_below_target"] = True
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
        note = below_target(_metadata(made_id))
        if note:
            typer.secho(f"WARNING: {made_id} is BELOW TARGET: {note}. It was kept because of "
                        "--allow-below-target; raise --steps for a dataset at the medium level.",
                        fg=typer.colors.YELLOW, err=True)


def _metadata(dataset_id: str) -> dict[str, Any]:
    """metadata.json of a local Minari dataset ({} when unreadable)."""

    from qtkit.data.makers.writer import dataset_dir

    try:
        return json.loads((dataset_dir(dataset_id) / "data" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _dataset_line(dataset_id: str, meta: dict[str, Any]) -> str:
    from qtkit.data.makers import below_target

    size = meta.get("dataset_size")
    size_s = f"{float(size):.1f} MB" if isinstance(size, (int, float)) else "?"
    refs = ""
    if "ref_min_score" in meta and "ref_max_score" in meta:
        refs = f"  ref {float(meta['ref_min_score']):.2f} / {float(meta['ref_max_score']):.2f}"
    flag = "  BELOW TARGET" if below_target(meta) else ""
    return (f"  {dataset_id:<40} {int(meta.get('total_episodes', 0)):>6,d} episodes "
            f"{int(meta.get('total_steps', 0)):>9,d} steps {size_s:>9}{refs}{flag}")


@app.command("list")
def list_cmd(
    filter: str = typer.Option("", "--filter", "-f", help="fnmatch pattern on maker names and dataset ids"),
) -> None:
    """List the dataset makers and the local Minari datasets (size, steps, reference scores; BELOW TARGET marks
    a SAC dataset kept with --allow-below-target). Details of one: qtkit data inspect ID."""
    import fnmatch

    from qtkit.data.makers import get_maker, list_makers
    from qtkit.data.makers.writer import list_local_datasets, minari_root_path

    typer.secho("makers (qtkit data make NAME):", bold=True)
    for name in list_makers(filter):
        maker = get_maker(name)
        typer.echo(f"  {name:<26} {maker.default_steps:>8,d} steps  {maker.summary}")
    datasets = {k: v for k, v in list_local_datasets().items() if not filter or fnmatch.fnmatch(k, filter)}
    typer.secho(f"local Minari datasets ({minari_root_path()}):", bold=True)
    if not datasets:
        typer.echo("  (none)")
    for dataset_id, meta in datasets.items():
        typer.echo(_dataset_line(dataset_id, _metadata(dataset_id) or dict(meta)))


def _short_space(value: Any) -> str:
    """A space as one short line: a gymnasium Box's JSON (whose low/high list every pixel of a frame) becomes
    ``Box(low..high, shape, dtype)``; anything else is shown as it is, cut at 300 characters."""
    text = str(value)
    try:
        space = json.loads(text) if isinstance(value, str) else value
    except ValueError:
        space = None
    if isinstance(space, dict) and space.get("type") == "Box":
        import numpy as np

        low, high = np.asarray(space.get("low"), dtype=float), np.asarray(space.get("high"), dtype=float)
        return f"Box({low.min():g}..{high.max():g}, shape={tuple(space.get('shape', low.shape))}, {space.get('dtype')})"
    if isinstance(space, dict) and space.get("type") == "Dict" and isinstance(space.get("subspaces"), dict):
        parts = ", ".join(f"{key}: {_short_space(sub)}" for key, sub in space["subspaces"].items())
        return f"Dict({parts})"
    return text if len(text) <= 300 else text[:297] + "..."


@app.command("inspect")
def inspect_cmd(
    dataset: str = typer.Argument(..., help="a local Minari id (qtkit/pointmaze-umaze-sparse-v0, 'minari:' "
                                  "optional), a maker name (its default id) or a D4RL-style .hdf5/.npz file"),
) -> None:
    """What `qtkit data list` knows about one local dataset: size, spaces, reference scores, how it was made.
    A .hdf5/.npz file is loaded and checked (bad values are an error naming the key and row, exit 2)."""
    from pathlib import Path

    from qtkit.data.makers import below_target, default_dataset_id, list_makers
    from qtkit.data.makers.writer import dataset_exists, list_local_datasets, minari_root_path
    from qtkit.errors import DataError, QtkitError, did_you_mean

    if Path(dataset).suffix.lower() in (".npz", ".hdf5", ".h5", ".he5") or Path(dataset).is_file():
        from qtkit.data import load_dataset

        try:
            data = load_dataset(dataset)
        except QtkitError as exc:
            _fail(exc)
        typer.secho(dataset, bold=True)
        typer.echo(f"{data.num_episodes:,d} episodes, {data.num_steps:,d} steps, obs_dim {data.obs_dim}, "
                   f"act_dim {data.act_dim}, {int(data.terminations.sum())} terminations, "
                   f"{int(data.truncations.sum())} truncations")
        if data.ref_min_score is not None and data.ref_max_score is not None:
            typer.echo(f"ref {data.ref_min_score:.2f} / {data.ref_max_score:.2f}")
        if data.is_image:
            extra = f", proprioceptive vector of {data.proprio_dim} ({data.observation_parts})" if data.proprio_dim else ""
            typer.echo(f"frames {tuple(data.obs_shape)} uint8{extra}")
        if data.env_id:
            typer.echo(f"env_id: {data.env_id}")
        return
    dataset_id = dataset[len("minari:"):] if dataset.startswith("minari:") else dataset
    if dataset_id in list_makers():
        dataset_id = default_dataset_id(dataset_id)
    if not dataset_exists(dataset_id):
        local = sorted(list_local_datasets())
        _fail(DataError(
            f"no local Minari dataset {dataset_id!r} in {minari_root_path()}.{did_you_mean(dataset_id, local)} "
            f"Local datasets: {', '.join(local) or '(none)'}; make one with qtkit data make NAME."
        ))
    meta = _metadata(dataset_id)
    typer.secho(dataset_id, bold=True)
    typer.echo(_dataset_line("", meta).strip())
    for key in ("env_spec", "eval_env_spec"):
        if meta.get(key):
            with contextlib.suppress(ValueError, AttributeError):
                typer.echo(f"{key}: {json.loads(meta[key]).get('id')}")
    for key in ("observation_space", "action_space", "algorithm_name", "minari_version"):
        if meta.get(key) is not None:
            typer.echo(f"{key}: {_short_space(meta[key])}")
    maker = meta.get("qtkit_maker")
    if isinstance(maker, dict):
        shown = {k: maker[k] for k in ("maker", "steps", "seed", "noise", "options", "qtkit_version") if k in maker}
        typer.echo(f"made by qtkit: {json.dumps(shown)}")
    note = below_target(meta)
    if note:
        typer.echo(f"target level: BELOW TARGET: {note}")
    elif isinstance(maker, dict) and "sac" in maker:
        typer.echo("target level: reached")
    if meta.get("description"):
        typer.echo(f"description: {meta['description']}")
    typer.echo(f"folder: {minari_root_path() / dataset_id}")
