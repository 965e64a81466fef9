"""Preset files, ``base:`` inheritance, overrides and validation against component signatures.

A *preset* is a named mapping in a YAML file (``registry.yaml`` ships with qtkit)::

    qt-gpt-nstep:
      base: dt-gpt                              # inherit, then deep-merge the rest
      critic: {type: twin-mlp, hidden: [256, 256, 256]}
      backup: {type: n-step, n: 5}
      train: {eta: 1.0}

A *slot* (``backbone``, ``policy``, ``critic``, ``backup``, ``sampler``) holds one component spec:
``{type: NAME, **params}`` or just ``NAME``. ``agent`` names the agent family, whose
``TrainConfig`` dataclass is the schema of ``train``. :func:`resolve_config` turns a preset
plus overrides into the fully resolved plain dict that ``agent.config`` holds.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from qtkit.errors import (
    ConfigError,
    InheritanceCycleError,
    ParameterTypeError,
    PresetFileError,
    UnknownNameError,
    UnknownParameterError,
    did_you_mean,
)
from qtkit.params import check_params, describe
from qtkit.registry import CONTEXT_PARAMS, ComponentEntry, get_component

#: Component slots of a preset, in build order.
SLOTS: tuple[str, ...] = ("encoder", "backbone", "policy", "critic", "backup", "sampler")
#: What an absent slot means (the encoder of vector observations; other slots have no default).
SLOT_DEFAULTS: dict[str, str] = {"encoder": "flat"}
#: Slots that may be ``null``.
OPTIONAL_SLOTS: frozenset[str] = frozenset({"critic", "backbone"})
#: Keys of a preset besides the slots.
PRESET_KEYS: tuple[str, ...] = ("base", "description", "agent", "shapes", "train", "name")
SHAPE_KEYS: tuple[str, ...] = ("obs_dim", "obs_shape", "act_dim", "action_low", "action_high")
DEFAULT_AGENT = "qt"


# ----------------------------------------------------------------------------- preset files
def builtin_registry_path() -> Path:
    """The ``registry.yaml`` shipped inside the package."""
    return Path(str(resources.files("qtkit") / "registry.yaml"))


_FILE_CACHE: dict[tuple[str, float], dict[str, Any]] = {}


def read_preset_file(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Parse a presets YAML file into ``{name: preset}``; syntax errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise PresetFileError(
            f"Preset file {str(path)!r} does not exist. Give a path to a YAML file, "
            "e.g. qtkit.build('my_presets.yaml:my-variant')."
        )
    key = (str(path.resolve()), path.stat().st_mtime)
    if key in _FILE_CACHE:
        return copy.deepcopy(_FILE_CACHE[key])
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PresetFileError(
            f"YAML syntax error in {str(path)!r}{where}: {problem}. Fix the file and retry."
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PresetFileError(
            f"{str(path)!r} must be a mapping of preset names to presets, got {type(data).__name__}."
        )
    presets = {}
    for name, body in data.items():
        if str(name).startswith("_"):  # YAML anchors / shared snippets
            continue
        if not isinstance(body, dict):
            raise PresetFileError(
                f"Preset {name!r} in {str(path)!r} must be a mapping (slots, train, base...), "
                f"got {type(body).__name__}."
            )
        presets[str(name)] = body
    _FILE_CACHE[key] = presets
    return copy.deepcopy(presets)


def builtin_presets() -> dict[str, dict[str, Any]]:
    return read_preset_file(builtin_registry_path())


def list_presets(filter: str = "") -> list[str]:
    """Names of the built-in presets, optionally filtered by an fnmatch pattern (``"qt-*"``)."""
    import fnmatch

    return sorted(n for n in builtin_presets() if not filter or fnmatch.fnmatch(n, filter))


def _split_spec(spec: str) -> tuple[Path | None, str]:
    """``"file.yaml:name"`` -> (path, name); ``"name"`` -> (None, name)."""
    if ":" in spec:
        file, _, name = spec.rpartition(":")
        if file.endswith((".yaml", ".yml")):
            return Path(file), name
    if spec.endswith((".yaml", ".yml")):
        return Path(spec), ""
    return None, spec


def deep_merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """``child`` merged into a copy of ``base`` (neither is modified): nested mappings merge key by key,
    anything else replaces; a slot key (``critic``...) merges as a slot, so a new ``type`` replaces the
    whole spec instead of inheriting the old component's parameters. Presets' ``base:`` chains and sweeps'
    ``set:`` layers both merge with it."""
    out = copy.deepcopy(dict(base))
    for key, value in child.items():
        if key in SLOTS:
            out[key] = _merge_slot(out.get(key), value)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _as_slot_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"type": value}
    if isinstance(value, Mapping):
        return dict(copy.deepcopy(value))
    return value  # validated later


def _merge_slot(current: Any, update: Any) -> Any:
    """Merge a slot update: a new ``type`` replaces the spec, same or no type merges params."""
    current, update = _as_slot_dict(current), _as_slot_dict(update)
    if update is None or current is None or not isinstance(update, dict):
        return update
    if "type" in update and update["type"] != current.get("type"):
        return update
    merged = dict(current)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_preset(spec: str) -> dict[str, Any]:
    """Load a preset by name (built-in) or ``path.yaml:name`` and resolve its ``base:`` chain.

    ``base: NAME`` is looked up in the file of the preset that names it, then in qtkit's registry.yaml;
    ``base: FILE.yaml:NAME`` in another file, a relative FILE resolving against the folder of the file that
    names it (the current folder for a built-in preset). Cycles, across files too, are an
    :class:`InheritanceCycleError`.
    """
    path, name = _split_spec(spec)
    if path is not None and not name:
        local = read_preset_file(path)
        raise ConfigError(
            f"{spec!r} names a file but no preset. Use '{path}:PRESET'; the file defines: "
            f"{', '.join(sorted(local)) or '(nothing)'}."
        )
    builtins = builtin_presets()

    def label(file: Path | None, preset_name: str) -> str:
        return preset_name if file is None else f"{file}:{preset_name}"

    def lookup(file: Path | None, preset_name: str, requested_by: str | None) -> tuple[dict[str, Any], Path | None]:
        """The body of ``preset_name`` and the file it comes from (None: registry.yaml)."""
        if file is not None:
            local = read_preset_file(file)
            if preset_name in local:
                return local[preset_name], file
        else:
            local = {}
        if preset_name in builtins:
            return builtins[preset_name], None
        known = sorted(set(builtins) | set(local))
        by = f" (the base of preset {requested_by!r})" if requested_by else ""
        where = f" in {str(file)!r} or" if file is not None else ""
        raise UnknownNameError(
            f"Unknown preset {preset_name!r}{by}: not found{where} in qtkit's registry.yaml."
            + did_you_mean(preset_name, known)
            + " List them with `qtkit list presets`."
        )

    body, origin = lookup(path, name, None)
    bodies = [body]
    chain = [(origin.resolve() if origin is not None else None, name)]
    labels = [label(origin, name)]
    while bodies[-1].get("base"):
        base = bodies[-1]["base"]
        if not isinstance(base, str):
            raise ConfigError(f"Preset {labels[-1]!r}: 'base' must be a preset name or FILE.yaml:NAME, got {base!r}.")
        base_file, base_name = _split_spec(base)
        if base_file is not None:
            if not base_name:
                raise ConfigError(f"Preset {labels[-1]!r}: 'base: {base}' names a file but no preset; "
                                  f"write 'base: {base}:PRESET'.")
            if not base_file.expanduser().is_absolute():
                base_file = (origin.parent if origin is not None else Path.cwd()) / base_file.expanduser()
            body, origin = lookup(base_file.expanduser(), base_name, labels[-1])
        else:
            body, origin = lookup(origin, base_name, labels[-1])
        key = (origin.resolve() if origin is not None else None, base_name)
        if key in chain:
            keys = [*chain, key]
            one_file = len({file for file, _ in keys}) == 1
            names = [n for _, n in keys] if one_file else [*labels, label(origin, base_name)]
            raise InheritanceCycleError(
                "Preset inheritance cycle: " + " -> ".join(names) + ". Remove one of these 'base:' entries."
            )
        bodies.append(body)
        chain.append(key)
        labels.append(label(origin, base_name))
    resolved: dict[str, Any] = {}
    for body in reversed(bodies):
        resolved = deep_merge(resolved, {k: v for k, v in body.items() if k != "base"})
    resolved["name"] = name
    return resolved


# ----------------------------------------------------------------------------- type checking
def _type_name(annotation: Any) -> str:
    return describe(annotation)


def coerce(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Check ``value`` against a type annotation; returns ``(ok, value)`` with gentle coercions.

    Coercions: int -> float where a float is expected, numeric strings such as YAML's ``3e-4``
    -> float, tuples -> lists (configs stay plain YAML).
    """
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True, value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:  # the type is checked here, the declared range by qtkit.params
        return coerce(value, args[0])
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, out = coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if origin is typing.Literal:
        return (value in args), value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int | float):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (list, tuple, Sequence, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, list | tuple):
            return False, value
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return False, value
            items = [coerce(v, a) for v, a in zip(value, args, strict=True)]
        else:
            item_type = args[0] if args else Any
            items = [coerce(v, item_type) for v in value]
        if not all(ok for ok, _ in items):
            return False, value
        return True, [v for _, v in items]
    if origin in (dict, Mapping) or annotation is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if isinstance(annotation, type):
        return isinstance(value, annotation), value
    return True, value


