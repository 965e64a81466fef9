"""Sweeps: validation (every problem at once), trial expansion, resumability, crash isolation, Ray."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import qtkit
from qtkit.sweep import SweepError, expand_trials, load_sweep, parse_sweep, read_status, run_sweep, run_trial

TINY_SET = {
    "backbone": {"width": 16, "depth": 1, "heads": 1, "mlp_dim": 32},
    "critic": {"hidden": [16, 16]},
    "batch_size": 8,
    "context": 4,
    "log_every": 1,
    "warmup_steps": 0,
    "ema_start": 2,
}


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Pendulum dataset on disk whose evaluation env has 10-step episodes."""
    from tests.conftest import pendulum_npz

    return pendulum_npz(tmp_path_factory.mktemp("data") / "pendulum.npz")


def sweep_dict(npz: str, out: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "tiny", "steps": 4, "eval_every": 2, "eval_episodes": 1, "seeds": [0], "datasets": [npz],
        "set": TINY_SET, "methods": [{"preset": "dt-gpt"}], "out": str(out), **extra,
    }


# ----------------------------------------------------------------------------- validation
def test_every_problem_is_reported_at_once_with_suggestions(npz_path: str, tmp_path: Path) -> None:
    raw = {
        "name": "bad", "step": 3, "steps": 0, "seeds": [0, 0], "eval_episodes": "two",
        "datasets": [npz_path, "minari:qtkit/pointmaze-umaze-sprase-v0", str(tmp_path / "missing.npz"),
                     {"make": {"name": "pointmaze-umaze-sprase", "steps": 100}}],
        "methods": [{"preset": "dt-gtp"}, {"preset": "qt-gpt-nstep", "set": {"etta": 2}}, {"peer": "d3rlpy-iqll"},
                    {"peer": "d3rlpy-td3bc", "set": {"alpah": 1}}, {"preset": "dt-gpt", "peer": "d3rlpy-dt"},
                    {"preset": "dt-gpt", "colour": "red"}],
        "resources": {"cpus": 2},
    }
    with pytest.raises(SweepError) as info:
        parse_sweep(raw, source="bad.yaml")
    text = str(info.value)
    expected = [
        "unknown key 'step'. Did you mean 'steps'?",
        "steps: expected an integer >= 1",
        "seeds: [0, 0] repeats a seed",
        "eval_episodes: expected an integer",
        "'qtkit/pointmaze-umaze-sprase-v0' is not on this machine",
        "make: {name: pointmaze-umaze-sparse",
        "missing.npz' does not exist",
        "unknown dataset maker 'pointmaze-umaze-sprase'. Did you mean 'pointmaze-umaze-sparse'",
        "unknown preset 'dt-gtp'. Did you mean 'dt-gpt'?",
        "unknown override 'etta'",
        "Did you mean 'eta'?",
        "No peer called 'd3rlpy-iqll'. Did you mean 'd3rlpy-iql'",
        "unknown parameter 'alpah'. Did you mean 'alpha'?",
        "give exactly one of preset:",
        "unknown key 'colour'",
        "resources: unknown key 'cpus'",
    ]
    for needle in expected:
        assert needle in text, needle
    assert len(info.value.problems) == 14  # some problems above are checked in two parts
    assert text.startswith("sweep bad.yaml:") and "nothing was started" in text


