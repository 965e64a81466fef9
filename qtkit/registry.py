"""The component registry (timm-like): ``register``, ``list_components``, ``get_component``.

A *component* is a class or factory registered under a *kind* (``backbone``, ``policy``,
``critic``, ``backup``, ``sampler``, ``agent``) and a name. Its constructor's signature is its
parameter schema: keyword parameters with defaults are what a preset may set, and their annotations
declare their ranges (:mod:`qtkit.params`), checked whenever a registered class is constructed; the
*context* parameters below are filled in by the builder and may not be set in a preset.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from qtkit.errors import RegistryError, UnknownNameError, did_you_mean
from qtkit.params import check_call

KINDS: list[str] = ["encoder", "backbone", "policy", "critic", "backup", "sampler", "agent"]

#: Constructor parameters the builder supplies; a preset never sets them directly.
#: ``obs_dim``/``act_dim``/``action_low``/``action_high`` come from the shapes, ``gamma`` and
#: ``rtg_scale`` from the training section, ``backbone`` is the built backbone component.
CONTEXT_PARAMS: frozenset[str] = frozenset(
    {"obs_shape", "obs_dim", "proprio_dim", "act_dim", "action_low", "action_high", "gamma", "rtg_scale", "backbone"}
)

T = TypeVar("T")


@dataclass(frozen=True)
class ComponentEntry:
    """One registered component: its kind, name, constructor and parameter schema."""

    kind: str
    name: str
    target: Callable[..., Any]
    module: str

    @property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.target)

    def parameters(self) -> dict[str, inspect.Parameter]:
        """User-settable parameters (everything but context params, *args and **kwargs)."""
        return {
            name: p
            for name, p in self.signature.parameters.items()
            if name not in CONTEXT_PARAMS
            and name != "self"
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        }

    def defaults(self) -> dict[str, Any]:
        """Default values of the user-settable parameters (required ones are left out)."""
        return {
            name: p.default
            for name, p in self.parameters().items()
            if p.default is not inspect.Parameter.empty
        }

    def required(self) -> list[str]:
        return [n for n, p in self.parameters().items() if p.default is inspect.Parameter.empty]

    def context(self) -> list[str]:
        """Context parameters this component asks the builder for."""
        return [n for n in self.signature.parameters if n in CONTEXT_PARAMS]

    def doc(self) -> str:
        text = inspect.getdoc(self.target) or ""
        return text.strip().splitlines()[0] if text.strip() else ""


_REGISTRY: dict[str, dict[str, ComponentEntry]] = {kind: {} for kind in KINDS}


def register_kind(kind: str) -> None:
    """Add a new component kind (idempotent)."""
    if kind not in _REGISTRY:
        _REGISTRY[kind] = {}
        KINDS.append(kind)


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise UnknownNameError(
            f"Unknown component kind {kind!r}. Known kinds: {', '.join(KINDS)}."
            + did_you_mean(kind, KINDS)
        )


def _component_label(component: Any) -> str:
    """``"critic 'twin-mlp'"``: the kind and registered name of the (most derived) class of ``component``."""
    cls = type(component)
    return f"{cls.registered_kind} {cls.registered_name!r}"


def register(kind: str, name: str) -> Callable[[T], T]:
    """Decorator registering a class or factory as component ``name`` of ``kind``.

    >>> @register("sampler", "my-sampler")
    ... class MySampler: ...

    Registering a name that is already taken raises :class:`RegistryError`.
    """
    _check_kind(kind)

    def decorator(target: T) -> T:
        if not callable(target):
            raise RegistryError(f"Cannot register {target!r} as {kind} {name!r}: it is not callable.")
        taken = _REGISTRY[kind].get(name)
        if taken is not None:
            raise RegistryError(
                f"The {kind} name {name!r} is already registered (by {taken.module}."
                f"{getattr(taken.target, '__qualname__', taken.target)}). Pick another name, or "
                f"call qtkit.registry.unregister({kind!r}, {name!r}) first if you mean to replace it."
            )
        init = target.__dict__.get("__init__") if inspect.isclass(target) else None
        if init is not None and not getattr(init, "checks_ranges", False):
            # declared ranges (qtkit.params) are checked however the component is constructed
            checked = check_call(init, where=_component_label)
            checked.checks_ranges = True  # type: ignore[attr-defined]
            target.__init__ = checked  # type: ignore[misc]
        _REGISTRY[kind][name] = ComponentEntry(
            kind=kind, name=name, target=target, module=getattr(target, "__module__", "?")
        )
        target.registered_name = name  # type: ignore[attr-defined]
        target.registered_kind = kind  # type: ignore[attr-defined]
        return target

    return decorator


def unregister(kind: str, name: str) -> None:
    """Remove a registration (mainly for tests and interactive sessions)."""
    _check_kind(kind)
    _REGISTRY[kind].pop(name, None)


def get_component(kind: str, name: str, *, where: str = "") -> ComponentEntry:
    """Look up a component; unknown names raise with close-match suggestions."""
    _ensure_builtins()
    _check_kind(kind)
    try:
        return _REGISTRY[kind][name]
    except (KeyError, TypeError):
        known = sorted(_REGISTRY[kind])
        prefix = f"{where}: " if where else ""
        raise UnknownNameError(
            f"{prefix}unknown {kind} {name!r}. Registered {kind}s: {', '.join(known) or '(none)'}."
            + did_you_mean(str(name), known)
        ) from None


def list_components(kind: str | None = None, filter: str = "") -> dict[str, list[str]] | list[str]:
    """Registered component names: a sorted list for one kind, or ``{kind: [names]}`` for all.

    ``filter`` is an fnmatch pattern (``"qt-*"``), as in timm's ``list_models``.
    """
    _ensure_builtins()

    def names(k: str) -> list[str]:
        return sorted(n for n in _REGISTRY[k] if not filter or fnmatch.fnmatch(n, filter))

    if kind is not None:
        _check_kind(kind)
        return names(kind)
    return {k: names(k) for k in KINDS}


_BUILTINS_LOADED = False


def _ensure_builtins() -> None:
    """Import qtkit's own component packages so their ``@register`` decorators have run."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import qtkit.components  # noqa: F401  (registers every built-in component)
