"""Parameter ranges are declared once (``typing.Annotated`` in the signature / ``TrainConfig`` field,
:mod:`qtkit.params`) and enforced by every path that accepts a value: ``qtkit.build`` (through
``resolve_slot`` / ``resolve_train``), ``qtkit show``, ``qtkit sweep --check``, a component constructed
directly, and a ``TrainConfig`` constructed directly.

Every out-of-range value below is derived from the declaration itself, so a parameter whose range is
dropped, or no longer checked on one of those paths, fails here (``test_a_dropped_range_is_caught`` shows
the coverage check failing on a deliberately unannotated component); the ranges the issue names are pinned
in ``test_the_issue_examples``. Measured: removing the check from ``validate_params`` fails 99 tests, the
registry's constructor wrapper 50, ``TrainConfig.__post_init__`` 46; a bare ``ensemble: int`` fails 1 and
``ema_decay <= 1`` fails 1.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Annotated, Any

import annotated_types as at
import pytest
import yaml

import qtkit
from qtkit.build import instantiate
from qtkit.config import _hints, resolve_slot, resolve_train
from qtkit.errors import ParameterRangeError
from qtkit.params import Ge, Matches, OneOf, PositiveInt, check_params, range_problem, undeclared_numbers
from qtkit.registry import KINDS, get_component, register, unregister
from tests.conftest import CONTEXT, SMALL_BACKBONE

COMPONENT_KINDS = [k for k in KINDS if k != "agent"]
COMPONENTS = [(kind, name) for kind in COMPONENT_KINDS for name in qtkit.list_components(kind)]
AGENTS = qtkit.list_components("agent")


def _train_hints(agent: str) -> tuple[dict[str, Any], dict[str, Any]]:
    cls = get_component("agent", agent).target.TrainConfig
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(cls)}
    return typing.get_type_hints(cls, include_extras=True), defaults


def _edges(annotation: Any) -> list[tuple[Any, Any]]:
    """``(outside, inside)`` value pairs for the first bounded numeric leaf of ``annotation``: a value just
    outside each declared bound and the boundary value itself (or a value just inside an open bound)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        inner, *metadata = args
        is_int = inner is int
        step = 1 if is_int else 1e-3
        pairs: list[tuple[Any, Any]] = []
        for bound in metadata:
            bounds = [bound]
            if isinstance(bound, at.Interval):
                bounds = [cls(v) for cls, v in ((at.Ge, bound.ge), (at.Gt, bound.gt), (at.Le, bound.le),
                                                (at.Lt, bound.lt)) if v is not None]
            for b in bounds:
                if isinstance(b, at.Ge):
                    pairs.append((b.ge - step, b.ge))
                elif isinstance(b, at.Gt):
                    pairs.append((b.gt, b.gt + step))
                elif isinstance(b, at.Le):
                    pairs.append((b.le + step, b.le))
                elif isinstance(b, at.Lt):
                    pairs.append((b.lt, b.lt - step))
                elif repr(b) == "Finite":
                    pairs += [(math.nan, 0.0), (math.inf, 1.0e9)]
                elif isinstance(b, OneOf):
                    pairs.append(("not-a-" + b.names()[0], b.names()[0]))
                elif isinstance(b, Matches):
                    pairs.append(("not a match", b.example))
        if inner is str:
            return pairs
        if not is_int:
            pairs = [(float(a), float(b)) for a, b in pairs]
        return pairs
    if origin in (typing.Union, types.UnionType):
        for member in args:
            pairs = _edges(member)
            if pairs:
                return pairs
        return []
    if origin in (list, tuple):
        return [([outside], [inside]) for outside, inside in _edges(args[0])]
    return []


def _bounded(hints: dict[str, Any], names: list[str]) -> list[tuple[str, Any, Any]]:
    return [(name, outside, inside) for name in names for outside, inside in _edges(hints[name])]


# ----------------------------------------------------------------------------- every parameter has a range
@pytest.mark.parametrize(("kind", "name"), COMPONENTS, ids=[f"{k}:{n}" for k, n in COMPONENTS])
def test_every_numeric_component_parameter_declares_its_range(kind: str, name: str) -> None:
    entry = get_component(kind, name)
    hints = _hints(entry.target)
    assert undeclared_numbers(hints, list(entry.parameters())) == []


@pytest.mark.parametrize("agent", AGENTS)
def test_every_numeric_train_parameter_declares_its_range(agent: str) -> None:
    hints, defaults = _train_hints(agent)
    assert undeclared_numbers(hints, list(defaults)) == []
    check_params(defaults, hints, where="defaults")  # the defaults lie in their ranges


@pytest.mark.parametrize(("kind", "name"), COMPONENTS, ids=[f"{k}:{n}" for k, n in COMPONENTS])
def test_component_defaults_lie_in_their_ranges(kind: str, name: str) -> None:
    entry = get_component(kind, name)
    check_params(entry.defaults(), _hints(entry.target), where=f"{kind} {name}")


def test_a_dropped_range_is_caught() -> None:
    """The coverage check is not vacuous: a component with a bare ``int`` parameter is reported."""

    @register("sampler", "test-unbounded")
    class Unbounded:
        def __init__(self, candidates: int = 5, fine: PositiveInt = 3, flag: bool = True, label: str = "x") -> None:
            self.candidates = candidates

    try:
        entry = get_component("sampler", "test-unbounded")
        assert undeclared_numbers(_hints(entry.target), list(entry.parameters())) == ["candidates"]
        assert undeclared_numbers({"x": int | list[float]}, ["x"]) == ["x"]
        assert undeclared_numbers({"x": PositiveInt | list[int]}, ["x"]) == ["x"]  # a bare list item counts
    finally:
        unregister("sampler", "test-unbounded")


