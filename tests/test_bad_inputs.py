"""Every bad input of issue [3/5] through the real command line (``python -m qtkit`` in a subprocess): exit 2,
one message naming the wrong thing (and the fix), no traceback, and nothing half-made where the output would have
gone (no run folder, no dataset, no staging folder, no changed file).

Two parametrised tables: ``RUN_CASES`` (``train``, ``eval``, ``show``: run concurrently in one module fixture) and
``DATA_CASES`` (``data``, ``sweep``, ``report``: each in a fresh work folder); then the unit tests of the loader
checks, the staging-folder clean-up, the SAC target level and the lazy ``qtkit.<submodule>`` attributes.

``QTKIT_BAD_INPUT_TABLE=FILE pytest tests/test_bad_inputs.py`` also appends one Markdown row per case to FILE:
case, command, exit code, first line printed (the table of the issue's closing note).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from qtkit.data import TrajectoryDataset, load_dataset
from qtkit.errors import DataError
from tests.conftest import TINY_SETS, assert_clean_failure, pendulum_dataset, run_qtkit

N = 12
NO_GPU_DEVICE = "cuda" if not torch.cuda.is_available() else "cuda:99"
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
TINY_OVERRIDES = {"backbone": {"width": 16, "depth": 1, "heads": 1, "mlp_dim": 32}, "batch_size": 8, "context": 4}


def record(label: str, args: list[str], result: Any, work: Path) -> None:
    """Append ``| label | qtkit ARGS | exit | first line |`` to $QTKIT_BAD_INPUT_TABLE (when set)."""
    table = os.environ.get("QTKIT_BAD_INPUT_TABLE")
    if not table:
        return
    lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    first = (lines[0] if lines else "").replace(str(work), "W").replace("|", "\\|")
    command = " ".join(["qtkit", *args]).replace(" ".join(TINY_SETS), "$TINY")
    command = command.replace(str(work), "W").replace("{ws}", "W").replace("{W}", "W")
    with open(table, "a", encoding="utf-8") as handle:
        handle.write(f"| {label} | `{command}` | {result.returncode} | {first[:160]} |\n")


# ============================================================ train, eval, show
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


RUN_CASES: dict[str, Case] = {
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
    "show-batch-size-0": Case(["show", "dt-gpt", "--set", "batch_size=0"], ["batch_size", ">= 1"]),
    "eta-negative": Case(["train", "--preset", "qt-gpt-nstep", "--dataset", "{ws}/pendulum.npz", "--out", "{ws}/new",
                          "--set", "eta=-1"], ["eta", ">= 0"], "{ws}/new"),
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
        list(pool.map(run, RUN_CASES.values()))
    return ws, before


@pytest.mark.parametrize("name", list(RUN_CASES))
def test_bad_input_fails_cleanly(name: str, results: tuple[Path, dict[str, bytes]]) -> None:
    ws, before = results
    case = RUN_CASES[name]
    names = [n.replace("{ws}", str(ws)) for n in case.names]
    assert_clean_failure(case.result, *names)
    record(name, case.args, case.result, ws)
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


# ============================================================ data, sweep, report
def _npz(path: Path, **changes: Any) -> Path:
    arrays = {"observations": np.zeros((N, 3), np.float32), "actions": np.zeros((N, 2), np.float32),
              "rewards": np.ones(N, np.float32), "terminals": np.zeros(N, bool),
              "timeouts": np.r_[np.zeros(N - 1, bool), True]}
    arrays.update(changes)
    np.savez(path, **arrays)
    return path


def _tree(folder: Path) -> set[str]:
    """Every path under ``folder`` (hidden ones included), relative."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def _sweep_file(folder: Path, npz: Path) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "steps": 2, "eval_episodes": 1, "seeds": [0],
                                    "datasets": [str(npz)], "methods": ["dt-gpt"], "out": str(folder / "sw")}))
    return path


def _run_folder(folder: Path) -> Path:
    run = folder / "runs" / "ds" / "m" / "seed0"
    run.mkdir(parents=True)
    entry = {"step": 2, "mean_return": 1.0, "std_return": 0.0}
    (run / "summary.json").write_text(f'{{"final": {entry}, "best": {entry}}}'.replace("'", '"'))
    return folder / "runs"