def _hints(target: Any) -> dict[str, Any]:
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable forward refs: fall back to raw annotations
        return {k: v for k, v in getattr(fn, "__annotations__", {}).items() if not isinstance(v, str)}


def validate_params(
    params: Mapping[str, Any],
    schema: Mapping[str, inspect.Parameter],
    hints: Mapping[str, Any],
    *,
    where: str,
    forbidden: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Check ``params`` against a signature-derived schema; return them with defaults filled in."""
    forbidden = forbidden or {}
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in forbidden:
            raise UnknownParameterError(f"{where}: {key!r} cannot be set here; {forbidden[key]}")
        if key not in schema:
            accepted = ", ".join(sorted(schema)) or "(none)"
            raise UnknownParameterError(
                f"{where}: unknown parameter {key!r}. Accepted parameters: {accepted}."
                + did_you_mean(key, schema)
            )
        annotation = hints.get(key, inspect.Parameter.empty)
        default = schema[key].default
        if annotation is inspect.Parameter.empty and default is not inspect.Parameter.empty and default is not None:
            annotation = type(default) if not isinstance(default, float) else float
        ok, coerced = coerce(value, annotation)
        if not ok:
            raise ParameterTypeError(
                f"{where}: parameter {key!r} must be {_type_name(annotation)}, got {value!r} "
                f"({type(value).__name__}). Example: {key}: {_example(default)}."
            )
        out[key] = coerced
    check_params({k: v for k, v in out.items() if k in hints}, hints, where=where)
    missing = [k for k, p in schema.items() if p.default is inspect.Parameter.empty and k not in out]
    if missing:
        raise ConfigError(f"{where}: missing required parameter(s) {', '.join(missing)}.")
    for key, p in schema.items():
        if key not in out:
            out[key] = _plain(p.default)
    return out


def _example(default: Any) -> str:
    if default is inspect.Parameter.empty:
        return "..."
    return yaml.safe_dump(_plain(default), default_flow_style=True).strip().removesuffix("...").strip()


def _plain(value: Any) -> Any:
    """Turn tuples into lists, recursively, so configs are plain YAML."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def resolve_slot(slot: str, spec: Any, *, preset: str) -> dict[str, Any] | None:
    """Validate one slot spec and fill in its defaults from the component's signature."""
    where_slot = f"preset {preset!r}, slot {slot!r}"
    spec = _as_slot_dict(SLOT_DEFAULTS[slot] if spec is None and slot in SLOT_DEFAULTS else spec)
    if spec is None:
        if slot in OPTIONAL_SLOTS:
            return None
        raise ConfigError(f"{where_slot}: this slot cannot be null; name a {slot} (`qtkit list components`).")
    if not isinstance(spec, dict):
        raise ParameterTypeError(
            f"{where_slot}: expected a component name or a mapping with 'type', got {spec!r}."
        )
    if "type" not in spec:
        raise ConfigError(
            f"{where_slot}: missing 'type' (the registered {slot} name), got {spec}. If the preset's {slot} is "
            f"null, name one, e.g. {slot}={{'type': NAME, ...}} (`qtkit list components`)."
        )
    entry = get_component(slot, spec["type"], where=where_slot)
    where = f"{where_slot} ({slot} {entry.name!r})"
    params = {k: v for k, v in spec.items() if k != "type"}
    forbidden = {name: _context_hint(name) for name in CONTEXT_PARAMS}
    resolved = validate_params(params, entry.parameters(), _hints(entry.target), where=where, forbidden=forbidden)
    return {"type": entry.name, **resolved}


def _context_hint(name: str) -> str:
    if name in SHAPE_KEYS:
        return f"{name} comes from qtkit.build(..., {name}=...), a dataset or an env."
    if name in ("gamma", "rtg_scale"):
        return f"set it once for the whole agent in the 'train' section (train.{name})."
    return "it is supplied by the builder from the preset's top-level slot."


def train_config_class(agent_entry: ComponentEntry) -> type:
    cls = getattr(agent_entry.target, "TrainConfig", None)
    if cls is None or not dataclasses.is_dataclass(cls):
        raise ConfigError(f"agent {agent_entry.name!r} has no TrainConfig dataclass.")
    return cls


def resolve_train(train: Mapping[str, Any] | None, agent_entry: ComponentEntry, *, preset: str) -> dict[str, Any]:
    cls = train_config_class(agent_entry)
    schema = {
        f.name: inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=f.default if f.default is not dataclasses.MISSING else f.default_factory(),  # type: ignore[misc]
        )
        for f in dataclasses.fields(cls)
    }
    hints = typing.get_type_hints(cls, include_extras=True)
    return validate_params(train or {}, schema, hints, where=f"preset {preset!r}, section 'train'")


