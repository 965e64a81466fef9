"""The reference-settings preset files (qtkit/presets/*.yaml) and the built-in qt-maze2d preset."""

from __future__ import annotations

from pathlib import Path

import pytest

import qtkit
from qtkit.config import read_preset_file

PRESET_DIR = Path(qtkit.__file__).parent / "presets"
FILES = sorted(PRESET_DIR.glob("*.yaml"))


def test_the_domain_files_exist() -> None:
    assert {f.stem for f in FILES} >= {"maze2d", "gym"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_preset_in_a_domain_file_builds(path: Path) -> None:
    for name in read_preset_file(path):
        frames = {"obs_dim": 32 * 32 * 3, "obs_shape": [32, 32, 3]} if "pixels" in name else {"obs_dim": 4}
        agent = qtkit.build(f"{path}:{name}", act_dim=2, **frames)
        assert agent.config["name"] == name
        assert agent.train_config.steps > 0


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_value_is_commented_with_its_reference_setting(path: Path) -> None:
    """Each value line under train: carries a comment saying which reference setting it reproduces."""
    bare = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if line.startswith("    ") and ":" in stripped and not stripped.startswith("#") and "#" not in stripped:
            bare.append(f"{path.name}:{number}: {stripped}")
    assert not bare, "values without a comment:\n" + "\n".join(bare)


def test_qt_maze2d_is_the_reference_maze2d_medium_run() -> None:
    medium = qtkit.build(f"{PRESET_DIR / 'maze2d.yaml'}:qt-maze2d-medium", obs_dim=4, act_dim=2).config
    builtin = qtkit.build("qt-maze2d", obs_dim=4, act_dim=2).config
    for slot in ("backbone", "policy", "critic", "backup", "sampler", "train"):
        assert medium[slot] == builtin[slot], slot
    train = builtin["train"]
    assert builtin["backup"]["type"] == "window"
    assert (train["eta"], train["grad_clip"], train["critic_grad_clip"], train["rtg_scale"]) == (5.0, 9.0, "grad_clip", 10.0)
    assert (train["optimizer"], train["decay_all_parameters"], train["weight_decay"]) == ("adam", True, 1e-4)
    assert (train["lr_schedule_steps"], train["lr_update_every"], train["steps"]) == (100_000, 1000, 51_000)
    assert builtin["sampler"]["targets"] == [300.0, 200.0, 150.0, 100.0, 50.0, 20.0]


def test_show_prints_a_domain_preset_resolved(capsys: pytest.CaptureFixture[str]) -> None:
    from typer.testing import CliRunner

    from qtkit.cli import app

    result = CliRunner().invoke(app, ["show", f"{PRESET_DIR / 'maze2d.yaml'}:qt-maze2d-umaze"])
    assert result.exit_code == 0, result.output
    assert "grad_clip: 20.0" in result.output and "lr_update_every: 1000" in result.output
