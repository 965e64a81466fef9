"""Presets, inheritance, overrides, round trips and the errors of qtkit.build (issue 1)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import qtkit
from qtkit.config import load_preset, resolve_config
from qtkit.errors import (
    ConfigError,
    InheritanceCycleError,
    MissingShapeError,
    ParameterTypeError,
    PresetFileError,
    RegistryError,
    UnknownNameError,
    UnknownParameterError,
)
from qtkit.registry import unregister

SMALL = {"backbone": {"width": 32, "depth": 1, "heads": 2}}
REQUIRED_PRESETS = ["dt-gpt", "qt-gpt-1step", "qt-gpt-nstep", "qt-gpt-window", "qt-gpt-mc"]


def architecture(agent) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in agent.state_dict().items()}


def test_list_presets_and_filter() -> None:
    names = qtkit.list_presets()
    assert set(REQUIRED_PRESETS) <= set(names)
    assert qtkit.list_presets("qt-gpt-*") == sorted(n for n in names if n.startswith("qt-gpt-"))
    assert qtkit.list_presets("nothing-*") == []


@pytest.mark.parametrize("name", qtkit.list_presets())
def test_every_preset_resolves_and_builds(name: str) -> None:
    frames = {"obs_dim": 32 * 32 * 3, "obs_shape": [32, 32, 3]} if name.endswith("-pixels") else {"obs_dim": 4}
    agent = qtkit.build(name, act_dim=2, **frames, **SMALL)
    assert agent.config["name"] == name
    for slot in ("policy", "backup", "sampler"):
        assert agent.config[slot]["type"] in qtkit.list_components(slot)
    trainable = {slot: n for slot, n in agent.num_parameters().items() if n > 0}
    assert trainable, "every preset trains something"
    if agent.config["agent"] == "qtransformer":  # the policy decodes the critic: all weights are the critic's
        assert agent.policy.critic is agent.critic and "critic" in trainable
    else:
        assert "policy" in trainable


def test_base_inheritance_deep_merges() -> None:
    base, child = load_preset("qt-gpt-nstep"), load_preset("qt-gpt-1step")
    assert child["backup"] == {"type": "one-step"}  # a new type replaces the slot whole
    assert child["critic"] == base["critic"]
    assert child["train"]["eta"] == base["train"]["eta"]
    assert child["backbone"] == load_preset("dt-gpt")["backbone"]  # two levels up


def test_resolved_config_has_every_default() -> None:
    config = resolve_config(load_preset("qt-gpt-nstep"))
    assert config["backup"] == {"type": "n-step", "n": 5}
    assert config["critic"]["depth"] == 3 and config["critic"]["layer_norm"] is False
    assert config["train"]["ema_decay"] == 0.995 and config["train"]["tau"] == 0.005


def test_overrides_swap_and_change_params() -> None:
    agent = qtkit.build("qt-gpt-nstep", obs_dim=11, act_dim=3, backup="one-step",
                        critic={"hidden": 64}, eta=2.0, **SMALL)
    assert agent.config["backup"] == {"type": "one-step"}
    assert agent.config["critic"]["hidden"] == 64 and agent.config["critic"]["type"] == "twin-mlp"
    assert agent.config["train"]["eta"] == 2.0
    agent = qtkit.build("qt-gpt-nstep", obs_dim=11, act_dim=3, backup={"type": "n-step", "n": 3}, **SMALL)
    assert agent.config["backup"] == {"type": "n-step", "n": 3}
    agent = qtkit.build("qt-gpt-nstep", obs_dim=11, act_dim=3, backup={"n": 7}, train={"lr": 1e-3}, **SMALL)
    assert agent.config["backup"]["n"] == 7 and agent.config["train"]["lr"] == 1e-3


def test_config_round_trips_to_an_equal_agent() -> None:
    agent = qtkit.build("qt-gpt-nstep", obs_dim=11, act_dim=3, action_low=-2.0, action_high=2.0, **SMALL)
    again = qtkit.build(agent.config)
    assert again.config == agent.config
    assert architecture(again) == architecture(agent)
    through_yaml = qtkit.build(yaml.safe_load(yaml.safe_dump(agent.config)))
    assert through_yaml.config == agent.config
    torch.testing.assert_close(again.policy.action_high, torch.full((3,), 2.0))


def test_user_preset_file_inherits_from_builtin(tmp_path: Path) -> None:
    path = tmp_path / "my_presets.yaml"
    path.write_text(textwrap.dedent("""
        my-base:
          base: qt-gpt-nstep
          backbone: {width: 32, depth: 1, heads: 2}
        my-variant:
          base: my-base
          backup: {type: n-step, n: 2}
          train: {eta: 0.5}
    """))
    agent = qtkit.build(f"{path}:my-variant", obs_dim=11, act_dim=3)
    assert agent.config["name"] == "my-variant"
    assert agent.config["backup"] == {"type": "n-step", "n": 2}
    assert agent.config["train"]["eta"] == 0.5 and agent.config["backbone"]["width"] == 32
    assert qtkit.build(agent.config).config == agent.config


def test_register_decorator_and_taken_names() -> None:
    @qtkit.register("sampler", "test-only-sampler")
    class MySampler:
        """A sampler for this test."""

        def __init__(self, spread: float = 1.0) -> None:
            self.spread = spread

    try:
        assert "test-only-sampler" in qtkit.list_components("sampler")
        with pytest.raises(RegistryError, match="already registered"):
            qtkit.register("sampler", "test-only-sampler")(MySampler)
        with pytest.raises(UnknownNameError, match="Unknown component kind"):
            qtkit.register("samplr", "x")
    finally:
        unregister("sampler", "test-only-sampler")


# ----------------------------------------------------------------------------- errors
def test_unknown_preset_suggests_close_match() -> None:
    with pytest.raises(UnknownNameError) as info:
        qtkit.build("qt-gpt-nstpe", obs_dim=3, act_dim=1)
    assert "qt-gpt-nstpe" in str(info.value) and "Did you mean 'qt-gpt-nstep'" in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_unknown_component_names_slot_and_suggests() -> None:
    with pytest.raises(UnknownNameError) as info:
        qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=1, backup="one-stp")
    message = str(info.value)
    assert "'qt-gpt-nstep'" in message and "'backup'" in message and "Did you mean 'one-step'" in message


def test_unknown_parameter_lists_accepted() -> None:
    with pytest.raises(UnknownParameterError) as info:
        qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=1, critic={"hiden": 64})
    message = str(info.value)
    assert "'hiden'" in message and "slot 'critic'" in message and "hidden" in message and "ensemble" in message
    with pytest.raises(UnknownParameterError, match="'etta'.*Did you mean 'eta'"):
        qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=1, etta=1.0)
    with pytest.raises(UnknownParameterError, match="section 'train'"):
        qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=1, train={"learning_rate": 1.0})


def test_wrong_type_names_key_and_expected_type() -> None:
    with pytest.raises(ParameterTypeError) as info:
        qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=1, backup={"n": "five"})
    assert "'n'" in str(info.value) and "int" in str(info.value) and "slot 'backup'" in str(info.value)
    with pytest.raises(ParameterTypeError, match="'batch_size'"):
        qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=1, batch_size=2.5)
    # YAML's 3e-4 is a string; floats accept it, as users expect
    assert qtkit.build("dt-gpt", obs_dim=3, act_dim=1, lr="3e-4", **SMALL).config["train"]["lr"] == 3e-4


def test_context_params_cannot_be_set_in_slots() -> None:
    with pytest.raises(UnknownParameterError, match="train.gamma"):
        qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=1, backup={"gamma": 0.5})


def test_missing_shapes() -> None:
    with pytest.raises(MissingShapeError, match="obs_dim"):
        qtkit.build("qt-gpt-nstep", act_dim=3)
    with pytest.raises(MissingShapeError, match="act_dim"):
        qtkit.build("qt-gpt-nstep", obs_dim=3)
    with pytest.raises(ConfigError, match="action_low has 2 entries but act_dim is 3"):
        qtkit.build("qt-gpt-nstep", obs_dim=3, act_dim=3, action_low=[-1, -1])


def test_shapes_from_env() -> None:
    agent = qtkit.build("dt-gpt", env="Pendulum-v1", **SMALL)
    assert agent.shapes == {"obs_dim": 3, "obs_shape": [3], "act_dim": 1, "action_low": [-2.0], "action_high": [2.0]}


def test_unbounded_actions_rejected_by_tanh_policy() -> None:
    with pytest.raises(ConfigError, match="bounded action space"):
        qtkit.build("dt-gpt", obs_dim=3, act_dim=1, action_low=float("-inf"), action_high=float("inf"))


def test_base_cycle(tmp_path: Path) -> None:
    path = tmp_path / "cycle.yaml"
    path.write_text("a:\n  base: b\nb:\n  base: c\nc:\n  base: a\n")
    with pytest.raises(InheritanceCycleError, match="a -> b -> c -> a"):
        qtkit.build(f"{path}:a", obs_dim=3, act_dim=1)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("good:\n  base: dt-gpt\nbad:\n  backup: {type: n-step, n: 3\n  train: {}\n")
    with pytest.raises(PresetFileError) as info:
        qtkit.build(f"{path}:good", obs_dim=3, act_dim=1)
    assert str(path) in str(info.value) and "line" in str(info.value)


def test_unknown_top_level_key() -> None:
    with pytest.raises(UnknownParameterError, match="'critc'.*Did you mean 'critic'"):
        resolve_config({"name": "x", "critc": None, "policy": "gpt", "sampler": "single-rtg", "backup": "one-step",
                        "backbone": "gpt2"})


def test_import_is_light() -> None:
    code = (
        "import sys, time; t=time.perf_counter(); import torch; a=time.perf_counter()-t; "
        "t=time.perf_counter(); import qtkit; qtkit.list_components(); b=time.perf_counter()-t; "
        "heavy=[m for m in ('x_transformers','minari','gymnasium','timm','ray','d3rlpy','h5py') if m in sys.modules]; "
        "print(a, b, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    torch_s, qtkit_s, heavy = float(out[0]), float(out[1]), " ".join(out[2:])
    assert heavy == "[]", f"import qtkit pulled in heavy modules: {heavy}"
    assert qtkit_s < 1.0, f"import qtkit took {qtkit_s:.2f}s on top of torch ({torch_s:.2f}s)"


def test_base_across_files_relative_to_the_naming_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "common.yaml").write_text("wide:\n  base: qt-gpt-nstep\n  train: {eta: 3.0}\n")
    (tmp_path / "mine.yaml").write_text("child:\n  base: shared/common.yaml:wide\n  backup: {type: n-step, n: 2}\n")
    monkeypatch.chdir(shared)  # a relative FILE resolves against the naming file's folder, not the cwd
    preset = load_preset(f"{tmp_path / 'mine.yaml'}:child")
    assert preset["train"]["eta"] == 3.0 and preset["backup"]["n"] == 2
    assert preset["critic"] == load_preset("qt-gpt-nstep")["critic"]  # the built-in base of the other file
    assert preset["name"] == "child"
    # a cycle across two files is still found
    (tmp_path / "a.yaml").write_text("x:\n  base: b.yaml:y\n")
    (tmp_path / "b.yaml").write_text("y:\n  base: a.yaml:x\n")
    with pytest.raises(InheritanceCycleError, match=r"a\.yaml:x -> .*b\.yaml:y -> .*a\.yaml:x"):
        load_preset(f"{tmp_path / 'a.yaml'}:x")
    (tmp_path / "c.yaml").write_text("z:\n  base: nowhere.yaml:z\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_preset(f"{tmp_path / 'c.yaml'}:z")
