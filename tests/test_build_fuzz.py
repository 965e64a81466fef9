"""Random wrong values for every settable parameter: ``qtkit.build`` raises a ConfigError naming the parameter,
never another exception (a TypeError deep in a constructor, a torch error, a hang on a huge allocation).

The values are drawn from many types (text, numbers incl. NaN and huge ones, bools, None, lists, mappings) and
kept only when they are wrong for the parameter's declared type or range (:func:`qtkit.config.coerce`,
:func:`qtkit.params.range_problem`), so every example must be refused before anything is built.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given

import qtkit
from qtkit.config import _hints, load_preset
from qtkit.errors import ConfigError
from qtkit.params import range_problem
from qtkit.registry import get_component

PRESETS = ["dt-gpt", "qt-gpt-nstep", "qt-gpt-arq", "qtransformer", "qt-maze2d", "qt-gpt-pixels", "qtransformer-pixels"]


def shapes(preset: str) -> dict[str, Any]:
    """Shapes to build ``preset`` with: 16x16 RGB frames for the pixel presets, 3-vectors otherwise."""
    if preset.endswith("-pixels"):
        return {"obs_dim": 16 * 16 * 3, "obs_shape": [16, 16, 3], "act_dim": 2}
    return {"obs_dim": 3, "act_dim": 2}


def _settable() -> list[tuple[str, tuple[str, ...], Any]]:
    """``(preset, key path, annotation)`` for every slot parameter and train field of the presets."""
    out = []
    for preset in PRESETS:
        config = qtkit.build(preset, **shapes(preset)).config
        for slot in ("encoder", "backbone", "policy", "critic", "backup", "sampler"):
            if config[slot] is None:
                continue
            entry = get_component(slot, config[slot]["type"])
            hints = _hints(entry.target)
            for name in entry.parameters():
                annotation = hints.get(name, Any)
                if annotation is not Any and typing.get_origin(annotation) is not dict and "dict" not in str(annotation):
                    out.append((preset, (slot, name), annotation))
        cls = get_component("agent", config["agent"]).target.TrainConfig
        hints = typing.get_type_hints(cls, include_extras=True)
        out += [(preset, ("train", f.name), hints[f.name]) for f in dataclasses.fields(cls)]
    return out


SETTABLE = _settable()

ANY_VALUE = st.one_of(
    st.text(max_size=8), st.booleans(), st.none(),
    st.integers(min_value=-(10**12), max_value=10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _fits(value: Any, annotation: Any) -> bool:
    """An independent reading of the schema (not qtkit's ``coerce``): does ``value`` have the declared type and,
    for ``Annotated`` numbers and names, lie in the declared range?"""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin is typing.Annotated:
        if not _fits(value, args[0]):
            return False
        number = float(value) if args[0] is float and isinstance(value, str) else value
        return range_problem(number, annotation) is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args and not isinstance(value, bool)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return False
            return True
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, list | tuple) and all(_fits(v, args[0] if args else Any) for v in value)
    raise AssertionError(f"the fuzz test does not know the annotation {annotation!r}")


def wrong_for(annotation: Any, value: Any) -> bool:
    return not _fits(value, annotation)


def _override(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    section, name = path
    return {"train": {name: value}} if section == "train" else {section: {name: value}}


def test_the_fuzzed_parameters_cover_slots_and_train() -> None:
    sections = {path[0] for _, path, _ in SETTABLE}
    assert sections == {"encoder", "backbone", "policy", "critic", "backup", "sampler", "train"}
    assert len(SETTABLE) > 150


@given(data=st.data())
def test_wrong_values_raise_a_config_error_naming_the_parameter(data: st.DataObject) -> None:
    preset, path, annotation = data.draw(st.sampled_from(SETTABLE), label="parameter")
    value = data.draw(ANY_VALUE.filter(lambda v: wrong_for(annotation, v)), label="value")
    with pytest.raises(ConfigError) as info:
        qtkit.build(preset, **shapes(preset), **_override(path, value))
    assert repr(path[1]) in str(info.value)


@pytest.mark.parametrize(("path", "value"), [(("train", "batch_size"), 0), (("train", "gamma"), float("nan")),
                                              (("critic", "hidden"), [64, "x"]), (("backbone", "width"), True),
                                              (("train", "optimizer"), 3)])
def test_examples(path: tuple[str, ...], value: Any) -> None:
    assert wrong_for(dict(((p, n), a) for _, (p, n), a in SETTABLE)[path], value)
    with pytest.raises(ConfigError, match=repr(path[1])):
        qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=2, **_override(path, value))


def test_presets_exist() -> None:
    for preset in PRESETS:
        load_preset(preset)
