"""Bad inputs to `qtkit train`, `qtkit eval` and `qtkit show` through the real command line (a subprocess each):
exit 2, one message naming the wrong thing (and the fix), no traceback, and no half-made run folder.

The cases run concurrently (a few subprocesses at a time) in one module fixture; each test checks one result.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch

from tests.conftest import assert_clean_failure, pendulum_dataset, run_qtkit

TINY_SETS = ["--set", "backbone.width=16", "--set", "backbone.depth=1", "--set", "backbone.heads=1",
             "--set", "backbone.mlp_dim=32", "--set", "batch_size=8", "--set", "context=4"]
TINY_OVERRIDES = {"backbone": {"width": 16, "depth": 1, "heads": 1, "mlp_dim": 32}, "batch_size": 8, "context": 4}
NO_GPU_DEVICE = "cuda" if not torch.cuda.is_available() else "cuda:99"


@dataclass
class Case:
    """``args`` (``{ws}`` is replaced by the workspace), the strings the message must contain, and the run folder
    that must not be created (None: the case's --out exists on purpose; its files must be left as they were)."""

    args: list[str]
    names: list[str]
    absent: str | None = None
    result: Any = field(default=None, repr=False)


def train(out: str, *extra: str, dataset: str = "{ws}/pendulum.npz") -> list[str]:
    return ["train", "--preset", "dt-gpt", "--dataset", dataset, "--out", out, "--steps", "4", *TINY_SETS, *extra]


CASES: dict[str, Case] = {
    # the schedule options
    "steps-0": Case(train("{ws}/new", "--steps", "0"), ["--steps", ">= 1", "0"], "{ws}/new"),
    "steps-negative": Case(train("{ws}/new", "--steps", "-5"), ["--steps", "-5"], "{ws}/new"),
    "eval-every-0": Case(train("{ws}/new", "--eval-every", "0"), ["--eval-every", ">= 1"], "{ws}/new"),
    "eval-episodes-0": Case(train("{ws}/new", "--eval-episodes", "0"), ["--eval-episodes", ">= 1"], "{ws}/new"),
    "checkpoint-every-0": Case(train("{ws}/new", "--checkpoint-every", "0"), ["--checkpoint-every", ">= 1"],
                               "{ws}/new"),
    # the config: ranges from build, the context against the data, the device
    "batch-size-0": Case(train("{ws}/new", "--set", "batch_size=0"), ["batch_size", ">= 1"], "{ws}/new"),
    "ema-decay-2": Case(["train", "--preset", "qt-gpt-nstep", "--dataset", "{ws}/pendulum.npz", "--out", "{ws}/new",
                         "--set", "ema_decay=2"], ["ema_decay", "2"], "{ws}/new"),
    "context-5000": Case(train("{ws}/new", "--set", "context=5000"),
                         ["context=5000", "longest episode", "12 steps", "--set context=12"], "{ws}/new"),
    "device-without-gpu": Case(train("{ws}/new", "--set", f"device={NO_GPU_DEVICE}"),
                               [NO_GPU_DEVICE, "--set device=cpu"], "{ws}/new"),
    # the dataset and its evaluation env
    "dataset-missing": Case(train("{ws}/new", dataset="{ws}/nope.npz"), ["nope.npz"], "{ws}/new"),
    "dataset-without-env": Case(train("{ws}/new", dataset="{ws}/noenv.npz"), ["records no environment", "--no-eval"],
                                "{ws}/new"),
    # the run folder
    "out-is-a-file": Case(train("{ws}/afile"), ["afile", "is a file", "--out"]),
    "out-under-a-file": Case(train("{ws}/afile/run"), ["afile", "is a file"], None),
    "out-holds-a-run": Case(train("{ws}/finished"), ["finished", "already holds a run", "--resume", "--overwrite"]),
    "resume-nothing": Case(train("{ws}/new", "--resume"), ["--resume", "nothing to continue", "new"], "{ws}/new"),
    "resume-and-overwrite": Case(train("{ws}/finished", "--resume", "--overwrite"), ["--resume", "--overwrite"]),
    "resume-other-config": Case(train("{ws}/finished", "--resume", "--set", "batch_size=16", "--seed", "3"),
                                ["train.batch_size: 8 in the checkpoint, 16 now", "train.seed: 0 in the checkpoint, 3 now"]),
    "resume-fewer-steps": Case(train("{ws}/finished", "--resume", "--steps", "2"), ["--steps 2", "step 4"]),
    # eval: damaged files, a missing folder, an unknown env, bad counts
    "eval-truncated-weights": Case(["eval", "{ws}/truncated", "-n", "1"], ["weights.safetensors", "truncated"]),
    "eval-broken-config": Case(["eval", "{ws}/brokencfg", "-n", "1"], ["config.yaml", "damaged"]),
    "eval-missing-folder": Case(["eval", "{ws}/no-such-run"], ["no-such-run", "does not exist"]),
    "eval-no-checkpoint": Case(["eval", "{ws}/afolder"], ["afolder", "holds no checkpoint"]),
    "eval-unknown-env": Case(["eval", "{ws}/finished", "--env", "NoSuchEnv-v9", "-n", "1"],
                             ["NoSuchEnv-v9", "--env Pendulum-v1"]),
    "eval-zero-episodes": Case(["eval", "{ws}/finished", "--episodes", "0"], ["--episodes", ">= 1"]),
    # show
    "show-unknown-preset": Case(["show", "dt-gtp"], ["dt-gtp", "dt-gpt"]),
    "show-bad-range": Case(["show", "dt-gpt", "--set", "lr=-1"], ["lr", "> 0"]),
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    import qtkit

    ws = tmp_path_factory.mktemp("bad-inputs")
    data = pendulum_dataset(episodes=4, length=12)
    spec = gym.make("Pendulum-v1", max_episode_steps=10).spec.to_json()
    type(data).from_episodes(list(data), action_space=data.action_space,
                             metadata={**data.metadata, "eval_env_spec": spec}).to_npz(ws / "pendulum.npz")
    no_env = {k: v for k, v in data.metadata.items() if k != "env_id"}
    type(data).from_episodes(list(data), action_space=data.action_space, metadata=no_env).to_npz(ws / "noenv.npz")
    (ws / "afile").write_text("not a folder\n")
    (ws / "afolder").mkdir()
    agent = qtkit.build("dt-gpt", dataset=data, seed=0, **TINY_OVERRIDES)
    agent.fit(data, 4, log_dir=ws / "finished", eval_env=lambda: gym.make("Pendulum-v1", max_episode_steps=10),
              eval_episodes=1, progress=False)
    for name in ("truncated", "brokencfg"):
        shutil.copytree(ws / "finished", ws / name)
    weights = ws / "truncated" / "checkpoint" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (ws / "brokencfg" / "checkpoint" / "config.yaml").write_text("train: [unclosed\n")
    before = _snapshot(ws)

    def run(case: Case) -> None:
        case.result = run_qtkit(*[a.replace("{ws}", str(ws)) for a in case.args])

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(run, CASES.values()))
    return ws, before


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_cleanly(name: str, results: tuple[Path, dict[str, bytes]]) -> None:
    ws, before = results
    case = CASES[name]
    names = [n.replace("{ws}", str(ws)) for n in case.names]
    assert_clean_failure(case.result, *names)
    if case.absent is not None:
        assert not Path(case.absent.replace("{ws}", str(ws))).exists(), "a half-made run folder was left"
    assert _snapshot(ws) == before, "a failing command changed files in the workspace"


def test_read_only_parent_is_named_with_the_cause(results: tuple[Path, dict[str, bytes]]) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    ws, _ = results
    locked = ws / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = run_qtkit(*train(str(locked / "run"), "--no-eval"))
        first = assert_clean_failure(result, str(locked / "run"), "permission denied")
        assert first.startswith("error: ")
        assert not (locked / "run").exists()
    finally:
        locked.chmod(0o755)
