"""Sweep files: schema, validation (every problem at once, with suggestions) and trial expansion.

.. code-block:: yaml

    name: smoke
    steps: 200                  # gradient steps per trial (same budget for presets and peers)
    eval_every: 100             # evaluate every N steps and at the end (default: only at the end)
    eval_episodes: 5
    checkpoint_every: 100       # default: eval_every, else steps
    seeds: [0, 1]
    datasets:
      - minari:qtkit/pointmaze-umaze-sparse-v0        # a local Minari id, a D4RL .hdf5 or an .npz
      - make: {name: pointmaze-umaze-sparse, steps: 20000, seed: 0}   # made with qtkit.data.make_dataset if missing
        set: {rtg_scale: 10.0}  # preset overrides for this dataset only (e.g. the reward scale of its family)
    set: {batch_size: 64}       # overrides for every preset method

Preset overrides merge as: sweep ``set`` < dataset ``set`` < the method's own ``set`` (the method wins). From the
sweep- and dataset-wide sets a preset skips a slot it leaves empty (``critic: null``) and training keys only
other agent families take. Peers take only their method's ``set`` (d3rlpy reproduction defaults otherwise).
    methods:
      - {preset: dt-gpt, set: {backbone: {width: 64}}, label: dt-small}
      - {preset: "qt-*"}        # an fnmatch pattern: every matching preset (one method each)
      - {peer: d3rlpy-iql, set: {batch_size: 64}}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0}
    out: runs/sweeps/smoke
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qtkit.config import deep_merge
from qtkit.errors import ConfigError, did_you_mean

__all__ = ["Method", "SweepDataset", "SweepError", "SweepSpec", "Trial", "expand_trials", "load_sweep", "parse_sweep",
           "preset_overrides"]

TOP_KEYS = ("name", "description", "steps", "eval_every", "eval_episodes", "checkpoint_every", "seeds", "datasets",
            "methods", "set", "resources", "out")
METHOD_KEYS = ("preset", "peer", "label", "set")
DATASET_KEYS = ("spec", "make", "label", "set")
MAKE_KEYS = ("name", "steps", "seed", "noise", "dataset_id", "options")
RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial")


class SweepError(ConfigError):
    """A sweep file with one or more problems; ``problems`` lists them all."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, list(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"sweep {source}: {len(problems)} problem(s), nothing was started:\n{lines}")


@dataclass(frozen=True)
class Method:
    """One entry of ``methods:``: a qtkit preset (with overrides) or a peer."""

    label: str
    preset: str | None = None
    peer: str | None = None
    set: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "preset" if self.preset is not None else "peer"

    @property
    def target(self) -> str:
        return str(self.preset if self.preset is not None else self.peer)


@dataclass(frozen=True)
class SweepDataset:
    """One entry of ``datasets:``: a loadable spec, optionally made first (``make``), with preset overrides."""

    label: str
    spec: str
    make: dict[str, Any] | None = None
    set: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepSpec:
    """A validated sweep file."""

    name: str
    steps: int
    seeds: list[int]
    datasets: list[SweepDataset]
    methods: list[Method]
    out: Path
    eval_every: int | None = None
    eval_episodes: int = 10
    checkpoint_every: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    common: dict[str, Any] = field(default_factory=dict)  # the sweep-wide preset overrides (set:)
    description: str = ""
    source: str = "<dict>"
    raw: dict[str, Any] = field(default_factory=dict)

    def trials(self) -> list[Trial]:
        return expand_trials(self)


@dataclass(frozen=True)
class Trial:
    """One (method, dataset, seed) run with the sweep's budget; its folder is ``out/<dataset>/<method>/seed<k>``."""

    method: Method
    dataset: SweepDataset
    seed: int
    steps: int
    eval_every: int | None
    eval_episodes: int
    checkpoint_every: int | None
    run_dir: str
    cpus: float = 1.0
    gpus: float = 0.0
    env: dict[str, str] = field(default_factory=dict)  # environment variables the worker needs (Minari path)

    overrides: dict[str, Any] = field(default_factory=dict)  # what the preset/peer is built with (merged sets)

    @property
    def key(self) -> str:
        return f"{self.dataset.label}/{self.method.label}/seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": {"label": self.method.label, self.method.kind: self.method.target, "set": self.overrides},
            "dataset": {"label": self.dataset.label, "spec": self.dataset.spec},
            "seed": self.seed, "steps": self.steps, "eval_every": self.eval_every,
            "eval_episodes": self.eval_episodes, "checkpoint_every": self.checkpoint_every,
        }