# (label, args with {W} for the work folder, names the message must hold, the output path that must not appear)
DATA_CASES = [
    ("npz-strings", ["data", "inspect", "{W}/strings.npz"], ["strings.npz", "'observations'", "not numbers"], None),
    ("npz-terminal-0.5", ["data", "inspect", "{W}/half.npz"], ["half.npz", "'terminals'", "row 3", "0.5"], None),
    ("npz-timeout-1.5", ["data", "inspect", "{W}/over.npz"], ["over.npz", "'timeouts'", "row 5", "1.5"], None),
    ("train-on-bad-npz", ["train", "-p", "dt-gpt", "-d", "{W}/half.npz", "--steps", "1", "--no-eval",
                          "-o", "{W}/run"], ["half.npz", "'terminals'"], "run"),
    ("make-opt-type", ["data", "make", "pointmaze-umaze-sparse", "--steps", "2000", "--opt", "episode_length=abc",
                       "-o", "{W}/made"], ["episode_length", "expected int"], "made"),
    ("make-opt-unknown", ["data", "make", "pointmaze-umaze-sparse", "--opt", "episode_lenght=5", "-o", "{W}/made"],
     ["episode_lenght", "Did you mean 'episode_length'"], "made"),
    ("make-allow-below-target-no-target", ["data", "make", "pointmaze-umaze-sparse", "--allow-below-target",
                                           "-o", "{W}/made"], ["--allow-below-target", "SAC makers"], "made"),
    ("make-out-is-file", ["data", "make", "pointmaze-umaze-sparse", "--steps", "2000", "-o", "{W}/afile"],
     ["afile", "it is a file"], None),
    ("make-out-under-file", ["data", "make", "pointmaze-umaze-sparse", "--steps", "2000", "-o", "{W}/afile/sub"],
     ["afile/sub", "is a file, not a folder"], None),
    ("make-out-read-only", ["data", "make", "pointmaze-umaze-sparse", "--steps", "2000", "-o", "{W}/ro/sub"],
     ["ro/sub", "permission denied"], "ro/sub"),
    ("sweep-out-is-file", ["sweep", "{W}/sweep.yaml", "--serial", "--out", "{W}/afile"], ["afile", "it is a file"],
     None),
    ("sweep-out-under-file", ["sweep", "{W}/sweep.yaml", "--serial", "--out", "{W}/afile/sw"],
     ["afile/sw", "is a file, not a folder"], None),
    ("sweep-out-read-only", ["sweep", "{W}/sweep.yaml", "--serial", "--out", "{W}/ro"], ["ro", "permission denied"],
     None),
    ("sweep-check-batch-size-0", ["sweep", "{W}/badset.yaml", "--check"], ["batch_size", ">= 1"], "sw"),
    ("report-no-runs", ["report", "{W}/empty"], ["no run folders with summary.json", "empty"], None),
    ("report-out-is-file", ["report", "{W}/runs", "--out", "{W}/afile"], ["afile", "it is a file"], None),
    ("report-out-under-file", ["report", "{W}/runs", "--out", "{W}/afile/rep"], ["afile/rep", "is a file"], None),
    ("report-out-read-only", ["report", "{W}/runs", "--out", "{W}/ro"], ["ro", "permission denied"], None),
    ("inspect-unknown-id", ["data", "inspect", "qtkit/nope-v0"], ["qtkit/nope-v0", "qtkit data make"], None),
]


