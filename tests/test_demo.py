"""``make demo``: its model is the maze2d study's, and a tiny run writes the results people look at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qtkit import demo

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "suites" / "maze2d.yaml"


def test_demo_trains_the_studys_model_on_the_studys_data() -> None:
    """The README says the demo is the study's seed-0 trial cut at its first evaluation: keep them in step."""
    suite = yaml.safe_load(SUITE.read_text())
    common = suite["set"]
    for key, value in demo.DEMO_OVERRIDES.items():
        if key == "rtg_scale":
            assert suite["datasets"][0]["set"]["rtg_scale"] == value
        else:
            assert common[key] == value, key
    methods = {m["preset"]: m.get("set", {}) for m in suite["methods"] if "preset" in m}
    for preset in demo.PRESETS:
        assert methods[preset] == demo.DEMO_PRESET_OVERRIDES[preset], preset
    assert suite["datasets"][0]["make"] == {"name": demo.DEMO_DATASET, "steps": demo.DEMO_DATA_STEPS, "seed": 0}
    assert demo.DEMO_STEPS % suite["eval_every"] == 0 and suite["steps"] >= demo.DEMO_STEPS


def test_tiny_demo_writes_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "DEMO_DATA_STEPS", 2000)
    results = demo.run_demo(out=tmp_path, steps=4, eval_episodes=1, parallel=False)
    assert set(results) == set(demo.PRESETS)
    text = (tmp_path / "results.md").read_text()
    assert "D4RL maze2d semantics" in text and "| dt-gpt |" in text and "| qt-maze2d |" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["qt-maze2d"]["final"]["step"] == 4
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = demo._progress_line(tmp_path, 4, 0.0, {})
    assert "dt-gpt done" in line and "qt-maze2d done" in line