def _entry_overrides(where: str, entry: dict[str, Any], problems: list[str], what: str) -> dict[str, Any]:
    """The ``set:`` mapping of a sweep entry, without ``seed`` (the sweep's seeds decide it); problems appended."""
    overrides = entry.get("set") or {}
    if not isinstance(overrides, dict):
        problems.append(f"{where}.set: expected a mapping of {what}, got {overrides!r}.")
        return {}
    if "seed" in overrides:
        problems.append(f"{where}.set: 'seed' comes from the sweep's seeds: list; remove it here.")
        overrides = {k: v for k, v in overrides.items() if k != "seed"}
    return overrides

def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= minimum


def _is_number(value: Any, minimum: float) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
            and float(value) >= minimum)


def resource_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``resources.<key>`` (``cpus_per_trial`` / ``gpus_per_trial``), or None.

    Both are Ray task resources: a fraction in (0, 1] (trials share the unit: ``gpus_per_trial: 0.25`` packs four
    trials on one GPU) or a whole number >= 1 (Ray refuses fractions above 1); ``gpus_per_trial`` may also be 0 (no
    GPU, the default).
    """
    gpu = key == "gpus_per_trial"
    if _is_number(value, 0):
        amount = float(value)
        if (gpu and amount == 0) or 0 < amount <= 1 or (amount >= 1 and amount.is_integer()):
            return None
    if gpu:
        return (f"resources.gpus_per_trial: expected 0 (no GPU), a fraction in (0, 1] (trials share a GPU: 0.25 packs "
                f"four trials on one) or a whole number of GPUs, got {value!r}. Fix: e.g. gpus_per_trial: 0.25, or 1 "
                "(Ray accepts fractions only up to 1).")
    return (f"resources.cpus_per_trial: expected a fraction in (0, 1] or a whole number of cores >= 1, got {value!r}. "
            "Fix: e.g. cpus_per_trial: 1 (Ray accepts fractions only up to 1).")


def _safe_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._") or "x"


def _dataset_label(spec: str) -> str:
    body = spec.split(":", 1)[1] if spec.startswith("minari:") else Path(spec).stem
    return _safe_label(body.rsplit("/", 1)[-1])


def _unknown(where: str, keys: Any, allowed: tuple[str, ...]) -> list[str]:
    return [f"{where}: unknown key {k!r}.{did_you_mean(str(k), allowed)} Allowed: {', '.join(allowed)}."
            for k in keys if k not in allowed]


def _check_dataset(index: int, entry: Any, problems: list[str], local_ids: list[str]) -> SweepDataset | None:
    where = f"datasets[{index}]"
    from qtkit.data.makers import default_dataset_id, get_maker, list_makers

    if isinstance(entry, str):
        entry = {"spec": entry}
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected 'minari:ID', a file path or a mapping with make:, got {entry!r}.")
        return None
    problems.extend(_unknown(where, entry, DATASET_KEYS))
    make = entry.get("make")
    spec = entry.get("spec")
    preset_set = _entry_overrides(where, entry, problems, "preset overrides")
    if make is not None:
        if isinstance(make, str):
            make = {"name": make}
        if not isinstance(make, dict) or "name" not in make:
            problems.append(f"{where}.make: expected {{name: MAKER, steps: N, seed: K}}, got {make!r}.")
            return None
        problems.extend(_unknown(f"{where}.make", make, MAKE_KEYS))
        name = str(make["name"])
        try:
            maker = get_maker(name)
        except ConfigError:
            problems.append(f"{where}.make: unknown dataset maker {name!r}.{did_you_mean(name, list_makers())} "
                            f"Makers: {', '.join(list_makers())}.")
            return None
        for key in ("steps", "seed"):
            if key in make and not _is_int(make[key], 1 if key == "steps" else 0):
                problems.append(f"{where}.make.{key}: expected an integer >= {1 if key == 'steps' else 0}, got {make[key]!r}.")
        options = make.get("options") or {}
        if not isinstance(options, dict):
            problems.append(f"{where}.make.options: expected a mapping, got {options!r}.")
        else:
            for key in options:
                if key not in maker.options():
                    problems.append(f"{where}.make.options: maker {name!r} has no option {key!r}."
                                    f"{did_you_mean(str(key), maker.options())} Its options: "
                                    f"{', '.join(maker.options()) or '(none)'}.")
            try:  # the types (episode_length: abc)
                maker.check_options({k: v for k, v in options.items() if k in maker.options()})
            except ConfigError as exc:
                problems.append(f"{where}.make.options: {exc}")
        if maker.extra:
            import importlib.util

            if maker.extra == "makers" and importlib.util.find_spec("stable_baselines3") is None:
                problems.append(f"{where}.make: maker {name!r} needs stable-baselines3: install qtkit[makers] "
                                "(pip install 'qtkit[makers]' -c constraints.txt).")
        dataset_id = str(make.get("dataset_id") or default_dataset_id(name))
        made_spec = f"minari:{dataset_id}"
        if spec is not None and spec != made_spec:
            problems.append(f"{where}: spec {spec!r} and make (which writes {made_spec!r}) disagree; give only make:.")
        return SweepDataset(label=_safe_label(str(entry.get("label") or _dataset_label(made_spec))), spec=made_spec,
                            make=dict(make), set=preset_set)
    if not isinstance(spec, str) or not spec:
        problems.append(f"{where}: give a dataset spec ('minari:ID' or a path) or make: {{name: ...}}.")
        return None
    if spec.startswith("minari:"):
        dataset_id = spec.split(":", 1)[1]
        if dataset_id not in local_ids:
            from qtkit.data.makers import list_makers

            guess = dataset_id.rsplit("/", 1)[-1].removesuffix("-v0")
            hint = did_you_mean(dataset_id, local_ids)
            close = [guess] if guess in list_makers() else difflib.get_close_matches(guess, list_makers(), n=1)
            maker_hint = f" Or let the sweep make it: make: {{name: {close[0]}, steps: ..., seed: 0}}." if close else ""
            problems.append(f"{where}: Minari dataset {dataset_id!r} is not on this machine.{hint}{maker_hint} "
                            f"Local datasets: {', '.join(local_ids) or '(none)'}.")
    elif not Path(spec).expanduser().is_file():
        problems.append(f"{where}: dataset file {spec!r} does not exist (give 'minari:ID', a .hdf5 or an .npz).")
    return SweepDataset(label=_safe_label(str(entry.get("label") or _dataset_label(spec))), spec=spec, set=preset_set)


def _common_for(preset: str, common: dict[str, Any]) -> dict[str, Any]:
    """The sweep-wide ``set:`` as it applies to ``preset``: a slot the preset leaves empty (``critic: null``) and a
    training key only other agent families take (e.g. ``eta`` for a Q-Transformer) are skipped; anything else
    stays, so a typo still fails validation."""
    if not common:
        return {}
    from qtkit.config import DEFAULT_AGENT, SLOTS, load_preset, train_keys
    from qtkit.registry import list_components

    try:
        config = load_preset(preset)
    except ConfigError:
        return dict(common)
    agents = list(list_components("agent"))
    mine = set(train_keys(config.get("agent") or DEFAULT_AGENT))
    others = {k for a in agents for k in train_keys(a)} - mine
    out = {}
    for key, value in common.items():
        if key in SLOTS and config.get(key) is None and key in config:
            continue
        if key in others:
            continue
        if key in SLOTS and isinstance(value, dict) and "type" not in value:
            value = _slot_params_for(preset, key, config.get(key), value)
            if not value:
                continue
        out[key] = value
    return out


def _slot_params_for(preset: str, slot: str, current: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` for the preset's ``slot`` minus those only another component of that kind takes (e.g. a sweep's
    ``critic: {hidden: ...}`` is for twin-mlp critics, not an autoregressive one); unknown-to-all keys stay."""
    from qtkit.config import resolve_slot
    from qtkit.registry import get_component, list_components

    try:
        mine_type = resolve_slot(slot, current, preset=preset)["type"]  # type: ignore[index]
        mine = set(get_component(slot, mine_type).parameters())
        others = {p for name in list_components(slot) for p in get_component(slot, name).parameters()} - mine
    except (ConfigError, KeyError, TypeError):
        return params
    return {k: v for k, v in params.items() if k not in others}


