"""Parameter ranges, declared once where a parameter is declared.

A component's constructor signature and an agent's ``TrainConfig`` fields are qtkit's parameter schema
(:mod:`qtkit.config`). A numeric parameter states its range in its annotation with ``typing.Annotated``
and the ``annotated_types`` markers that pydantic also reads::

    def __init__(self, n: Annotated[int, Ge(1)] = 5, dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1)

or with the shorthands below (``PositiveInt``, ``UnitInterval``...). :func:`range_problem` checks a value
against such an annotation (through ``X | None`` unions and ``list[...]`` items); ``qtkit.build``,
``qtkit show`` and ``qtkit sweep --check`` (all through :func:`qtkit.config.validate_params`), a
component constructed directly (the registry wraps registered classes' ``__init__``) and a ``TrainConfig``
constructed directly all call it, so no constructor repeats the check.

A parameter that may be any real number is annotated ``Annotated[float, Finite]``: that is a range too
(``.nan`` and ``.inf`` are rejected). :func:`undeclared_numbers` lists numeric parameters without a range;
the contract tests require it to be empty for every registered component and agent.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import annotated_types as at
from annotated_types import Ge, Gt, Interval, Le, Lt

__all__ = [
    "DropoutRate",
    "Finite",
    "FiniteFloat",
    "Ge",
    "Gt",
    "Interval",
    "Le",
    "Lt",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "UnitInterval",
    "check_call",
    "check_dataclass",
    "describe",
    "range_problem",
    "undeclared_numbers",
]


@dataclasses.dataclass(frozen=True)
class _Finite:
    """Marker: any finite real number (rejects NaN and +-inf)."""

    def __repr__(self) -> str:
        return "Finite"


Finite = _Finite()


@dataclasses.dataclass(frozen=True)
class OneOf:
    """Marker: a string from a set of names; ``choices`` is a tuple or a zero-argument callable returning the
    names (computed on first use, e.g. timm's optimiser list)."""

    choices: Any

    def names(self) -> tuple[str, ...]:
        return tuple(self.choices() if callable(self.choices) else self.choices)


@dataclasses.dataclass(frozen=True)
class Matches:
    """Marker: a string matching the regular expression ``pattern`` in full (``example`` is shown in errors)."""

    pattern: str
    example: str

PositiveInt = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
FiniteFloat = Annotated[float, Finite]
UnitInterval = Annotated[float, Interval(ge=0, le=1)]
DropoutRate = Annotated[float, Interval(ge=0, lt=1)]

_BOUND_TYPES = (at.Ge, at.Gt, at.Le, at.Lt, at.Interval, _Finite)
_NAME_TYPES = (OneOf, Matches)


def _name_problem(value: str, marker: Any) -> str | None:
    import re

    if isinstance(marker, OneOf):
        names = marker.names()
        if value not in names:
            from qtkit.errors import did_you_mean

            shown = ", ".join(names) if len(names) <= 12 else ", ".join(names[:12]) + f", ... ({len(names)} in all)"
            hint = did_you_mean(value, names).strip()
            return f"must be one of {shown}" + (f" ({hint[0].lower()}{hint[1:]})" if hint else "")
    elif isinstance(marker, Matches) and re.fullmatch(marker.pattern, value) is None:
        return f"must match the pattern {marker.pattern} (e.g. {marker.example!r})"
    return None


def _bounds(metadata: Sequence[Any]) -> list[Any]:
    return [m for m in metadata if isinstance(m, _BOUND_TYPES)]


def _bound_text(bound: Any) -> str:
    if isinstance(bound, _Finite):
        return "a finite number"
    if isinstance(bound, at.Interval):
        lo = f"[{bound.ge}" if bound.ge is not None else (f"({bound.gt}" if bound.gt is not None else "(-inf")
        hi = f"{bound.le}]" if bound.le is not None else (f"{bound.lt})" if bound.lt is not None else "inf)")
        return f"in {lo}, {hi}"
    for cls, op, attr in ((at.Ge, ">=", "ge"), (at.Gt, ">", "gt"), (at.Le, "<=", "le"), (at.Lt, "<", "lt")):
        if isinstance(bound, cls):
            return f"{op} {getattr(bound, attr)}"
    return repr(bound)


def _satisfies(value: float, bound: Any) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    if isinstance(bound, _Finite):
        return math.isfinite(value)
    if isinstance(bound, at.Interval):
        return all(
            _satisfies(value, b)
            for b, v in ((at.Ge(bound.ge), bound.ge), (at.Gt(bound.gt), bound.gt), (at.Le(bound.le), bound.le),
                         (at.Lt(bound.lt), bound.lt))
            if v is not None
        )
    if isinstance(bound, at.Ge):
        return value >= bound.ge
    if isinstance(bound, at.Gt):
        return value > bound.gt
    if isinstance(bound, at.Le):
        return value <= bound.le
    if isinstance(bound, at.Lt):
        return value < bound.lt
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _member_fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` has the (bare) type of one union member; ranges are not looked at here."""
    from qtkit.config import coerce

    return coerce(value, annotation)[0]


def range_problem(value: Any, annotation: Any) -> str | None:
    """What is wrong with ``value``'s range under ``annotation`` (``"must be >= 1"``), or None if nothing.

    ``value`` has already passed the type check. Unions check the first member the value's type fits;
    lists and tuples check every item (the message names the item's index).
    """
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = typing.get_args(annotation)
        if _is_number(value):
            for bound in _bounds(metadata):
                if not _satisfies(value, bound):
                    return f"must be {_bound_text(bound)}"
        if isinstance(value, str):
            for marker in (m for m in metadata if isinstance(m, _NAME_TYPES)):
                problem = _name_problem(value, marker)
                if problem is not None:
                    return problem
        return range_problem(value, inner)
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            if _member_fits(value, member):
                return range_problem(value, member)
        return None
    if origin in (list, tuple, Sequence) and isinstance(value, list | tuple):
        args = typing.get_args(annotation)
        if origin is tuple and args and args[-1] is not Ellipsis:
            pairs = list(zip(value, args, strict=False))
        else:
            pairs = [(v, args[0] if args else Any) for v in value]
        for i, (item, item_annotation) in enumerate(pairs):
            problem = range_problem(item, item_annotation)
            if problem is not None:
                return f"item {i} ({item!r}) {problem}"
    return None


def describe(annotation: Any) -> str:
    """A short human reading of an annotation: ``int >= 1``, ``float in [0, 1) | None``, ``list[int >= 1]``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        inner, *metadata = args
        bounds = _bounds(metadata)
        texts = [_bound_text(b) for b in bounds if not isinstance(b, _Finite)]
        finite = ["finite"] if any(isinstance(b, _Finite) for b in bounds) else []
        for marker in (m for m in metadata if isinstance(m, _NAME_TYPES)):
            if isinstance(marker, Matches):
                texts.append(f"matching {marker.pattern}")
            else:
                names = marker.names()
                texts.append(f"in {{{', '.join(names)}}}" if len(names) <= 8 else f"(one of {len(names)} names)")
        return " ".join([*finite, describe(inner), *texts])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, tuple, Sequence):
        return f"{getattr(origin, '__name__', 'list')}[{', '.join(describe(a) for a in args if a is not Ellipsis)}]"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _numeric_leaves(annotation: Any, declared: bool = False) -> list[bool]:
    """For every int/float leaf of ``annotation``: whether a range covers it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _numeric_leaves(args[0], declared or bool(_bounds(args[1:])))
    if origin in (typing.Union, types.UnionType, list, tuple, Sequence):
        return [leaf for a in args if a is not Ellipsis for leaf in _numeric_leaves(a, declared)]
    if annotation in (int, float):
        return [declared]
    return []


def undeclared_numbers(hints: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The parameters in ``names`` whose annotation holds an int or float without a declared range."""
    return [name for name in names if not all(_numeric_leaves(hints.get(name, Any)))]


def check_params(values: Mapping[str, Any], hints: Mapping[str, Any], *, where: str) -> None:
    """Raise :class:`qtkit.errors.ParameterRangeError` for the first value outside its declared range."""
    from qtkit.errors import ParameterRangeError

    for name, value in values.items():
        annotation = hints.get(name)
        if annotation is None:
            continue
        problem = range_problem(value, annotation)
        if problem is not None:
            raise ParameterRangeError(
                f"{where}: parameter {name!r} {problem}, got {value!r}. Its declared range: {name}: "
                f"{describe(annotation)}."
            )


def check_dataclass(instance: Any, *, where: str) -> None:
    """Check every field of a dataclass instance (a ``TrainConfig``) against its declared range."""
    hints = typing.get_type_hints(type(instance), include_extras=True)
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}
    check_params(values, hints, where=where)


def check_call(init: Callable[..., Any], *, where: Callable[[Any], str]) -> Callable[..., Any]:
    """Wrap a constructor so the arguments it is called with are checked against their declared ranges.

    The wrapper keeps the signature and annotations (``functools.wraps``), so the schema read from it is
    unchanged. ``where(self)`` names the component in the error.
    """
    signature = inspect.signature(init)
    hints_cache: dict[str, Any] = {}

    @functools.wraps(init)
    def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        if not hints_cache:
            hints_cache.update(typing.get_type_hints(init, include_extras=True) or {"": None})
        bound = signature.bind(self, *args, **kwargs)
        values = {k: v for k, v in bound.arguments.items() if k != "self"}
        check_params(values, hints_cache, where=where(self))
        init(self, *args, **kwargs)

    return checked_init
