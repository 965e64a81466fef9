"""The contract every registered component of every kind passes (d3rlpy-style shared test).

Kind-specific contracts (shapes, forward/backward, save/load) live in ``test_contract_<kind>.py``.
"""

from __future__ import annotations

import inspect

import pytest
import yaml

import qtkit
from qtkit.config import resolve_slot
from qtkit.errors import UnknownParameterError
from qtkit.registry import get_component
from tests.conftest import build_component

SLOT_KINDS = ["backbone", "policy", "critic", "backup", "sampler"]
ALL = [(kind, name) for kind in SLOT_KINDS for name in qtkit.list_components(kind)]


def test_every_kind_has_components() -> None:
    listing = qtkit.list_components()
    assert set(SLOT_KINDS) <= set(listing)


@pytest.mark.parametrize(("kind", "name"), ALL, ids=[f"{k}:{n}" for k, n in ALL])
class TestComponentContract:
    def test_builds_from_defaults(self, kind: str, name: str) -> None:
        """Built from its name alone, a component is an instance of exactly the registered class (a built-in
        one from its kind's folder), the resolved config holds every constructor default, and whatever the
        object keeps under a parameter's name is that default (or the context value it was handed)."""
        import torch

        from tests.conftest import CONTEXT

        entry = get_component(kind, name)
        component = build_component(kind, name)
        assert inspect.isclass(entry.target) and type(component) is entry.target
        folder = {"backbone": "backbones", "policy": "policies", "critic": "critics", "backup": "backups",
                  "sampler": "samplers"}[kind]
        if entry.module.startswith("qtkit."):
            assert type(component).__module__.startswith(f"qtkit.{folder}."), type(component).__module__
        if kind in ("backbone", "policy", "critic"):
            assert isinstance(component, torch.nn.Module)
        resolved = resolve_slot(kind, name, preset="p")
        assert resolved == {"type": name, **entry.defaults()}
        stored = {p: getattr(component, p) for p in entry.parameters() if hasattr(component, p)}
        for param, value in stored.items():
            assert value == resolved[param], f"{kind} {name!r} keeps {param}={value!r}, its default is {resolved[param]!r}"
        for param in entry.context():
            value = getattr(component, param, None)
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, torch.tensor(CONTEXT[param], dtype=value.dtype), msg=param)
            elif isinstance(value, int | float) and param in CONTEXT:
                assert value == CONTEXT[param], param

    def test_every_parameter_has_a_default_and_docstring(self, kind: str, name: str) -> None:
        entry = get_component(kind, name)
        assert entry.required() == [], f"{kind} {name} has required params {entry.required()}"
        assert entry.doc(), f"{kind} {name} has no docstring"

    def test_rejects_unknown_params(self, kind: str, name: str) -> None:
        with pytest.raises(UnknownParameterError) as info:
            resolve_slot(kind, {"type": name, "definitely_not_a_param": 1}, preset="p")
        message = str(info.value)
        assert "definitely_not_a_param" in message and "'p'" in message and kind in message
        for param in get_component(kind, name).parameters():
            assert param in message  # the accepted parameters are listed

    def test_config_round_trips(self, kind: str, name: str) -> None:
        resolved = resolve_slot(kind, name, preset="p")
        assert set(resolved) == {"type", *get_component(kind, name).parameters()}
        again = resolve_slot(kind, yaml.safe_load(yaml.safe_dump(resolved)), preset="p")
        assert again == resolved

    def test_context_params_are_not_settable(self, kind: str, name: str) -> None:
        entry = get_component(kind, name)
        for param in entry.context():
            with pytest.raises(UnknownParameterError, match=param):
                resolve_slot(kind, {"type": name, param: 1}, preset="p")

    def test_signature_is_keyword_friendly(self, kind: str, name: str) -> None:
        for p in get_component(kind, name).signature.parameters.values():
            assert p.kind is not inspect.Parameter.POSITIONAL_ONLY


def test_soft_update_interpolates_parameters_and_copies_buffers() -> None:
    import torch
    from torch import nn

    from qtkit.critics.base import soft_update

    online, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.fill_(1.0), target.weight.fill_(0.0)
        online.running_mean.fill_(5.0)
    soft_update(target, online, 0.0)
    assert float(target.weight.detach().sum()) == 0.0 and float(target.running_mean[0]) == 5.0
    soft_update(target, online, 0.25)
    torch.testing.assert_close(target.weight, torch.full((3,), 0.25))
    soft_update(target, online, 1.0)
    torch.testing.assert_close(target.weight, online.weight)