def preset_overrides(preset: str, common: dict[str, Any], dataset_set: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """What a preset is built with: sweep ``set`` < dataset ``set`` (both filtered by :func:`_common_for`) < its own."""
    return deep_merge(_common_for(preset, deep_merge(common, dataset_set)), own)


def _check_method(index: int, entry: Any, common: dict[str, Any], problems: list[str], presets: list[str],
                  datasets: list[SweepDataset]) -> Method | None:
    where = f"methods[{index}]"
    from qtkit.peers import list_peers, resolve_peer_params

    if isinstance(entry, str):  # shorthand: a preset or peer name
        entry = {"peer": entry} if entry in list_peers() else {"preset": entry}
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected {{preset: NAME}} or {{peer: NAME}}, got {entry!r}.")
        return None
    problems.extend(_unknown(where, entry, METHOD_KEYS))
    overrides = _entry_overrides(where, entry, problems, "overrides")
    has_preset, has_peer = entry.get("preset") is not None, entry.get("peer") is not None
    if has_preset == has_peer:
        problems.append(f"{where}: give exactly one of preset: (qtkit, e.g. {presets[0] if presets else 'dt-gpt'}) "
                        f"or peer: ({', '.join(list_peers())}).")
        return None
    if has_preset:
        name = str(entry["preset"])
        if ":" not in name and name not in presets:
            problems.append(f"{where}: unknown preset {name!r}.{did_you_mean(name, presets)} "
                            f"Presets: {', '.join(presets)} (or path.yaml:name).")
        else:
            from qtkit.config import apply_overrides, load_preset, resolve_config

            seen: set[str] = set()
            for ds in datasets or [SweepDataset(label="", spec="")]:
                try:
                    resolve_config(apply_overrides(load_preset(name), preset_overrides(name, common, ds.set, overrides)))
                except ConfigError as exc:
                    on = f" on dataset {ds.label!r}" if ds.set else ""
                    if str(exc) not in seen:
                        problems.append(f"{where} ({name}{on}): {exc}")
                    seen.add(str(exc))
        return Method(label=_safe_label(str(entry.get("label") or name.rsplit(":", 1)[-1])), preset=name,
                      set=dict(overrides))
    name = str(entry["peer"])
    try:
        resolve_peer_params(name, overrides)
    except ConfigError as exc:
        problems.append(f"{where}: {exc}")
    return Method(label=_safe_label(str(entry.get("label") or name)), peer=name, set=dict(overrides))


def parse_sweep(raw: Any, source: str = "<dict>", base_dir: str | Path | None = None,
                check_datasets: bool = True) -> SweepSpec:
    """Validate a sweep mapping; raise :class:`SweepError` listing every problem at once.

    ``check_datasets=False`` skips the "is this dataset on this machine" check (e.g. for a dry listing).
    """
    import qtkit

    problems: list[str] = []
    if not isinstance(raw, dict):
        raise SweepError(source, [f"expected a mapping of {', '.join(TOP_KEYS)}, got {type(raw).__name__}."])
    problems.extend(_unknown("top level", raw, TOP_KEYS))
    for key in ("steps", "seeds", "datasets", "methods"):
        if key not in raw:
            problems.append(f"missing required key {key!r}.")
    steps = raw.get("steps", 1)
    if not _is_int(steps, 1):
        problems.append(f"steps: expected an integer >= 1 (gradient steps per trial), got {steps!r}.")
        steps = 1
    for key, minimum in (("eval_every", 1), ("eval_episodes", 1), ("checkpoint_every", 1)):
        if raw.get(key) is not None and not _is_int(raw[key], minimum):
            problems.append(f"{key}: expected an integer >= {minimum}, got {raw[key]!r}.")
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s, 0) for s in seeds):
        problems.append(f"seeds: expected a non-empty list of integers >= 0, got {seeds!r}.")
        seeds = [0]
    elif len(set(seeds)) != len(seeds):
        problems.append(f"seeds: {seeds} repeats a seed.")
    resources = raw.get("resources") or {}
    cpus, gpus = 1.0, 0.0
    if not isinstance(resources, dict):
        problems.append(f"resources: expected {{cpus_per_trial: N, gpus_per_trial: N}}, got {resources!r}.")
    else:
        problems.extend(_unknown("resources", resources, RESOURCE_KEYS))
        cpus = resources.get("cpus_per_trial", 1)
        gpus = resources.get("gpus_per_trial", 0)
        if (problem := resource_problem("cpus_per_trial", cpus)) is not None:
            problems.append(problem)
            cpus = 1
        if (problem := resource_problem("gpus_per_trial", gpus)) is not None:
            problems.append(problem)
            gpus = 0
    common = raw.get("set") or {}
    if not isinstance(common, dict):
        problems.append(f"set: expected a mapping of overrides for every preset, got {common!r}.")
        common = {}

    from qtkit.data.loading import local_minari_ids

    local_ids = local_minari_ids(missing_ok=True) if check_datasets else []
    datasets: list[SweepDataset] = []
    entries = raw.get("datasets") or []
    if not isinstance(entries, list) or not entries:
        if "datasets" in raw:
            problems.append(f"datasets: expected a non-empty list, got {entries!r}.")
        entries = []
    before = len(problems)
    for i, entry in enumerate(entries):
        ds = _check_dataset(i, entry, problems, local_ids)
        if ds is not None:
            datasets.append(ds)
    if not check_datasets:  # drop the "not on this machine" problems only
        problems[before:] = [p for p in problems[before:] if "is not on this machine" not in p]
    methods: list[Method] = []
    entries = raw.get("methods") or []
    if not isinstance(entries, list) or not entries:
        if "methods" in raw:
            problems.append(f"methods: expected a non-empty list, got {entries!r}.")
        entries = []
    presets = qtkit.list_presets()
    for i, entry in enumerate(entries):
        pattern = entry.get("preset") if isinstance(entry, dict) else None
        if isinstance(pattern, str) and any(c in pattern for c in "*?["):
            matched = qtkit.list_presets(pattern)
            if not matched:
                problems.append(f"methods[{i}]: preset pattern {pattern!r} matches no preset. Presets: {', '.join(presets)}.")
            if "label" in entry:
                problems.append(f"methods[{i}]: a preset pattern ({pattern!r}) expands to several methods; drop label:.")
            expanded = [{**{k: v for k, v in entry.items() if k != "label"}, "preset": name} for name in matched]
        else:
            expanded = [entry]
        for item in expanded:
            method = _check_method(i, item, common, problems, presets, datasets)
            if method is not None:
                methods.append(method)
    for what, labels in (("datasets", [d.label for d in datasets]), ("methods", [m.label for m in methods])):
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            problems.append(f"{what}: label(s) {', '.join(repeated)} used twice; give each entry its own label:.")
    name = str(raw.get("name") or (Path(source).stem if source != "<dict>" else "sweep"))
    if problems:
        raise SweepError(source, problems)
    out = Path(str(raw.get("out") or f"runs/sweeps/{name}")).expanduser()
    if not out.is_absolute() and base_dir is not None:
        out = Path(base_dir) / out
    return SweepSpec(
        name=name, steps=int(steps), seeds=[int(s) for s in seeds], datasets=datasets, methods=methods, out=out,
        eval_every=raw.get("eval_every"), eval_episodes=int(raw.get("eval_episodes") or 10),
        checkpoint_every=raw.get("checkpoint_every"), cpus_per_trial=float(cpus), gpus_per_trial=float(gpus),
        common=copy.deepcopy(common), description=str(raw.get("description") or ""), source=source, raw=copy.deepcopy(raw),
    )


