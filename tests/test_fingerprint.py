"""Numbers do not move: the weights of every built-in preset after a few gradient steps are fingerprinted.

This exists for the training-loop refactor of issue [2/5] ("One training loop for every agent ..."): moving
``fit``, the training steps, optimisers and schedules around must leave the same seeds giving bit-identical
weights. The fingerprints in ``tests/fingerprints.json`` were recorded after the loss-convention changes of
issue [1/5] (already in, tests/test_loss_conventions.py: L_DT and the next-state loss as means over dimensions,
the next-state term only inside the window, the critic's clip defaulting to grad_clip), so those changes are
included: they are the only intended numeric changes, and the refactor must not move anything else.

Each preset is built with the tiny sizes of tests/test_agent_smoke.py (``tiny(preset)``) on a fixed random-policy
Pendulum dataset, seed 0, one thread, CPU, and fit for ``STEPS`` gradient steps without evaluation. The
fingerprint is a SHA-256 over all weights (``agent.state_dict()``, keys sorted; each key, dtype tag, shape and
the tensor's contiguous float32 (floating) or int64 (integer, bool) bytes) plus, for a readable diff, the sum
of each module's weights (keys grouped by their first two dotted parts) rounded to 6 significant digits.

A mismatch means the numbers moved. If that is intended (a deliberate numeric change, or a new torch version),
say so in the change and re-record: ``QTKIT_UPDATE_FINGERPRINTS=1 python -m pytest -q tests/test_fingerprint.py``
(rewrites the JSON atomically instead of comparing).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

import qtkit
from qtkit.data import TrajectoryDataset
from tests.conftest import pendulum_dataset, pixel_dataset, tiny

PATH = Path(__file__).with_name("fingerprints.json")
PRESETS = qtkit.list_presets()
STEPS = 3
SEED = 0
UPDATE = os.environ.get("QTKIT_UPDATE_FINGERPRINTS") == "1"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> TrajectoryDataset:
    return pendulum_dataset(seed=0)


def tensor_bytes(value: torch.Tensor) -> tuple[str, bytes]:
    """``(dtype tag, bytes)``: floating tensors as contiguous float32, integer and bool tensors as int64."""
    value = value.detach().cpu()
    if value.is_floating_point():
        return "f32", value.to(torch.float32).contiguous().numpy().tobytes()
    return "i64", value.to(torch.int64).contiguous().numpy().tobytes()


def fingerprint(weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """SHA-256 of all weights (keys sorted) and each module's weight sum to 6 significant digits."""
    digest = hashlib.sha256()
    sums: dict[str, float] = defaultdict(float)
    for key in sorted(weights):
        tag, raw = tensor_bytes(weights[key])
        digest.update(f"{key}|{tag}|{tuple(weights[key].shape)}|".encode())
        digest.update(raw)
        sums[".".join(key.split(".")[:2])] += float(weights[key].detach().double().sum())
    return {"sha256": digest.hexdigest(), "module_sums": {k: float(f"{v:.6g}") for k, v in sorted(sums.items())}}


def train(preset: str, data: TrajectoryDataset) -> dict[str, torch.Tensor]:
    """The preset's weights after STEPS gradient steps (tiny sizes, seed 0, no evaluation, no logging)."""
    torch.manual_seed(SEED)
    if preset.endswith("-pixels"):  # pixel presets: a fixed random-policy dataset of a tiny pixel task
        data = pixel_dataset(seed=0)
    agent = qtkit.build(preset, dataset=data, seed=SEED, device="cpu", **tiny(preset))
    result = agent.fit(data, steps=STEPS, progress=False)
    assert result["steps"] == STEPS and result["final"] is None
    return agent.state_dict()


def read() -> dict[str, Any]:
    return json.loads(PATH.read_text()) if PATH.is_file() else {}


def write_atomically(recorded: dict[str, Any]) -> None:
    """Write the JSON to a temporary file next to it, then rename it over the old one."""
    handle, temporary = tempfile.mkstemp(dir=PATH.parent, prefix=".fingerprints-", suffix=".json")
    try:
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would make the committed file private
        with os.fdopen(handle, "w") as f:
            json.dump(recorded, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(temporary, PATH)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@pytest.mark.parametrize("preset", PRESETS)
def test_weights_after_a_few_steps_do_not_move(preset: str, data: TrajectoryDataset) -> None:
    got = fingerprint(train(preset, data))
    if UPDATE:
        recorded = read()
        presets = recorded.setdefault("presets", {})
        presets[preset] = got
        for stale in set(presets) - set(PRESETS):
            del presets[stale]
        recorded["recorded_with"] = {"torch": torch.__version__, "steps": STEPS, "seed": SEED}
        write_atomically(recorded)
        return
    recorded = read()
    assert preset in recorded.get("presets", {}), (
        f"no fingerprint for preset {preset!r} in {PATH.name}: record it with QTKIT_UPDATE_FINGERPRINTS=1"
    )
    want = recorded["presets"][preset]
    if got["sha256"] != want["sha256"]:
        moved = {k: (want["module_sums"].get(k), v) for k, v in got["module_sums"].items()
                 if want["module_sums"].get(k) != v}
        missing = sorted(set(want["module_sums"]) - set(got["module_sums"]))
        pytest.fail(
            f"preset {preset!r}: the weights after {STEPS} steps moved (recorded with torch "
            f"{recorded.get('recorded_with', {}).get('torch')}, running {torch.__version__}).\n"
            f"module sums (recorded, now) that differ: {moved or 'none at 6 digits'}; modules gone: {missing or 'none'}.\n"
            "If the change is intended, re-record with QTKIT_UPDATE_FINGERPRINTS=1 and say why."
        )


def test_every_preset_has_a_fingerprint() -> None:
    """No preset without a fingerprint and none for a preset that no longer exists."""
    assert sorted(read().get("presets", {})) == sorted(PRESETS)


def test_fingerprint_sees_every_bit() -> None:
    """One ulp in one weight, or a renamed key, changes the hash; the sums are what a reader compares."""
    weights = {"policy.w": torch.linspace(-1, 1, 7), "critic.net.b": torch.arange(3)}
    base = fingerprint(weights)
    nudged = dict(weights, **{"policy.w": torch.nextafter(weights["policy.w"], torch.tensor(2.0))})
    renamed = {"policy.v": weights["policy.w"], "critic.net.b": weights["critic.net.b"]}
    assert fingerprint(nudged)["sha256"] != base["sha256"]
    assert fingerprint(renamed)["sha256"] != base["sha256"]
    assert fingerprint(dict(reversed(weights.items()))) == base
    assert base["module_sums"] == {"critic.net": 3.0, "policy.w": pytest.approx(0.0, abs=1e-6)}
