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


class ListWhat(str, Enum):
    presets = "presets"
    components = "components"


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