# ----------------------------------------------------------------------------- every path enforces them
def _component_cases() -> list[tuple[str, str, str, Any, Any]]:
    cases = []
    for kind, name in COMPONENTS:
        entry = get_component(kind, name)
        for param, outside, inside in _bounded(_hints(entry.target), list(entry.parameters())):
            cases.append((kind, name, param, outside, inside))
    return cases


COMPONENT_CASES = _component_cases()


def test_the_cases_cover_every_kind() -> None:
    parameterless = {k for k in COMPONENT_KINDS if not any(get_component(k, n).parameters() for n in qtkit.list_components(k))}
    assert {kind for kind, *_ in COMPONENT_CASES} == set(COMPONENT_KINDS) - parameterless
    assert len(COMPONENT_CASES) >= 40


@pytest.mark.parametrize(("kind", "name", "param", "outside", "inside"), COMPONENT_CASES,
                         ids=[f"{k}:{n}.{p}={o!r}" for k, n, p, o, _ in COMPONENT_CASES])
def test_component_ranges_are_enforced_by_resolve_and_construction(
    kind: str, name: str, param: str, outside: Any, inside: Any
) -> None:
    with pytest.raises(ParameterRangeError, match=rf"'{param}'.*must be"):
        resolve_slot(kind, {"type": name, param: outside}, preset="p")
    assert resolve_slot(kind, {"type": name, param: inside}, preset="p")[param] == inside  # the edge is legal
    context = dict(CONTEXT)
    if "backbone" in get_component(kind, name).context():
        context["backbone"] = instantiate("backbone", resolve_slot("backbone", SMALL_BACKBONE, preset="t"), CONTEXT)
    spec = {**resolve_slot(kind, name, preset="p"), param: outside}  # skips resolve: the constructor's check
    with pytest.raises(ParameterRangeError, match=rf"{kind} '{name}': parameter '{param}'"):
        instantiate(kind, spec, context)


def _train_cases() -> list[tuple[str, str, Any, Any]]:
    cases = []
    for agent in AGENTS:
        hints, defaults = _train_hints(agent)
        cases += [(agent, param, outside, inside) for param, outside, inside in _bounded(hints, list(defaults))]
    return cases


TRAIN_CASES = _train_cases()


@pytest.mark.parametrize(("agent", "param", "outside", "inside"), TRAIN_CASES,
                         ids=[f"{a}.{p}={o!r}" for a, p, o, _ in TRAIN_CASES])
def test_train_ranges_are_enforced_by_resolve_and_construction(agent: str, param: str, outside: Any, inside: Any) -> None:
    entry = get_component("agent", agent)
    with pytest.raises(ParameterRangeError, match=rf"section 'train': parameter '{param}'"):
        resolve_train({param: outside}, entry, preset="p")
    assert resolve_train({param: inside}, entry, preset="p")[param] == inside
    with pytest.raises(ParameterRangeError, match=rf"'{param}'"):
        entry.target.TrainConfig(**{param: outside})


def test_the_issue_examples() -> None:
    """The ranges the issue names: batch_size >= 1, 0 < gamma <= 1, 0 <= ema_decay < 1."""
    for overrides in ({"batch_size": 0}, {"gamma": 0.0}, {"gamma": 1.01}, {"ema_decay": 1.0}, {"ema_decay": -0.1}):
        with pytest.raises(ParameterRangeError):
            qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=2, **overrides)
    qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=2, gamma=1.0, ema_decay=0.0)


def test_names_are_checked_against_their_declared_choices() -> None:
    """optimizer, scheduler, device and activations are names from a declared set, checked like ranges."""
    for overrides in ({"optimizer": "adamx"}, {"scheduler": "cosinus"}, {"device": "gpu"},
                      {"backbone": {"activation": "relux"}}, {"critic": {"activation": "mush"}}):
        with pytest.raises(ParameterRangeError, match="must (be one of|match the pattern)"):
            qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=2, **overrides)
    qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=2, optimizer="adam", scheduler="constant", device="cuda:1")


def test_range_problem_reads_unions_and_lists() -> None:
    assert range_problem(0, PositiveInt | list[PositiveInt]) == "must be >= 1"
    assert range_problem([3, 0], PositiveInt | list[PositiveInt]) == "item 1 (0) must be >= 1"
    assert range_problem(None, PositiveInt | None) is None
    assert range_problem("auto", Annotated[float, Ge(0)] | typing.Literal["auto"]) is None
    assert range_problem(True, PositiveInt) is None  # the type check (not the range) rejects bools


# ----------------------------------------------------------------------------- the CLI paths
def test_show_rejects_an_out_of_range_value_with_exit_2(cli_runner: Any) -> None:
    from qtkit.cli import app

    result = cli_runner.invoke(app, ["show", "dt-gpt", "--set", "batch_size=0"])
    assert result.exit_code == 2, result.output
    assert "'batch_size' must be >= 1, got 0" in result.output and "Traceback" not in result.output


def test_sweep_check_lists_an_out_of_range_value(cli_runner: Any, tmp_path: Any) -> None:
    from qtkit.cli import app

    spec = {"name": "t", "steps": 10, "seeds": [0], "datasets": [{"make": {"name": "pointmaze-umaze", "steps": 100}}],
            "methods": [{"preset": "qt-gpt-nstep", "set": {"critic": {"hidden": [64, 0]}}}]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli_runner.invoke(app, ["sweep", str(path), "--check"])
    assert result.exit_code == 2, result.output
    assert "'hidden' item 1 (0) must be >= 1" in result.output and "Traceback" not in result.output