def test_yaml_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="does not exist"):
        load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(SweepError, match="not valid YAML"):
        load_sweep(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(SweepError, match="expected a mapping"):
        load_sweep(bad)


def test_missing_required_keys_and_duplicate_labels(npz_path: str, tmp_path: Path) -> None:
    with pytest.raises(SweepError) as info:
        parse_sweep({"name": "x", "datasets": [npz_path]})
    assert "missing required key 'steps'" in str(info.value) and "missing required key 'methods'" in str(info.value)
    with pytest.raises(SweepError, match="dt-gpt used twice"):
        parse_sweep(sweep_dict(npz_path, tmp_path, methods=["dt-gpt", "dt-gpt"]))


# ----------------------------------------------------------------------------- expansion
def test_trials_are_the_product_with_one_folder_each(npz_path: str, tmp_path: Path) -> None:
    raw = sweep_dict(npz_path, tmp_path / "out", seeds=[0, 1, 2],
                     datasets=[{"spec": npz_path, "set": {"rtg_scale": 5.0, "batch_size": 2}}],
                     methods=[{"preset": "qt-*"}, {"preset": "dt-gpt", "label": "dt-small", "set": {"batch_size": 4}},
                              {"peer": "d3rlpy-iql", "set": {"batch_size": 16}}],
                     resources={"cpus_per_trial": 2, "gpus_per_trial": 0.5})
    spec = parse_sweep(raw)
    qt_presets = qtkit.list_presets("qt-*")
    assert [m.label for m in spec.methods] == [*qt_presets, "dt-small", "d3rlpy-iql"]
    trials = expand_trials(spec)
    assert len(trials) == len(spec.methods) * 3
    assert len({t.run_dir for t in trials}) == len(trials)
    first = trials[0]
    assert Path(first.run_dir) == tmp_path / "out" / "pendulum" / qt_presets[0] / "seed0"
    assert first.checkpoint_every == 2 and first.cpus == 2 and first.gpus == 0.5  # default: eval_every
    dt_small = next(t for t in trials if t.method.label == "dt-small")
    # sweep set < dataset set < the method's own set; dt-gpt (no critic) skips the sweep's critic override
    assert dt_small.overrides["batch_size"] == 4 and "critic" not in dt_small.overrides
    assert dt_small.overrides["backbone"]["width"] == 16 and dt_small.overrides["rtg_scale"] == 5.0
    assert first.overrides["batch_size"] == 2 and first.overrides["critic"] == {"hidden": [16, 16]}
    peer = next(t for t in trials if t.method.kind == "peer")
    assert peer.overrides == {"batch_size": 16}  # peers take only their own set
    with pytest.raises(SweepError, match=r"on dataset 'pendulum'.*unknown override 'rtg_scal'"):
        parse_sweep(sweep_dict(npz_path, tmp_path, datasets=[{"spec": npz_path, "set": {"rtg_scal": 1}}]))


def test_dt_peer_sees_returns_on_the_dataset_scale(npz_path: str, tmp_path: Path) -> None:
    raw = sweep_dict(npz_path, tmp_path / "out", set={**TINY_SET, "rtg_scale": 100.0},
                     datasets=[{"spec": npz_path, "label": "scaled", "set": {"rtg_scale": 4.0}},
                               {"spec": npz_path, "label": "sweep-scale"}],
                     methods=[{"peer": "d3rlpy-dt"}, {"peer": "d3rlpy-dt", "label": "own", "set": {"reward_scale": 0.5}},
                              {"peer": "d3rlpy-iql"}])
    got = {(t.dataset.label, t.method.label): t.overrides for t in expand_trials(parse_sweep(raw))}
    assert got[("scaled", "d3rlpy-dt")] == {"reward_scale": 0.25}  # the dataset's rtg_scale wins
    assert got[("sweep-scale", "d3rlpy-dt")] == {"reward_scale": 0.01}  # else the sweep's
    assert got[("scaled", "own")] == {"reward_scale": 0.5}  # the entry's own value is kept
    assert got[("scaled", "d3rlpy-iql")] == {}  # IQL has no return scale to share


def test_every_suite_file_is_valid() -> None:
    root = Path(__file__).resolve().parents[1] / "benchmarks" / "suites"
    files = sorted(root.glob("*.yaml"))
    assert {f.stem for f in files} >= {"smoke", "cpu", "gpu"}
    for path in files:
        spec = load_sweep(path, check_datasets=False)  # raises SweepError listing every problem
        assert spec.trials(), path


# ----------------------------------------------------------------------------- running (serial executor)
def test_crash_is_recorded_and_the_others_finish_then_rerun_skips_done(npz_path: str, tmp_path: Path) -> None:
    raw = sweep_dict(npz_path, tmp_path / "out", methods=[
        {"preset": "dt-gpt"},
        {"preset": "dt-gpt", "label": "crashes", "set": {"device": "cuda:7"}},  # no such device: fails at fit
    ])
    spec = parse_sweep(raw)
    result = run_sweep(spec, executor="serial", progress=False)
    assert (result["done"], result["failed"]) == (1, 1)
    ok, bad = (Path(t.run_dir) for t in expand_trials(spec))
    status = read_status(bad)
    assert status["state"] == "failed" and status["error"] and "Traceback" in status["traceback"]
    assert read_status(ok)["state"] == "done"
    summary = json.loads((ok / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["final"]["normalized_score"] is not None
    for name in ("trial.yaml", "config.yaml", "metrics.csv", "checkpoint/weights.safetensors"):
        assert (ok / name).exists(), name
    assert yaml.safe_load((ok / "trial.yaml").read_text())["seed"] == 0
    assert Path(result["report"]).is_file()

    mtime = (ok / "summary.json").stat().st_mtime_ns
    again = run_sweep(spec, executor="serial", progress=False, report=False)
    assert (again["skipped"], again["failed"]) == (1, 1)  # done skipped, failed re-run (and fails again)
    assert (ok / "summary.json").stat().st_mtime_ns == mtime
    assert read_status(bad)["attempts"] == 2


def test_interrupted_trial_resumes_from_its_checkpoint(npz_path: str, tmp_path: Path) -> None:
    from qtkit.data import load_dataset
    from qtkit.sweep.trial import write_status

    spec = parse_sweep(sweep_dict(npz_path, tmp_path / "out", steps=6, checkpoint_every=2))
    (trial,) = expand_trials(spec)
    run_dir = Path(trial.run_dir)
    data = load_dataset(npz_path)
    agent = qtkit.build("dt-gpt", dataset=data, seed=0, **trial.overrides)
    agent.fit(data, 6, eval_env=data, eval_every=2, eval_episodes=1, log_dir=run_dir, checkpoint_every=2,
              until=2, progress=False)  # "killed" after step 2
    write_status(run_dir, state="running", attempts=1)
    result = run_trial(trial)
    assert result["state"] == "done" and result["resumed_from"] == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6
    assert [e["step"] for e in summary["evaluations"]] == [2, 4, 6]  # the evaluation before the kill is kept
    assert read_status(run_dir)["attempts"] == 2


def test_missing_ray_names_the_extra(npz_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qtkit.sweep import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"qtkit\[sweep\]"):
        require_ray()
    spec = parse_sweep(sweep_dict(npz_path, tmp_path / "out"))
    with pytest.raises(ImportError, match=r"qtkit\[sweep\]"):
        run_sweep(spec, progress=False)
    assert not (tmp_path / "out").exists()  # failed before anything started


def test_cli_check_lists_trials_and_bad_files_exit_2(npz_path: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from qtkit.cli import app

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(npz_path, tmp_path / "out", seeds=[0, 1])))
    result = CliRunner().invoke(app, ["sweep", str(path), "--check"])
    assert result.exit_code == 0, result.output
    assert "pendulum/dt-gpt/seed1" in result.output and "2 trials" in result.output
    path.write_text(yaml.safe_dump(sweep_dict(npz_path, tmp_path / "out", methods=["dt-gtp"])))
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2 and "Did you mean 'dt-gpt'" in result.output


# ----------------------------------------------------------------------------- resources: packing trials on GPUs
@pytest.mark.parametrize(("key", "value"), [
    ("gpus_per_trial", -1), ("gpus_per_trial", 1.5), ("gpus_per_trial", "0.25"), ("gpus_per_trial", True),
    ("gpus_per_trial", float("nan")), ("cpus_per_trial", 0), ("cpus_per_trial", -2), ("cpus_per_trial", 1.5),
    ("cpus_per_trial", "two"),
])
def test_resources_must_be_ray_quantities(npz_path: str, tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(SweepError) as info:
        parse_sweep(sweep_dict(npz_path, tmp_path / "out", resources={key: value}))
    (problem,) = info.value.problems
    assert problem.startswith(f"resources.{key}: expected") and f"got {value!r}" in problem and "Fix: e.g." in problem


@pytest.mark.parametrize(("cpus", "gpus"), [(1, 0), (2, 0.25), (0.5, 0.5), (4, 1), (1, 2)])
def test_fractional_and_whole_resources_reach_every_trial(npz_path: str, tmp_path: Path, cpus: float,
                                                          gpus: float) -> None:
    spec = parse_sweep(sweep_dict(npz_path, tmp_path / "out", seeds=[0, 1],
                                  resources={"cpus_per_trial": cpus, "gpus_per_trial": gpus}))
    assert [(t.cpus, t.gpus) for t in spec.trials()] == [(cpus, gpus)] * 2


def test_cli_check_shows_gpu_packing_and_refuses_nonsense(npz_path: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from qtkit.cli import app

    monkeypatch.setattr("qtkit.sweep.runner.local_gpus", lambda: 0)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(npz_path, tmp_path / "out",
                                              resources={"cpus_per_trial": 2, "gpus_per_trial": 0.25})))
    result = CliRunner().invoke(app, ["sweep", str(path), "--check"])
    assert result.exit_code == 0, result.output
    assert "2 CPU, 0.25 GPU (4 trials share a GPU)" in result.output and "this machine has no GPU" in result.output
    path.write_text(yaml.safe_dump(sweep_dict(npz_path, tmp_path / "out", resources={"gpus_per_trial": 1.5})))
    result = CliRunner().invoke(app, ["sweep", str(path), "--check"])
    assert result.exit_code == 2 and "resources.gpus_per_trial" in result.output and "Fix:" in result.output
    assert "Traceback" not in result.output


def test_gpu_trials_without_a_gpu_are_refused_before_anything_starts(npz_path: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray", reason="needs the sweep extra: pip install 'qtkit[sweep]'")
    monkeypatch.setattr("qtkit.sweep.runner.local_gpus", lambda: 0)
    spec = parse_sweep(sweep_dict(npz_path, tmp_path / "out", resources={"gpus_per_trial": 0.25}))
    with pytest.raises(qtkit.errors.ConfigError, match=r"gpus_per_trial is 0.25 but this machine has no GPU"):
        run_sweep(spec, progress=False)
    assert not (tmp_path / "out").exists()
    from qtkit.sweep.runner import check_gpus

    with pytest.raises(qtkit.errors.ConfigError, match=r"the Ray cluster at auto has 1 GPU.*--address"):
        check_gpus([dataclasses.replace(t, gpus=2.0) for t in spec.trials()], have=1, where="the Ray cluster at auto")
    check_gpus(spec.trials(), have=1, where="the Ray cluster")  # four such trials share that GPU
    check_gpus(parse_sweep(sweep_dict(npz_path, tmp_path / "out")).trials(), have=0, where="this machine")  # CPU


def test_ray_tasks_get_the_fractional_gpus(npz_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trials' resources are the Ray tasks' num_cpus / num_gpus (a stand-in Ray records them)."""
    from qtkit.sweep import runner

    class FakeRay:
        def __init__(self) -> None:
            self.options: list[dict[str, Any]] = []

        def is_initialized(self) -> bool:
            return True

        def cluster_resources(self) -> dict[str, float]:
            return {"CPU": 2.0, "GPU": 1.0}

        def remote(self, **_: Any) -> Any:
            fake = self

            class Task:
                def options(self, **opts: Any) -> Any:
                    fake.options.append(opts)
                    return type("Bound", (), {"remote": staticmethod(lambda trial: ("ref", trial.key))})

            return lambda fn: Task()

        def wait(self, refs: list, num_returns: int, timeout: float) -> tuple[list, list]:
            return refs[:num_returns], refs[num_returns:]

        def get(self, ref: Any) -> dict[str, Any]:
            return {"key": ref[1], "run_dir": "", "state": "done"}

    fake = FakeRay()
    monkeypatch.setattr(runner, "require_ray", lambda: fake)
    spec = parse_sweep(sweep_dict(npz_path, tmp_path / "out", seeds=[0, 1, 2, 3],
                                  resources={"cpus_per_trial": 0.5, "gpus_per_trial": 0.25}))
    trials = spec.trials()
    results = runner._run_ray(trials, runner._Progress(trials, False), None, None, None)
    assert [r["state"] for r in results] == ["done"] * 4
    assert [(o["num_cpus"], o["num_gpus"]) for o in fake.options] == [(0.5, 0.25)] * 4


# ----------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_local() -> Any:
    ray = pytest.importorskip("ray", reason="needs the sweep extra: pip install 'qtkit[sweep]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_runs_presets_and_peers_and_isolates_crashes(ray_local: Any, npz_path: str, tmp_path: Path) -> None:
    pytest.importorskip("d3rlpy", reason="needs the bench extra: pip install 'qtkit[bench]'")
    raw = sweep_dict(npz_path, tmp_path / "out", methods=[
        {"preset": "dt-gpt"},
        {"peer": "d3rlpy-iql", "set": {"batch_size": 8, "hidden": [16, 16], "log_every": 1}},
        {"preset": "dt-gpt", "label": "crashes", "set": {"device": "cuda:7"}},
    ])
    spec = parse_sweep(raw)
    result = run_sweep(spec, progress=False)  # Ray is the default executor; the fixture's ray is reused
    states = {r["key"]: r["state"] for r in result["results"]}
    assert states == {"pendulum/dt-gpt/seed0": "done", "pendulum/d3rlpy-iql/seed0": "done",
                      "pendulum/crashes/seed0": "failed"}
    assert ray_local.is_initialized()  # run_sweep leaves a Ray it did not start running
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {r["method"] for r in report["datasets"]["pendulum"]} == {"dt-gpt", "d3rlpy-iql", "crashes"}
    again = run_sweep(spec, progress=False, report=False)
    assert (again["skipped"], again["failed"]) == (2, 1)
