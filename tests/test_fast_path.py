"""The GPU fast path (issue 18), run on CPU so it cannot rot: each switch gives the numbers of the plain path.

- ``train.device_windows``: :class:`~qtkit.data.device_windows.DeviceWindowSampler` gives exactly the windows of the
  host sampler ``sample_windows`` for the same generator state (every field, dtype and the generator's final state),
  for short episodes (T < K), every scheme, ``rtg_scale`` != 1 and uint8 image frames;
- ``train.sync_free``: the same weights bit for bit as the per-step-sync path; metrics stay tensors between the
  logged steps; a non-finite loss raises at the next logged step (or checkpoint) naming the first bad step, and the
  last good checkpoint is kept;
- ``train.compile_step``: the whole step through ``torch.compile`` runs and matches eager (``aot_eager``: the same
  weights; inductor with ``reduce-overhead``, the CUDA-graph mode, which on CPU compiles C++ and skips the graphs:
  within tolerance, marked slow).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import qtkit
from qtkit.critics.ar_q import ARQCritic
from qtkit.data import TrajectoryDataset
from qtkit.data.device_windows import DeviceWindowSampler
from qtkit.data.windows import SCHEMES
from qtkit.errors import ConfigError, DataError, TrainingError
from tests.conftest import pendulum_dataset, pixel_dataset, tiny
from tests.test_data_windows import build

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ device windows
def short_episodes() -> TrajectoryDataset:
    """Episodes of 1-30 steps, some terminal, some truncated: K = 5 is longer than three of them."""
    return build([3, 1, 7, 30, 2, 12], [True, False, True, False, True, False], obs_dim=3, act_dim=2)


def frames_and_vector() -> TrajectoryDataset:
    """{"pixels", "state"} observations: frames plus a proprioceptive vector (windows carry batch.proprio)."""
    from tests.test_pixel_learning import cue_bandit_dataset

    return cue_bandit_dataset(episodes=40)


DATASETS = {  # name: (dataset, K, rtg_scale, frame_stack)
    "short-episodes": (short_episodes, 5, 1.0, 1),
    "short-episodes-rtg-scale": (short_episodes, 5, 7.5, 1),
    "pendulum-K-longer-than-episodes": (lambda: pendulum_dataset(episodes=4, length=6), 9, 1000.0, 1),
    "pixels-uint8": (lambda: pixel_dataset(episodes=4, length=6), 4, 1.0, 1),
    "pixels-stack3": (lambda: pixel_dataset(episodes=4, length=6), 4, 1.0, 3),
    "pixels+proprio": (frames_and_vector, 2, 1.0, 1),
}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_device_sampler_equals_the_host_sampler(name: str, scheme: str) -> None:
    make, K, scale, stack = DATASETS[name]
    data = make()
    host, device = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    sampler = DeviceWindowSampler(data, K, "cpu", rtg_scale=scale, scheme=scheme, frame_stack=stack)
    for B in (1, 16, 64):
        want = data.sample_windows(B, K, host, rtg_scale=scale, scheme=scheme, frame_stack=stack)
        got = sampler.sample(B, device)
        for field in dataclasses.fields(want):
            a, b = getattr(want, field.name), getattr(got, field.name)
            if a is None:  # proprio without a proprioceptive vector
                assert b is None, field.name
                continue
            assert b.dtype == a.dtype and b.shape == a.shape, field.name
            assert torch.equal(b, a), f"{name} {scheme} B={B}: field {field.name} differs"
    assert torch.equal(host.get_state(), device.get_state()), "the generators must end in the same state"
    # a data-parallel rank's slice: the same rows of the same draws
    want = data.sample_windows(8, K, host, rtg_scale=scale, scheme=scheme, frame_stack=stack, rows=slice(4, 8))
    got = sampler.sample(8, device, rows=slice(4, 8))
    for field in dataclasses.fields(want):
        a, b = getattr(want, field.name), getattr(got, field.name)
        assert (a is None and b is None) or torch.equal(a, b), f"{name} {scheme} rows 4:8: field {field.name}"
    if data.is_image:
        assert got.observations.dtype == torch.uint8


def test_device_sampler_windows_cover_padding() -> None:
    """The datasets above really exercise padding (windows shorter than K), so equality covers the padded rows."""
    data, K = short_episodes(), 5
    batch = DeviceWindowSampler(data, K, "cpu").sample(256, torch.Generator().manual_seed(0))
    assert (~batch.mask).any() and batch.mask.all(dim=1).any()


def test_device_sampler_refuses_lazy_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pixel_dataset(episodes=2, length=4)
    monkeypatch.setattr(TrajectoryDataset, "frames_storage", property(lambda self: "hdf5"))
    with pytest.raises(DataError, match=r"keeps its frames in its file \(hdf5\).*device_windows=false"):
        DeviceWindowSampler(data, 2, "cpu")


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def data() -> TrajectoryDataset:
    return pendulum_dataset(seed=0)


def trained(data: TrajectoryDataset, preset: str, steps: int = 5, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    agent = qtkit.build(preset, dataset=data, **{**tiny(preset), "log_every": 2, **overrides})
    result = agent.fit(data, steps=steps, progress=False)
    return agent, result


def assert_same_weights(a: Any, b: Any, atol: float = 0.0) -> None:
    wa, wb = a.state_dict(), b.state_dict()
    assert wa.keys() == wb.keys()
    for key in wa:
        if atol == 0.0:
            assert torch.equal(wa[key], wb[key]), key
        else:
            torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=atol, msg=key)


def reorders_sums(agent: Any, switches: dict[str, Any]) -> bool:
    """Whether ``switches`` change the arithmetic: with ``sync_free`` a critic that selects the valid rows (``ar-q``)
    computes every window position and masks the others (``static_shapes``). Its numbers are then equal only up to
    float summation order, and only without dropout (its masks are drawn for every position, so the random stream
    moves differently). Every other combination is bit for bit."""
    return bool(switches.get("sync_free")) and isinstance(agent.critic, ARQCritic)


def without_dropout(preset: str) -> dict[str, Any]:
    """``tiny(preset)`` with every dropout off (the backbones', and QT's policy embedding's)."""
    out = tiny(preset)
    out["backbone"] = {**out["backbone"], "dropout": 0.0}
    if preset.startswith("qt-"):
        out["policy"] = {"embed_dropout": 0.0}
    return out


@pytest.mark.parametrize("preset", ["qt-gpt-nstep", "qtransformer", "dt-gpt"])
def test_fast_switches_train_bit_identically(data: TrajectoryDataset, preset: str) -> None:
    plain, plain_result = trained(data, preset)
    for switch in ({"sync_free": True}, {"device_windows": True}, {"sync_free": True, "device_windows": True}):
        fast, fast_result = trained(data, preset, **switch)
        rows = [[{k: v for k, v in row.items() if k not in ("time_s", "steps_per_s")} for row in result["metrics"]]
                for result in (plain_result, fast_result)]
        if reorders_sums(fast, switch):
            still, still_result = trained(data, preset, **without_dropout(preset))
            fast, fast_result = trained(data, preset, **without_dropout(preset), **switch)
            rows = [[{k: v for k, v in row.items() if k not in ("time_s", "steps_per_s")} for row in result["metrics"]]
                    for result in (still_result, fast_result)]
            assert_same_weights(still, fast, atol=1e-5)
            assert [row.keys() for row in rows[1]] == [row.keys() for row in rows[0]]
            for want, got in zip(*rows, strict=True):
                assert got == pytest.approx(want, rel=1e-4, abs=1e-6), switch
        else:
            assert_same_weights(plain, fast)
            assert fast_result["metrics"] == [] or rows[1] == rows[0], switch


def test_sync_free_metrics_stay_tensors_until_a_logged_step(data: TrajectoryDataset) -> None:
    agent, _ = trained(data, "qt-gpt-nstep", steps=1, sync_free=True)
    batch = data.sample_windows(8, agent.train_config.context, agent.generator, rtg_scale=agent.train_config.rtg_scale)
    between = agent.train_step(batch, diagnose=False)
    assert between and all(isinstance(v, torch.Tensor) for v in between.values()), between
    logged = agent.train_step(batch, diagnose=True)
    assert all(isinstance(v, float) for v in logged.values()), logged
    plain, _ = trained(data, "qt-gpt-nstep", steps=1)
    assert all(isinstance(v, float) for v in plain.train_step(batch, diagnose=False).values())


def poison(agent: Any) -> None:
    with torch.no_grad():
        agent.critic.net[0].weight.fill_(float("nan"))


def test_deferred_non_finite_check_raises_at_the_logged_step(data: TrajectoryDataset, tmp_path: Path) -> None:
    agent = qtkit.build("qt-gpt-nstep", dataset=data, **{**tiny("qt-gpt-nstep"), "log_every": 4, "sync_free": True})
    agent.fit(data, steps=4, log_dir=tmp_path, progress=False)
    good = (tmp_path / "checkpoint" / "weights.safetensors").read_bytes()
    poison(agent)
    with pytest.raises(TrainingError) as caught:
        agent.fit(data, steps=12, log_dir=tmp_path, progress=False)
    message = str(caught.value)
    assert "non-finite critic loss (nan) at step 5, found at step 8" in message, message  # metrics.csv's numbers
    assert "last check: step 4" in message and "the updates of steps 5..8 were applied" in message, message
    assert "--set sync_free=false" in message and "Lower the learning rate" in message, message
    assert "The last good checkpoint is in" in message, message
    assert agent.step == 8  # the updates between the bad step and the check were applied ...
    assert (tmp_path / "checkpoint" / "weights.safetensors").read_bytes() == good  # ... and never saved
    with pytest.raises(TrainingError, match="non-finite critic loss"):
        agent.save(tmp_path / "other")  # the failure stays armed
    assert not (tmp_path / "other").exists()


def test_deferred_non_finite_check_runs_before_a_checkpoint(data: TrajectoryDataset, tmp_path: Path) -> None:
    agent = qtkit.build("qtransformer", dataset=data, **{**tiny("qtransformer"), "log_every": 50, "sync_free": True})
    agent.fit(data, steps=2, log_dir=tmp_path, progress=False)
    good = (tmp_path / "checkpoint" / "weights.safetensors").read_bytes()
    with torch.no_grad():
        next(agent.critic.net.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite critic loss \(nan\) at step 3, found at step 3"):
        agent.fit(data, steps=40, checkpoint_every=1, log_dir=tmp_path, progress=False)
    assert agent.step == 3
    assert (tmp_path / "checkpoint" / "weights.safetensors").read_bytes() == good


def test_per_step_check_stops_before_the_bad_update(data: TrajectoryDataset) -> None:
    """sync_free false (the default) keeps today's exact check: the bad step raises and is not applied."""
    agent, _ = trained(data, "qt-gpt-nstep", steps=2)
    poison(agent)
    with pytest.raises(TrainingError, match=r"non-finite critic loss \(nan\) at step 2; the step was not applied"):
        agent.fit(data, steps=6, progress=False)
    assert agent.step == 2


# ------------------------------------------------------------------------------------------ compiled step
@pytest.mark.parametrize("preset", ["qt-gpt-nstep", "qtransformer"])
def test_compiled_step_matches_eager(data: TrajectoryDataset, preset: str) -> None:
    """aot_eager traces the step into graphs (between the graph breaks) and runs them: the same weights as eager."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, _ = trained(data, preset, steps=3, sync_free=True, device_windows=True)
    compiled, _ = trained(data, preset, steps=3, compile_step=True, compile_backend="aot_eager", sync_free=True,
                          device_windows=True)
    assert "train_step" in compiled.__dict__ and hasattr(compiled.train_step, "compiled")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    assert_same_weights(eager, compiled, atol=1e-6)


@pytest.mark.parametrize("preset", ["qt-gpt-nstep", "qtransformer"])
def test_compiled_step_does_not_recompile_once_warm(data: TrajectoryDataset, preset: str) -> None:
    """After a few steps the compiled step reuses its graphs: the LR (cosine, changing every step) and the step
    counter stay out of the traced code, else every step would compile again (or fall back to eager at the limit)."""
    torch._dynamo.reset()
    agent = qtkit.build(preset, dataset=data, **{**tiny(preset), "log_every": 100, "compile_step": True,
                                                 "compile_backend": "aot_eager", "sync_free": True})
    agent.fit(data, steps=100, until=6, progress=False)  # warm: the cosine LR keeps changing after it
    sampler = DeviceWindowSampler(data, agent.train_config.context, "cpu", rtg_scale=agent.train_config.rtg_scale)
    warm = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    lrs = []
    for _ in range(6):
        agent.train_step(sampler.sample(agent.train_config.batch_size, agent.generator))
        lrs.append(agent.critic_optimizer.param_groups[0]["lr"])
    assert len(set(lrs)) > 1, "the LR must change for this test to mean anything"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == warm, "the warm compiled step compiled again"


@pytest.mark.slow
def test_inductor_reduce_overhead_step_runs_on_cpu(data: TrajectoryDataset) -> None:
    """The CUDA-graph mode's code path (inductor, ``reduce-overhead``; CPU: C++ kernels, graphs skipped) runs and
    stays near eager. Adam moves a weight by at most ~lr per step, and a reordered sum can flip the sign of a
    gradient near 0, so weights agree to 2 * lr * steps; the first step's losses agree closely."""
    torch._dynamo.reset()
    steps = 2
    eager, eager_result = trained(data, "dt-gpt", steps=steps, log_every=1)
    compiled, result = trained(data, "dt-gpt", steps=steps, log_every=1, compile_step=True,
                               compile_mode="reduce-overhead", sync_free=True)
    lr = compiled.train_config.lr
    assert_same_weights(eager, compiled, atol=2 * lr * steps + 1e-6)
    assert result["metrics"][0]["bc_loss"] == pytest.approx(eager_result["metrics"][0]["bc_loss"], rel=1e-4)
    moved = [k for k, v in compiled.state_dict().items() if v.is_floating_point()
             and not torch.equal(v, qtkit.build("dt-gpt", dataset=data, **tiny("dt-gpt")).state_dict()[k])]
    assert moved, "the compiled step changed no weight"


def test_compile_options(data: TrajectoryDataset) -> None:
    agent = qtkit.build("dt-gpt", dataset=data, **tiny("dt-gpt"), compile_mode="reduce-overhead")
    assert agent.compile_options() == {"backend": "inductor", "mode": "reduce-overhead"}
    agent = qtkit.build("dt-gpt", dataset=data, **tiny("dt-gpt"), compile_backend="aot_eager",
                        compile_mode="reduce-overhead")
    assert agent.compile_options() == {"backend": "aot_eager"}  # modes are inductor's
    with pytest.raises(ConfigError, match="compile_mode"):
        qtkit.build("dt-gpt", dataset=data, **tiny("dt-gpt"), compile_mode="fast")


def test_dataset_arrays_are_not_copied_on_cpu() -> None:
    """On the CPU the device-resident arrays are the dataset's own (no second copy of the data)."""
    data = short_episodes()
    sampler = DeviceWindowSampler(data, 5, "cpu")
    assert sampler.obs.data_ptr() == np.asarray(data._obs).ctypes.data


# ------------------------------------------------------------------------------------------ no host reads
class ScalarReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Records where a tensor's value is read on the host (``.item()``, ``float(t)``, ``bool(t)``, ``if t:``: the
    op ``aten._local_scalar_dense``) or an output's shape depends on its values (``nonzero``, boolean indexing):
    on a GPU each is a host-device sync. Keyed by the innermost qtkit frame ``file:lineno: source``."""

    OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique")

    def __init__(self) -> None:
        super().__init__()
        self.sites: set[str] = set()

    @staticmethod
    def _boolean_index(func: Any, args: Any) -> bool:
        """``x[mask]`` / ``x[mask] = v`` with a bool mask: a data-dependent shape (torch finds the True positions
        below the dispatcher, so no ``nonzero`` shows up)."""
        if func._schema.name not in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
            return False
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func._schema.name in self.OPS or self._boolean_index(func, args):
            import traceback

            frames = [f for f in traceback.extract_stack() if "/qtkit/" in f.filename]
            where = frames[-1] if frames else None
            self.sites.add(f"{Path(where.filename).name}:{where.lineno}: {where.line}" if where else func._schema.name)
        return func(*args, **(kwargs or {}))


#: host reads a sync-free QT step may make: only on CPU tensors whatever the device (the generator's member draw),
#: or only when the tensors are on the CPU (gpt2's all-valid-mask shortcut, guarded by ``mask.device.type == "cpu"``)
CPU_ONLY_READS = ("i, j = int(members[0]), int(members[-1])", 'mask.device.type == "cpu"')


@pytest.mark.parametrize("preset", ["qt-gpt-nstep", "dt-gpt", "qtransformer"])
def test_sync_free_step_reads_nothing_from_the_device(data: TrajectoryDataset, preset: str) -> None:
    """A sync-free, non-logged step reads no tensor value on the host except the CPU-only reads listed above
    (the default path reads every metric and each loss's finiteness: the detector sees those). qtransformer's
    ``ar-q`` critic then trains on every window position, masked (``static_shapes``), instead of selecting the
    valid rows (a count that depends on the data)."""
    for sync_free in (True, False):
        agent, _ = trained(data, preset, steps=2, sync_free=sync_free, device_windows=True)
        sampler = DeviceWindowSampler(data, agent.train_config.context, "cpu", rtg_scale=agent.train_config.rtg_scale)
        batch = sampler.sample(agent.train_config.batch_size, agent.generator)
        with ScalarReads() as reads:
            agent.train_step(batch, diagnose=False)
        unexpected = {site for site in reads.sites if not any(ok in site for ok in CPU_ONLY_READS)}
        if sync_free:
            assert unexpected == set(), f"host reads of device values in a sync-free step: {sorted(unexpected)}"
        else:
            assert any("base.py" in site for site in unexpected), reads.sites  # the detector does see them


def test_observation_statistics_are_copied_to_an_accelerator_once(data: TrajectoryDataset) -> None:
    """Off the CPU (the meta device stands in for CUDA here) ``standardize`` reuses its copies of the statistics,
    and takes new ones when the agent's statistics are replaced (prepare, load)."""
    agent = qtkit.build("dt-gpt", dataset=data, **tiny("dt-gpt"))
    obs = torch.zeros(2, data.obs_dim, device="meta")
    agent.standardize(obs)
    first = dict(agent._stats_on_device)
    agent.standardize(obs)
    assert list(first) == [(torch.device("meta"), torch.float32)]
    key = next(iter(first))
    assert agent._stats_on_device[key][2] is first[key][2]  # reused, not copied again
    agent.obs_mean = torch.ones(data.obs_dim)
    agent.standardize(obs)
    assert agent._stats_on_device[key][0] is agent.obs_mean  # refreshed
    cpu = torch.ones(2, data.obs_dim)
    torch.testing.assert_close(agent.standardize(cpu), (cpu - agent.obs_mean) / agent.obs_std, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ precision switches
@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_switch_sets_the_cuda_matmul_flags(data: TrajectoryDataset, tf32: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.tf32`` is applied both ways when the device is CUDA (simulated here: no GPU needed)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
        agent = qtkit.build("dt-gpt", dataset=data, **tiny("dt-gpt"), device="cuda", tf32=tf32)
        assert agent.resolve_device() == torch.device("cuda")
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("preset", ["qt-gpt-nstep", "qtransformer"])
def test_bf16_precision_autocasts_the_training_matmuls(data: TrajectoryDataset, preset: str) -> None:
    """``precision: bf16`` runs the step's linear layers in bfloat16 (fp32: float32), weights staying float32."""
    for precision, want in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        agent, _ = trained(data, preset, steps=1, precision=precision)
        seen: set[torch.dtype] = set()
        linears = [m for module in agent.modules().values() for m in module.modules() if isinstance(m, torch.nn.Linear)]
        handles = [m.register_forward_hook(lambda m, i, out, seen=seen: seen.add(out.dtype)) for m in linears]
        batch = data.sample_windows(8, agent.train_config.context, agent.generator,
                                    rtg_scale=agent.train_config.rtg_scale)
        agent.train_step(batch)
        for h in handles:
            h.remove()
        assert seen == {want}, (precision, seen)
        assert all(p.dtype == torch.float32 for p in agent.policy.parameters())


# ------------------------------------------------------------------------------------------ every preset
@pytest.mark.parametrize("preset", qtkit.list_presets())
def test_fast_switches_reproduce_the_recorded_fingerprints(preset: str) -> None:
    """Every preset (pixel presets with uint8 frames on the device sampler included) trained with ``device_windows``
    and ``sync_free`` gives the weights of tests/fingerprints.json bit for bit, as the default path does; those
    with an ``ar-q`` critic (``reorders_sums``) give them bit for bit with ``device_windows`` alone, and with both
    switches the default path's weights to 1e-5 when nothing drops out."""
    from tests import test_fingerprint as fp

    recorded = fp.read()["presets"][preset]
    data = pixel_dataset(seed=0) if preset.endswith("-pixels") else pendulum_dataset(seed=0)

    def fast(sizes: dict[str, Any] | None = None, **switches: Any) -> Any:
        torch.manual_seed(fp.SEED)
        agent = qtkit.build(preset, dataset=data, seed=fp.SEED, device="cpu", **switches, **(sizes or tiny(preset)))
        agent.fit(data, steps=fp.STEPS, progress=False)
        return agent

    both = {"device_windows": True, "sync_free": True}
    agent = fast(**both)
    if not reorders_sums(agent, both):
        assert fp.fingerprint(agent.state_dict())["sha256"] == recorded["sha256"], preset
        return
    # ar-q's static shapes: the default path's weights up to summation order (without dropout); the device sampler
    # alone: the recorded weights bit for bit
    assert fp.fingerprint(fast(device_windows=True).state_dict())["sha256"] == recorded["sha256"], preset
    want, got = fast(without_dropout(preset)).state_dict(), fast(without_dropout(preset), **both).state_dict()
    for key, value in got.items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=1e-5, msg=key)