def train_keys(agent: str = DEFAULT_AGENT) -> list[str]:
    entry = get_component("agent", agent)
    return [f.name for f in dataclasses.fields(train_config_class(entry))]


# ----------------------------------------------------------------------------- overrides
def apply_overrides(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``build(**overrides)``: slot swaps/params, ``train`` keys, or a ``train`` dict."""
    config = copy.deepcopy(config)
    preset = config.get("name", "?")
    agent = config.get("agent") or DEFAULT_AGENT
    accepted_train = train_keys(agent)
    for key, value in overrides.items():
        if key in SLOTS:
            config[key] = _merge_slot(config.get(key) or SLOT_DEFAULTS.get(key), value)
        elif key == "train":
            if not isinstance(value, Mapping):
                raise ParameterTypeError(f"preset {preset!r}: 'train' override must be a mapping, got {value!r}.")
            config["train"] = {**config.get("train", {}), **value}
        elif key in accepted_train:
            config.setdefault("train", {})[key] = value
        elif key in ("agent", "description", "name"):
            config[key] = value
        else:
            accepted = [*SLOTS, *accepted_train]
            raise UnknownParameterError(
                f"preset {preset!r}: unknown override {key!r}. Override a slot "
                f"({', '.join(SLOTS)}) with a name or a dict of params, or a training parameter "
                f"({', '.join(sorted(accepted_train))})." + did_you_mean(key, accepted)
            )
    return config


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a merged preset and fill in every default: the plain dict ``agent.config`` holds."""
    preset = str(config.get("name", "<config>"))
    unknown = [k for k in config if k not in SLOTS and k not in PRESET_KEYS]
    if unknown:
        raise UnknownParameterError(
            f"preset {preset!r}: unknown top-level key(s) {', '.join(map(repr, unknown))}. "
            f"Allowed: {', '.join([*PRESET_KEYS, *SLOTS])}." + did_you_mean(unknown[0], [*PRESET_KEYS, *SLOTS])
        )
    agent_name = config.get("agent") or DEFAULT_AGENT
    agent_entry = get_component("agent", agent_name, where=f"preset {preset!r}, key 'agent'")
    out: dict[str, Any] = {
        "name": preset,
        "description": str(config.get("description", "")),
        "agent": agent_entry.name,
    }
    for slot in SLOTS:
        out[slot] = resolve_slot(slot, config.get(slot), preset=preset)
    out["train"] = resolve_train(config.get("train"), agent_entry, preset=preset)
    if config.get("shapes") is not None:
        out["shapes"] = dict(config["shapes"])
    return out


def dump_yaml(config: Mapping[str, Any]) -> str:
    """A resolved config as YAML (slots in build order, flow style for short lists)."""
    return yaml.safe_dump(_plain(dict(config)), sort_keys=False, default_flow_style=None, width=100)