@pytest.mark.parametrize(("label", "args", "names", "absent"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_input_is_one_clean_error(label: str, args: list[str], names: list[str], absent: str | None,
                                      tmp_path: Path) -> None:
    if "read-only" in label and ROOT:
        pytest.skip("root writes into read-only folders")
    work = tmp_path / "w"
    work.mkdir()
    _npz(work / "strings.npz", observations=np.array([["a", "b", "c"]] * N))
    _npz(work / "half.npz", terminals=np.r_[np.zeros(3), 0.5, np.zeros(N - 4)])
    _npz(work / "over.npz", timeouts=np.r_[np.zeros(5), 1.5, np.zeros(N - 7), 1.0])
    (work / "afile").write_text("not a folder")
    (work / "empty").mkdir()
    _sweep_file(work, _npz(work / "good.npz"))
    spec = yaml.safe_load((work / "sweep.yaml").read_text())
    (work / "badset.yaml").write_text(yaml.safe_dump({**spec, "set": {"batch_size": 0}}))
    _run_folder(work)
    (work / "ro").mkdir()
    os.chmod(work / "ro", 0o555)
    minari_root = Path(os.environ["MINARI_DATASETS_PATH"])
    before, minari_before = _tree(work), _tree(minari_root)
    try:
        result = run_qtkit(*[a.replace("{W}", str(work)) for a in args])
    finally:
        os.chmod(work / "ro", 0o755)
    first = assert_clean_failure(result, *names)
    record(label, args, result, work)
    assert first.startswith("error: "), first
    assert _tree(work) == before, f"{label} left {_tree(work) - before}"  # nothing half-made, no temp folders
    if absent is not None:
        assert not (work / absent).exists()
    assert not {p for p in _tree(minari_root) - minari_before if ".qtkit-make-" in p or ".tmp-" in p}


# ----------------------------------------------------------------------------- SAC below its target level
def test_sac_below_target_is_refused_then_kept_with_the_flag_and_marked(tmp_path: Path) -> None:
    pytest.importorskip("stable_baselines3", reason="stable-baselines3 (the qtkit[makers] extra) is not installed")
    out = tmp_path / "datasets"
    args = ["data", "make", "hopper-medium-replay", "--steps", "300", "--opt", "learning_starts=100", "--opt",
            "batch_size=32", "--opt", "net_arch=[16,16]", "--opt", "ref_episodes=1", "--no-progress", "-o", str(out)]
    refused = run_qtkit(*args)
    assert_clean_failure(refused, "did not reach the medium level", "--allow-below-target", "nothing was written")
    assert not (out / "qtkit" / "hopper-medium-replay-v0").exists()
    kept = run_qtkit(*args, "--allow-below-target")  # the cached SAC run: no retraining
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "qtkit/hopper-medium-replay-v0" in kept.stdout and "WARNING" in kept.stderr and "BELOW TARGET" in kept.stderr
    env = {"MINARI_DATASETS_PATH": str(out)}
    listed = run_qtkit("data", "list", "-f", "*hopper*", env=env)
    assert listed.returncode == 0 and "BELOW TARGET" in listed.stdout, listed.stdout
    shown = run_qtkit("data", "inspect", "hopper-medium-replay", env=env)
    assert shown.returncode == 0 and "target level: BELOW TARGET" in shown.stdout, shown.stdout


# ----------------------------------------------------------------------------- no litter
def test_the_next_make_removes_staging_folders_of_dead_makes(tmp_path: Path) -> None:
    import socket

    from qtkit.data.makers.writer import OWNER_FILE, STALE_AFTER_S, is_stale

    out = tmp_path / "datasets"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    killed = out / f".qtkit-make-{dead_pid}-abcd"  # what kill -9 during a write leaves
    (killed / "qtkit").mkdir(parents=True)
    (killed / OWNER_FILE).write_text(f"{socket.gethostname()} {dead_pid}\n")
    alive = out / f".qtkit-make-{os.getpid()}-live"  # a make running now (this process): kept
    alive.mkdir()
    (alive / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    other_host = out / f".qtkit-make-{dead_pid}-host"  # another machine's make on a shared disk: kept while young
    other_host.mkdir()
    (other_host / OWNER_FILE).write_text(f"elsewhere {dead_pid}\n")
    old = out / ".qtkit-make-legacyname"  # an older qtkit's name without pid, two hours old
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert is_stale(killed) and not is_stale(alive) and not is_stale(other_host) and is_stale(old)
    assert is_stale(other_host, now=time.time() + STALE_AFTER_S + 10)

    result = run_qtkit("data", "make", "pointmaze-umaze-sparse", "--steps", "2000", "--no-progress", "--opt",
                       "ref_episodes=1", "-o", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    left = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert left == sorted([alive.name, other_host.name])
    data = out / "qtkit" / "pointmaze-umaze-sparse-v0" / "data"
    mask = os.umask(0)
    os.umask(mask)
    for path in (data, data / "main_data.hdf5", data / "metadata.json"):  # the umask's usual modes
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        assert path.stat().st_mode & 0o777 == want, (path, oct(path.stat().st_mode))


def test_staging_folder_is_removed_on_error_and_interrupt(tmp_path: Path) -> None:
    from qtkit.data.makers.writer import staging_dir

    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), staging_dir(tmp_path, ".qtkit-make-") as tmp:
            (tmp / "half").write_text("x")
            raise exc
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- loader checks (unit)
def _flat(**changes: Any) -> dict[str, Any]:
    base = {"observations": np.zeros((3, 2)), "actions": np.zeros((2, 1)), "rewards": np.zeros(2),
            "terminations": np.array([0, 1]), "truncations": np.array([False, False]), "episode_lengths": [2]}
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"terminations": np.array([0.0, 0.5])}, r"terminations of .* row 1 holds 0\.5"),
        ({"terminations": np.array([0, 2])}, r"terminations .* row 1 holds 2"),
        ({"truncations": np.array([np.nan, 0.0])}, r"truncations .* row 0 holds nan"),
        ({"truncations": np.array(["0", "1"])}, r"truncations .* not numbers"),
        ({"observations": np.array([["x", "y"]] * 3)}, r"observations .* not numbers: dtype <U1, row 0, column 0"),
        ({"actions": np.array([[1.0], ["b"]], dtype=object)}, r"actions .* row 1, column 0 holds 'b'"),
        ({"rewards": np.array([1 + 2j, 0])}, r"rewards .* not numbers"),
    ],
)
def test_dataset_refuses_non_numeric_arrays_and_non_boolean_flags(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(DataError, match=match):
        TrajectoryDataset(**_flat(**changes))


def test_exact_zero_one_flags_and_object_numbers_are_accepted() -> None:
    ds = TrajectoryDataset(**_flat(terminations=np.array([0.0, 1.0]), actions=np.array([[1], [2.5]], dtype=object)))
    assert ds.terminations.tolist() == [False, True] and ds.actions[:, 0].tolist() == [1.0, 2.5]
    with pytest.raises(DataError, match=r"episode 1.* terminations .* 0\.5"):
        TrajectoryDataset.from_episodes([
            {"observations": np.zeros((3, 2)), "actions": np.zeros((2, 1)), "rewards": np.zeros(2)},
            {"observations": np.zeros((3, 2)), "actions": np.zeros((2, 1)), "rewards": np.zeros(2),
             "terminations": [0, 0.5]},
        ])


def test_files_name_the_key_and_row(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "d.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = np.zeros((N, 3))
        f["actions"] = np.zeros((N, 1))
        f["rewards"] = np.array([b"r"] * N)
        f["terminals"] = np.zeros(N)
        f["timeouts"] = np.r_[np.zeros(N - 1), 1]
    with pytest.raises(DataError, match=r"d\.hdf5: 'rewards' are not numbers.*row 0 holds b'r'"):
        load_dataset(path)
    half = _npz(tmp_path / "half.npz", terminals=np.r_[np.zeros(7), 0.5, np.zeros(N - 8)])
    with pytest.raises(DataError, match=r"half\.npz: 'terminals' must be booleans or 0/1, but row 7 holds 0\.5"):
        load_dataset(half)
    ok = _npz(tmp_path / "ok.npz", terminals=np.r_[np.zeros(7), 1.0, np.zeros(N - 8)])  # 0/1 floats are fine
    assert load_dataset(ok).terminations.sum() == 1


# ----------------------------------------------------------------------------- lazy submodules
def test_import_qtkit_is_light_and_exposes_submodules_lazily() -> None:
    code = (
        "import sys, qtkit\n"
        "heavy = ['torch', 'numpy', 'minari', 'gymnasium', 'h5py', 'ray', 'matplotlib', 'stable_baselines3']\n"
        "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]\n"
        "for name in qtkit.SUBMODULES:\n"
        "    assert name in dir(qtkit)\n"
        "assert callable(qtkit.data.load_dataset) and 'torch' in sys.modules\n"
        "assert qtkit.samplers.Sampler and qtkit.backbones and qtkit.policies and qtkit.critics and qtkit.backups\n"
        "assert qtkit.agents and qtkit.sweep.load_sweep and qtkit.report.write_report\n"
        "assert [m for m in ['minari', 'gymnasium', 'h5py', 'ray', 'matplotlib'] if m in sys.modules] == [], "
        "[m for m in ['minari', 'gymnasium', 'h5py', 'ray', 'matplotlib'] if m in sys.modules]\n"
        "try:\n    qtkit.no_such_thing\nexcept AttributeError as e:\n    assert 'no_such_thing' in str(e)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
