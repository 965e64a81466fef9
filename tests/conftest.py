"""Shared test helpers and fixtures: hypothesis profiles, the standard build context for component contract
tests, tiny agents on a Pendulum dataset (TINY, tiny, pendulum_dataset, eval_env), CLI runner, thread pinning."""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from qtkit.data import TrajectoryDataset

settings.register_profile(
    "ci", max_examples=200, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# One thread: the tests use small tensors, where a second thread gains little and costs a lot
# whenever the other core is busy (measured: 3.5x slower learning tests on a shared 2-core machine).
torch.set_num_threads(int(os.environ.get("QTKIT_TEST_THREADS", "1")))

#: The shapes and training values every component contract test builds with.
CONTEXT: dict[str, Any] = {
    "obs_dim": 5,
    "obs_shape": (5,),
    "act_dim": 3,
    "action_low": [-1.0, -2.0, 0.0],
    "action_high": [1.0, 2.0, 1.0],
    "gamma": 0.9,
    "rtg_scale": 10.0,
    "proprio_dim": 0,
}
#: A small backbone for components that need one.
SMALL_BACKBONE: dict[str, Any] = {"type": "gpt2", "width": 32, "depth": 1, "heads": 2, "dropout": 0.0}


def build_component(kind: str, spec: dict[str, Any] | str, **context: Any) -> Any:
    """Resolve ``spec`` for ``kind`` and instantiate it with the standard contract context."""
    from qtkit.build import instantiate
    from qtkit.config import resolve_slot
    from qtkit.registry import get_component

    resolved = resolve_slot(kind, spec, preset="<test>")
    ctx = {**CONTEXT, **context}
    entry = get_component(kind, resolved["type"])
    if "backbone" in entry.context() and "backbone" not in context:
        ctx["backbone"] = instantiate("backbone", resolve_slot("backbone", SMALL_BACKBONE, preset="<test>"), ctx)
    return instantiate(kind, resolved, ctx)


def token_sensitive(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Redraw every weight matrix of ``model`` as N(0, 1/fan_in) (larger than GPT-2's init) so that every
    token moves every later output; returns the model in eval mode. For masking and caching tests."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
    return model.eval()


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """One torch thread for a module whatever QTKIT_TEST_THREADS says (small tensors; bit-exact fingerprints)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _denormals_kept() -> Any:
    """Every test ends with denormal floats kept, as a fresh process has them: a command run in-process
    (``qtkit.cpu.prepare_process``) flushes them for the rest of its process, and hypothesis refuses to run then."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(autouse=True)
def _isolate_minari(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.minari and never download during tests."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.getbasetemp() / "minari"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture
def cli_runner() -> Any:
    """typer's CliRunner for ``qtkit.cli.app`` (``cli_runner.invoke(app, [...])``)."""
    from typer.testing import CliRunner

    return CliRunner()


# ----------------------------------------------------------------------------- tiny agents on Pendulum
TINY = {
    "backbone": {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64},
    "critic": {"hidden": [32, 32]},
    "batch_size": 8,
    "context": 4,
    "log_every": 2,
    "ema_start": 2,
    "ema_every": 1,
    "warmup_steps": 0,
}


TINY_CRITICS = {"twin-mlp": {"hidden": [32, 32]}, "ar-q": {"bins": 16}}


def tiny(preset: str) -> dict:
    """TINY adapted to the preset: the critic's own small size, and only the train keys its agent has."""
    from qtkit.config import load_preset, resolve_config

    config = resolve_config(load_preset(preset))
    out = {k: v for k, v in TINY.items() if k == "backbone" or k in config["train"]}
    if config["critic"] is not None:
        out["critic"] = TINY_CRITICS[config["critic"]["type"]]
    return out



def assert_same_critic_step(want: tuple, got: tuple) -> None:
    """Two critic steps ``(bootstrap values or targets, loss, metrics, grads of critic.net)`` agree up to float
    summation order (the ``static_shapes`` tests)."""
    (want_values, want_loss, want_metrics, want_grads), (values, loss, metrics, grads) = want, got
    torch.testing.assert_close(values, want_values, rtol=1e-5, atol=1e-6)
    assert want_loss.isfinite() and loss.isfinite()
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    assert metrics.keys() == want_metrics.keys()
    for key in want_metrics:
        torch.testing.assert_close(metrics[key], want_metrics[key], rtol=1e-5, atol=1e-6, msg=key)
    for a, b in zip(grads, want_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def pendulum_dataset(episodes: int = 6, length: int = 15, seed: int = 0) -> TrajectoryDataset:
    """Random-policy Pendulum episodes cut at ``length`` steps (truncated), with reference scores."""
    env = gym.make("Pendulum-v1", max_episode_steps=length)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            action = rng.uniform(-2, 2, size=1).astype(np.float32)
            obs, reward, term, trunc, _ = env.step(action)
            observations.append(obs), actions.append(action), rewards.append(reward)
            terms.append(term), truncs.append(trunc)
            done = term or trunc
        out.append({"observations": np.array(observations), "actions": np.array(actions),
                    "rewards": np.array(rewards), "terminations": np.array(terms), "truncations": np.array(truncs)})
    return TrajectoryDataset.from_episodes(
        out, action_space=env.action_space,
        metadata={"env_id": "Pendulum-v1", "ref_min_score": -1500.0, "ref_max_score": 0.0, "dataset_id": "pendulum"},
    )


def eval_env() -> gym.Env:
    return gym.make("Pendulum-v1", max_episode_steps=10)


# ----------------------------------------------------------------------------- the real CLI in a subprocess
def run_qtkit(*args: str, cwd: Any = None, env: dict[str, str] | None = None, timeout: float = 180) -> Any:
    """Run ``python -m qtkit ARGS`` in a subprocess (the real CLI, its own process) and return the
    ``subprocess.CompletedProcess`` (text ``stdout``/``stderr``). ``env`` entries are added to this environment;
    one torch thread and no Minari downloads by default."""
    import subprocess
    import sys

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "qtkit", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_failure(result: Any, *names: str, code: int = 2) -> str:
    """The CLI failed the way a user should see it: exit ``code``, no traceback, a message containing every one
    of ``names`` (the thing that is wrong, the fix...). Returns the message's first line."""
    output = result.stdout + result.stderr
    assert result.returncode == code, f"exit {result.returncode}, expected {code}:\n{output}"
    assert "Traceback" not in output, output
    for name in names:
        assert name in output, f"{name!r} not in:\n{output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()] or output.splitlines()
    return lines[0] if lines else ""


#: ``--set`` flags for a tiny dt-gpt/qt model on the command line (the CLI twin of TINY).
TINY_SETS = ["--set", "backbone.width=16", "--set", "backbone.depth=1", "--set", "backbone.heads=1",
             "--set", "backbone.mlp_dim=32", "--set", "batch_size=8", "--set", "context=4"]


def pendulum_npz(path: Any, episodes: int = 4, length: int = 12, eval_steps: int = 10) -> str:
    """:func:`pendulum_dataset` saved as ``.npz`` at ``path``, recording an evaluation env (Pendulum-v1 with
    ``eval_steps``-step episodes) so the CLI can evaluate it; returns the path."""
    data = pendulum_dataset(episodes=episodes, length=length)
    spec = gym.make("Pendulum-v1", max_episode_steps=eval_steps).spec.to_json()
    data = type(data).from_episodes(list(data), action_space=data.action_space,
                                    metadata={**data.metadata, "eval_env_spec": spec})
    return str(data.to_npz(path))


# ----------------------------------------------------------------------------- tiny pixel task
PIXELS = 16


class PixelWalk(gym.Env):
    """A 16x16 RGB frame with a white 3x3 square; the action [2] moves it by up to 2 pixels a step; the reward is
    minus its distance to the centre (/16). Observations are uint8 frames: a tiny task for pixel agents' smoke,
    fingerprint and contract tests."""

    observation_space = gym.spaces.Box(0, 255, (PIXELS, PIXELS, 3), np.uint8)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _frame(self) -> np.ndarray:
        image = np.zeros((PIXELS, PIXELS, 3), np.uint8)
        x, y = self.position
        image[y:y + 3, x:x + 3] = 255
        return image

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = self.np_random.integers(0, PIXELS - 3, size=2)
        return self._frame(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        move = np.round(np.clip(np.asarray(action, np.float64).reshape(2), -1, 1) * 2).astype(int)
        self.position = np.clip(self.position + move, 0, PIXELS - 3)
        reward = -float(np.abs(self.position + 1 - PIXELS / 2).sum()) / PIXELS
        return self._frame(), reward, False, False, {}


def pixel_env(steps: int = 8) -> gym.Env:
    return gym.wrappers.TimeLimit(PixelWalk(), steps)


def pixel_dataset(episodes: int = 6, length: int = 10, seed: int = 0) -> TrajectoryDataset:
    """Random-policy PixelWalk episodes (uint8 16x16x3 frames), cut at ``length`` steps, with reference scores."""
    env, rng, out = PixelWalk(), np.random.default_rng(seed), []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        frames, actions, rewards = [obs], [], []
        for _ in range(length):
            action = rng.uniform(-1, 1, size=2).astype(np.float32)
            obs, reward, *_ = env.step(action)
            frames.append(obs), actions.append(action), rewards.append(reward)
        out.append({"observations": np.stack(frames), "actions": np.stack(actions), "rewards": np.array(rewards),
                    "terminations": np.zeros(length, bool), "truncations": np.eye(length, dtype=bool)[-1]})
    return TrajectoryDataset.from_episodes(
        out, observation_space=PixelWalk.observation_space, action_space=PixelWalk.action_space,
        metadata={"dataset_id": "pixel-walk", "ref_min_score": -8.0, "ref_max_score": 0.0},
    )