def load_sweep(path: str | Path, check_datasets: bool = True) -> SweepSpec:
    """Read and validate a sweep YAML file (``out:`` is relative to the current directory)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(str(path), [f"file {str(path)!r} does not exist."])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SweepError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_sweep(raw, source=str(path), check_datasets=check_datasets)


def peer_overrides(peer: str, common: dict[str, Any], dataset_set: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """What peer ``peer`` is built with: its own ``set:``, plus the return scale of the dataset.

    Both Decision Transformers must see returns-to-go on the same scale, so ``d3rlpy-dt`` takes
    ``reward_scale = 1 / rtg_scale`` from the dataset's (else the sweep's) ``set: {rtg_scale: ...}`` unless
    its own entry gives ``reward_scale``. Other peer parameters are not shared with the presets.
    """
    out = dict(own)
    rtg_scale = dataset_set.get("rtg_scale", common.get("rtg_scale"))
    if peer == "d3rlpy-dt" and _is_number(rtg_scale, 0) and float(rtg_scale) > 0 and "reward_scale" not in out:
        out["reward_scale"] = 1.0 / float(rtg_scale)
    return out


def expand_trials(spec: SweepSpec) -> list[Trial]:
    """The product datasets × methods × seeds, in that order, each with its run folder."""
    import os

    env = {k: os.environ[k] for k in ("MINARI_DATASETS_PATH", "HF_HUB_OFFLINE") if k in os.environ}
    checkpoint_every = spec.checkpoint_every or spec.eval_every or spec.steps
    return [
        Trial(method=m, dataset=d, seed=s, steps=spec.steps, eval_every=spec.eval_every,
              eval_episodes=spec.eval_episodes, checkpoint_every=checkpoint_every,
              run_dir=str(spec.out / d.label / m.label / f"seed{s}"), cpus=spec.cpus_per_trial,
              gpus=spec.gpus_per_trial, env=env,
              overrides=(preset_overrides(str(m.preset), spec.common, d.set, m.set) if m.kind == "preset"
                         else peer_overrides(str(m.peer), spec.common, d.set, m.set)))
        for d in spec.datasets for m in spec.methods for s in spec.seeds
    ]
