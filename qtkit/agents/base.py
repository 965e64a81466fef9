"""The agent base: what every agent family shares, and the LR schedules.

:class:`Agent` owns the components (typed against their interfaces: :class:`~qtkit.policies.base.Policy`,
:class:`~qtkit.critics.base.Critic`, :class:`~qtkit.backups.base.Backup`, :class:`~qtkit.samplers.base.Sampler`),
the config, the device, the dataset's statistics, acting and evaluation, checkpoints and exact resume, and
:meth:`Agent.fit`, which hands the training to the shared loop (:func:`qtkit.training.train`). A family
(``qt``, ``qtransformer``) subclasses it and provides only what is its own: its ``TrainConfig``, its
optimisers (:meth:`Agent.make_optimizers`) and its training step (:meth:`Agent.train_step`). Families are
siblings: none subclasses another.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from qtkit.config import dump_yaml
from qtkit.cpu import cpu_training
from qtkit.encoders import Encoder, FlatEncoder
from qtkit.errors import CheckpointError, ShapeMismatchError, TrainingError
from qtkit.params import Interval, Matches, NonNegativeFloat, NonNegativeInt, OneOf, PositiveFloat, PositiveInt, check_dataclass
from qtkit.training import distributed

if TYPE_CHECKING:
    from timm.scheduler.scheduler import Scheduler

    from qtkit.agents.evaluation import Rollout
    from qtkit.backups.base import Backup
    from qtkit.critics.base import Critic
    from qtkit.data import Batch, TrajectoryDataset
    from qtkit.policies.base import Policy
    from qtkit.samplers.base import Sampler


_NON_FINITE_HINT = ("Lower the learning rate or eta, check the dataset for extreme values, or raise grad "
                    "clipping.")


def make_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int,
                      lr: float) -> Scheduler | None:
    """The LR schedule of ``optimizer`` (base rate ``lr``) over ``total_steps`` gradient steps.

    The schedule spans ``config.lr_schedule_steps`` when set (the reference QT code's cosine spans
    ``max_iters`` iterations while early stopping ends the run about half-way), else ``total_steps``.
    Drive it with :func:`lr_schedule_update` (which holds the LR for ``config.lr_update_every`` steps).

    ``config.scheduler``: ``"none"`` (no scheduler: ``lr`` throughout, no warm-up); ``"constant"`` (linear
    warm-up over ``warmup_steps`` from ``lr / 100``, then ``lr``: the Decision Transformer reference);
    or a timm ``create_scheduler_v2`` name such as ``"cosine"`` (after the warm-up, decays to ``min_lr`` at
    ``total_steps``). Returns a timm scheduler (call ``step_update(step)``) or None.
    """
    from timm.scheduler import create_scheduler_v2

    if config.scheduler == "none":
        return None
    constant = config.scheduler == "constant"
    span = config.lr_schedule_steps or total_steps
    sched, _ = create_scheduler_v2(
        optimizer, sched="cosine" if constant else config.scheduler,
        num_epochs=max(1, span - config.warmup_steps), warmup_epochs=config.warmup_steps, warmup_prefix=True,
        min_lr=lr if constant else config.min_lr,  # a cosine from lr to lr is flat
        warmup_lr=lr * 0.01 if config.warmup_steps else 1e-5, step_on_epochs=False, updates_per_epoch=1,
    )
    return sched


def lr_schedule_update(scheduler: Scheduler | None, step: int, every: int = 1) -> None:
    """Set the LR of a :func:`make_lr_scheduler` schedule for the update after gradient step ``step``.

    ``every > 1`` changes the LR only every ``every`` steps, to its value at the last multiple of
    ``every`` (the reference QT code steps ``CosineAnnealingLR`` once per 1000-step iteration).
    """
    if scheduler is not None:
        scheduler.step_update(num_updates=(step // every) * every)


#: ``train.scheduler`` names: qtkit's ``none`` and ``constant``, and timm's ``create_scheduler_v2`` schedules that
#: step per update (``plateau`` needs a metric and is not offered).
SCHEDULERS: tuple[str, ...] = ("none", "constant", "cosine", "tanh", "step", "multistep", "poly")


def timm_optimizer_names() -> tuple[str, ...]:
    """The optimiser names timm's ``create_optimizer_v2`` accepts (``train.optimizer``)."""
    from timm.optim import list_optimizers

    return tuple(list_optimizers())


@dataclass
class TrainConfig:
    """Training parameters every agent family has (a family's ``TrainConfig`` extends this and may
    change defaults). The fields and their type hints are the schema of a preset's ``train`` section."""

    steps: PositiveInt = 100_000  # gradient steps of fit() when not given
    batch_size: PositiveInt = 256  # windows per batch
    context: PositiveInt = 20  # window length K
    gamma: Annotated[float, Interval(gt=0, le=1)] = 0.99
    rtg_scale: PositiveFloat = 1000.0  # return-to-go is divided by this before a sequence policy sees it
    lr: PositiveFloat = 3.0e-4
    weight_decay: NonNegativeFloat = 1.0e-4
    # any timm create_optimizer_v2 name ("adam": L2 weight decay, the QT reference)
    optimizer: Annotated[str, OneOf(timm_optimizer_names)] = "adamw"
    decay_all_parameters: bool = False  # False: biases and norm weights get no weight decay; True: all (reference Adam)
    # "constant" (warm-up, then lr), a timm create_scheduler_v2 schedule ("cosine"...), or "none"
    scheduler: Annotated[str, OneOf(SCHEDULERS)] = "cosine"
    warmup_steps: NonNegativeInt = 0
    lr_schedule_steps: PositiveInt | None = None  # steps the LR schedule spans (None: the run's steps)
    lr_update_every: PositiveInt = 1  # steps between LR updates (the QT reference: 1000, once per iteration)
    min_lr: NonNegativeFloat = 0.0
    grad_clip: PositiveFloat | None = 9.0  # gradient-norm clip of the main update (None: off)
    tau: Annotated[float, Interval(gt=0, le=1)] = 0.005  # soft update of the critic's target network, every step
    seed: NonNegativeInt = 0
    seeds: list[NonNegativeInt] = field(default_factory=lambda: [0, 1, 2])  # for sweeps
    eval_episodes: PositiveInt = 10
    # "auto" (cuda when present), "cpu", "cuda", "cuda:1"...
    device: Annotated[str, Matches(r"auto|cpu|cuda(:\d+)?|mps", "cuda:0")] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast (CPU or CUDA)
    tf32: bool = True  # allow TF32 matmuls on CUDA (False: full fp32 matmuls)
    compile: bool = False  # torch.compile the training forward passes
    log_every: PositiveInt = 100
    # fast path (issue 18; benchmarks/RESULTS.md "Fast path (issue 18)" has the measurements behind the defaults)
    device_windows: bool = False  # sample windows on the training device from a device-resident copy of the data
    # no host-device sync in a step: metrics stay tensors, non-finite losses checked at log steps, critics train on
    # fixed shapes (Critic.static_shapes: ar-q computes every window position, masked, instead of the valid rows)
    sync_free: bool = False
    compile_step: bool = False  # torch.compile the whole train_step (graph breaks at backward and the optimiser)
    # torch.compile mode of compile / compile_step: "reduce-overhead" adds CUDA graphs (inductor, CUDA only)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"  # aot_eager/eager: no C++ compiler needed

    def __post_init__(self) -> None:
        check_dataclass(self, where="section 'train'")  # the ranges declared above (qtkit.params)


class Agent(abc.ABC):
    """A built agent: its resolved ``config`` and its components (``policy``, ``critic``, ``backup``,
    ``sampler``), and everything every family does the same way: the dataset's statistics, the fit
    set-up around the shared training loop, acting and evaluation, checkpoints and exact resume.

    A family (subclass) defines ``TrainConfig`` (the schema of a preset's ``train`` section), creates its
    optimisers in :meth:`make_optimizers` and does one gradient step in :meth:`train_step`; it may route
    its training passes through ``torch.compile`` (:meth:`compile_modules`).
    """

    TrainConfig: ClassVar[type[TrainConfig]]

    def __init__(
        self,
        config: dict[str, Any],
        policy: Policy,
        critic: Critic | None = None,
        backup: Backup | None = None,
        sampler: Sampler | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        self.config = copy.deepcopy(config)
        self.train_config = self.TrainConfig(**config["train"])
        shapes = self.config["shapes"]
        #: observations -> the features policy and critic see (flat: the standardised vector itself)
        self.encoder: Encoder = encoder if encoder is not None else FlatEncoder(
            shapes.get("obs_shape") or [shapes["obs_dim"]], shapes["obs_dim"])
        self.policy = policy
        #: the critic's own encoder (QT's ``train.critic_encoder: separate``); None: the critic reads ``encoder``'s
        self.critic_encoder: Encoder | None = None
        self.critic = critic
        if critic is not None:
            critic.static_shapes = self.train_config.sync_free  # no data-dependent row counts in a sync-free step
        self.backup = backup
        self.sampler = sampler
        self.device = torch.device("cpu")
        tc = self.train_config
        obs_dim = self.shapes["obs_dim"]
        # taken from the training dataset by prepare() and saved with the weights / the resume state
        self.obs_mean = torch.zeros(obs_dim)
        self.obs_std = torch.ones(obs_dim)
        proprio_dim = int(self.shapes.get("proprio_dim") or 0)  # image + vector observations: the vector's width
        self.proprio_mean = torch.zeros(proprio_dim)
        self.proprio_std = torch.ones(proprio_dim)
        self.return_targets: list[float] | None = None  # raw units, set from the dataset at fit
        self.ref_scores: tuple[float, float] | None = None
        self.env_spec: str | None = None  # the dataset's env (id or EnvSpec JSON), for evaluate()
        self.dataset_id: str | None = None  # the training dataset's id, for error messages
        # training state: the step counter, the batch generator, the optimisers (make_optimizers, at fit)
        self.step = 0
        self.generator = torch.Generator().manual_seed(tc.seed)
        torch.manual_seed(tc.seed)
        self.policy_optimizer: torch.optim.Optimizer | None = None
        self.critic_optimizer: torch.optim.Optimizer | None = None
        self.policy_scheduler: Scheduler | None = None
        self.critic_scheduler: Scheduler | None = None
        self._total_steps: int | None = None
        self.eval_history: list[dict[str, Any]] = []  # evaluations during fit (kept across resumes)
        self._compiled = False
        self._rollout: Rollout | None = None
        # train.sync_free: per loss kind, (non-finite seen [0-d bool], first such step, its value) on the device
        self._nonfinite: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self._checked_step = 0  # the step of the last check_finite()
        # standardize(): (obs_mean, obs_std, their copies) per (device, dtype), for accelerators
        self._stats_on_device: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ what a family provides
    @abc.abstractmethod
    def make_optimizers(self, total_steps: int) -> None:
        """Create the family's optimisers and LR schedulers for a run of ``total_steps`` gradient steps, and set
        ``self._total_steps``. Called by :meth:`fit` and on resume.

        The slots are ``policy_optimizer``, ``critic_optimizer``, ``policy_scheduler`` and ``critic_scheduler``
        (a family leaves the ones it does not use at None); checkpoints save their states under these names.
        """

    @abc.abstractmethod
    def train_step(self, batch: Batch, diagnose: bool = False) -> dict[str, float]:
        """One gradient step on ``batch`` (on the agent's device); advances :attr:`step` by one.

        ``diagnose``: also return the value diagnostics (:mod:`qtkit.agents.diagnostics`); the update is the
        same. Returns the step's metrics through :meth:`step_metrics`: floats, or with ``train.sync_free`` 0-d
        device tensors except on the ``diagnose`` steps. A non-finite loss raises :class:`~qtkit.errors.TrainingError`
        at that step (see :meth:`step_optimizer`), or with ``train.sync_free`` at the next ``diagnose`` step,
        checkpoint or evaluation (:meth:`check_finite`).
        """

    def compile_modules(self) -> None:
        """Route the training passes through ``torch.compile`` (``train.compile``); default: nothing to compile."""
        return None

    def compile_options(self) -> dict[str, Any]:
        """``torch.compile`` keyword arguments from ``train.compile_backend`` and ``train.compile_mode`` (a mode only
        for inductor; ``reduce-overhead`` records CUDA graphs of the compiled graphs on CUDA, nothing on CPU)."""
        tc = self.train_config
        options: dict[str, Any] = {"backend": tc.compile_backend}
        if tc.compile_backend == "inductor" and tc.compile_mode != "default":
            options["mode"] = tc.compile_mode
        return options

    def _compiled_train_step(self) -> Any:
        """``train.compile_step``: this agent's :meth:`train_step` through ``torch.compile`` (options:
        :meth:`compile_options`), one graph per piece between the graph breaks (backward, the optimiser's step, the
        generator's draws). The logged steps (``diagnose``) run eagerly: their value diagnostics take extra gradients
        with ``retain_graph`` (which compiled backward passes with donated buffers refuse), they are one step in
        ``log_every``, and the deferred non-finite check syncs there anyway. :meth:`step_optimizer` runs eagerly."""
        eager = self.train_step
        compiled = torch.compile(eager, **self.compile_options())
        # the update stays eager (its LR and the step counter change every step: traced, they would recompile);
        # wrapped here, not decorated, so that importing qtkit does not import torch._dynamo
        self.step_optimizer = torch.compiler.disable(self.step_optimizer)  # type: ignore[method-assign]

        def train_step(batch: Batch, diagnose: bool = False) -> dict[str, Any]:
            return eager(batch, True) if diagnose else compiled(batch, False)

        train_step.compiled = compiled  # type: ignore[attr-defined]
        return train_step

    # ------------------------------------------------------------------ introspection
    @property
    def name(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def shapes(self) -> dict[str, Any]:
        return dict(self.config["shapes"])

    def modules(self) -> dict[str, nn.Module]:
        """The modules whose weights the agent saves, by slot (``flat`` encoders have none)."""
        out: dict[str, nn.Module] = {"encoder": self.encoder, "policy": self.policy}
        if self.critic is not None:
            out["critic"] = self.critic
        return out

    # ------------------------------------------------------------------ observations -> features
    def encode(self, observations: Tensor, proprio: Tensor | None = None, encoder: Encoder | None = None) -> Tensor:
        """Raw observations ``[..., *obs_shape]`` (or flattened ``[..., obs_dim]``) -> features ``[..., F]`` of
        ``encoder`` (default the agent's; the critic's own with ``critic_encoder``).

        Vector observations are standardised with the dataset's statistics first (``flat`` then passes them on:
        the numbers of a preset without an encoder are unchanged); images go to the encoder as they are (uint8),
        with the raw proprioceptive vector ``proprio [..., P]`` (image + vector observations; standardised here
        with the dataset's ``proprio_mean``/``proprio_std``) when the data has one.
        """
        encoder = self.encoder if encoder is None else encoder
        if encoder.is_image:  # frames [..., H, W, C] ([..., F, H, W, C] stacked), or flattened [..., H * W * C]
            shape = tuple(encoder.obs_shape)
            if tuple(observations.shape[-len(shape):]) != shape:  # flattened frames (an env's flat observations)
                observations = observations.reshape(*observations.shape[:-1], *shape)
            if proprio is not None:
                proprio = (proprio - self.proprio_mean.to(proprio)) / self.proprio_std.to(proprio)
            return encoder(observations, proprio)
        return encoder(self.standardize(observations), proprio)

    def encode_batch(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``(states, next_states)``: features ``[B, K, F]`` of a batch's observations and next observations.

        ``states`` carry the encoder's gradient (the encoder learns in the optimiser that owns it); ``next_states``
        (targets of the next-state prediction and of the bootstrap) never do.
        """
        states = self.encode(batch.observations, batch.proprio)
        with torch.no_grad():
            next_states = self.encode(batch.next_observations, batch.next_proprio)
        return states, next_states

    def with_encoder(self, module: nn.Module) -> nn.Module:
        """``module``, plus the encoder when it has weights: what the optimiser that trains the encoder (and its
        gradient clip) updates. Without encoder weights this is ``module`` itself, so the optimiser is exactly the
        one before encoders."""
        if not any(True for _ in self.encoder.parameters()):
            return module
        return nn.ModuleDict({"module": module, "encoder": self.encoder})

    def num_parameters(self) -> dict[str, int]:
        return {slot: sum(p.numel() for p in m.parameters()) for slot, m in self.modules().items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All weights, flat: ``{"policy.xxx": tensor, "critic.yyy": tensor}``."""
        out: dict[str, torch.Tensor] = {}
        for slot, module in self.modules().items():
            for key, value in module.state_dict().items():
                out[f"{slot}.{key}"] = value
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for slot, module in self.modules().items():
            prefix = f"{slot}."
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def to(self, device: str | torch.device) -> Agent:
        self.device = torch.device(device)
        for module in self.modules().values():
            module.to(self.device)
        return self

    def describe(self) -> str:
        return dump_yaml(self.config)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{slot}={spec['type']!r}"
            for slot in ("policy", "critic", "backup", "sampler")
            if (spec := self.config.get(slot))
        )
        return f"{type(self).__name__}({self.name!r}, {parts})"

    def train_config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.train_config)

    # ------------------------------------------------------------------ set-up
    def resolve_device(self, strict: bool = True) -> torch.device:
        """The device of ``train.device`` ("auto": cuda when present). ``strict``: a CUDA device that this machine
        does not have raises a :class:`~qtkit.errors.ConfigError` (else: CPU, for loading a checkpoint)."""
        wanted = self.train_config.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(wanted)
        except RuntimeError as exc:
            from qtkit.errors import ConfigError

            raise ConfigError(f"train.device={wanted!r} is not a device ({exc}). Use 'auto', 'cpu', 'cuda' or "
                              "'cuda:N'.") from None
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            present = count > (device.index or 0)
            if present:
                pass
            elif not strict:
                return torch.device("cpu")
            else:
                from qtkit.errors import ConfigError

                have = f"only {count} CUDA device(s)" if count else "no CUDA GPU (torch.cuda.is_available() is False)"
                raise ConfigError(f"train.device={wanted!r} but this machine has {have}. Fix: --set device=cpu "
                                  "(or device=auto: the GPU when there is one).")
        if device.type == "cuda" and (dp := distributed.world()) is not None:
            count = torch.cuda.device_count()
            if dp.local_rank >= count:
                from qtkit.errors import ConfigError

                raise ConfigError(f"rank {dp.rank} trains on cuda:{dp.local_rank} (its LOCAL_RANK) but this machine has "
                                  f"{count} CUDA device(s). Fix: at most {count} processes per machine (--nproc / "
                                  "torchrun --nproc-per-node), or --set device=cpu.")
            device = torch.device("cuda", dp.local_rank)  # data-parallel: each rank on its own GPU (LOCAL_RANK)
        if device.type == "cuda":  # TF32 tensor-core matmuls (process-wide, like torch's own flags)
            torch.backends.cuda.matmul.allow_tf32 = self.train_config.tf32
            torch.backends.cudnn.allow_tf32 = self.train_config.tf32
        return device

    def check_fit(self, dataset: TrajectoryDataset, strict_context: bool = True) -> None:
        """What :meth:`fit` checks before any work: the shapes, the device, and that the context fits the data.

        A context longer than the dataset's longest episode makes every window mostly padding (memory and time grow
        with the context: 5000 on 300-step episodes took 23 GB). ``strict_context`` (``qtkit train``) raises a
        :class:`~qtkit.errors.ParameterRangeError`; else (``fit``, where a one-step bandit with a context of 2 is a
        legitimate test) a ``UserWarning`` says the same.
        """
        self.check_dataset(dataset)
        self.resolve_device()
        longest = int(np.max(dataset.episode_lengths)) if dataset.num_episodes else 0
        context = self.train_config.context
        if context > longest:
            from qtkit.errors import ParameterRangeError

            name = dataset.metadata.get("dataset_id") or dataset.name
            message = (
                f"train.context={context} is longer than the longest episode of dataset {name!r} ({longest} steps): "
                f"every window would be mostly padding, costing about {context / max(longest, 1):.0f} times the memory and "
                f"time. Fix: --set context={min(longest, 20)} (any context <= {longest})."
            )
            if strict_context:
                raise ParameterRangeError(message)
            import warnings

            warnings.warn(message, UserWarning, stacklevel=3)

    def autocast(self) -> torch.autocast:
        enabled = self.train_config.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def check_dataset(self, dataset: TrajectoryDataset) -> None:
        """Agent and dataset must agree on observation and action sizes (names both shapes)."""
        for key, theirs in (("obs_dim", int(dataset.obs_dim)), ("act_dim", int(dataset.act_dim)),
                            ("proprio_dim", int(dataset.proprio_dim))):
            mine = int(self.shapes.get(key) or 0)
            if mine != theirs:
                raise ShapeMismatchError(
                    f"agent {self.name!r} was built with {key}={mine} but dataset "
                    f"{dataset.metadata.get('dataset_id', dataset)!r} has {key}={theirs}. Build the agent "
                    "with qtkit.build(..., dataset=dataset) so the shapes come from the data."
                )

    def prepare(self, dataset: TrajectoryDataset) -> None:
        """Take observation statistics, return targets and reference scores from the dataset."""
        self.check_dataset(dataset)
        self.obs_mean = torch.tensor(np.array(dataset.obs_mean), dtype=torch.float32)
        self.obs_std = torch.tensor(np.array(dataset.obs_std), dtype=torch.float32)
        self.proprio_mean = torch.tensor(np.array(dataset.proprio_mean), dtype=torch.float32)
        self.proprio_std = torch.tensor(np.array(dataset.proprio_std), dtype=torch.float32)
        best = float(np.max(dataset.episode_returns))
        targets = self.sampler.targets if self.sampler is not None else None
        fractions = self.sampler.target_fractions if self.sampler is not None else [1.0]
        self.return_targets = list(targets) if targets else [best * f for f in fractions]
        lo, hi = dataset.metadata.get("ref_min_score"), dataset.metadata.get("ref_max_score")
        self.ref_scores = (float(lo), float(hi)) if lo is not None and hi is not None else None
        self.dataset_id = dataset.metadata.get("dataset_id")
        spec = dataset.metadata.get("eval_env_spec") or dataset.metadata.get("env_spec") or dataset.metadata.get("env_id")
        self.env_spec = spec if spec is None or isinstance(spec, str) else spec.to_json()  # an EnvSpec
        if self.critic is not None:
            self.critic.prepare(dataset)  # e.g. ar-q resolves its conservative floor from the rewards

    def standardize(self, observations: Tensor) -> Tensor:
        if observations.device.type == "cpu":
            return (observations - self.obs_mean.to(observations)) / self.obs_std.to(observations)
        # on an accelerator: the statistics' device copies are cached (a blocking host-to-device copy syncs)
        key = (observations.device, observations.dtype)
        cached = self._stats_on_device.get(key)
        if cached is None or cached[0] is not self.obs_mean or cached[1] is not self.obs_std:
            cached = (self.obs_mean, self.obs_std, self.obs_mean.to(observations), self.obs_std.to(observations))
            self._stats_on_device[key] = cached
        return (observations - cached[2]) / cached[3]

    # ------------------------------------------------------------------ training
    def step_optimizer(self, optimizer: torch.optim.Optimizer | None, scheduler: Scheduler | None, loss: Tensor,
                       parameters: Iterable[Tensor], clip: float | None, what: str) -> None:
        """One update of ``optimizer`` from ``loss``: backward, optional gradient-norm ``clip``, step, then the
        LR of the next step. A non-finite ``loss`` (``what``: "policy", "critic") raises a TrainingError and
        changes nothing; with ``train.sync_free`` it is only recorded on the device (no sync) and raised by
        :meth:`check_finite` at the next logged step, checkpoint or evaluation (the updates in between applied).

        Data-parallel training (:mod:`qtkit.training.distributed`): every rank raises when the loss is non-finite on
        any rank, at that step, or with ``sync_free`` at the same later check on every rank (each records the mean
        of the ranks' losses, which is non-finite on all of them when it is on any; the NaN gradients the all-reduce
        then spreads keep the ranks in step). The gradients are averaged over the ranks (one bucketed all-reduce)
        before the clip."""
        if optimizer is None:
            raise TrainingError("optimizers are created by fit(); call agent.fit(dataset, steps) to train.")
        if self.train_config.sync_free:
            # device-side bookkeeping, checked by check_finite() at log steps (data-parallel: the ranks' mean loss)
            self._watch_loss(distributed.rank_mean(loss), what)
        else:
            distributed.check_finite(loss, what, self.step)  # data-parallel: all ranks agree (no-op in one process)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"non-finite {what} loss ({float(loss.detach())}) at step {self.step}; the step was not applied. "
                    f"{_NON_FINITE_HINT}"
                )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if distributed.active() is not None:
            parameters = list(parameters)
            distributed.average_gradients(parameters)  # the global batch's gradient on every rank
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()
        lr_schedule_update(scheduler, self.step + 1, self.train_config.lr_update_every)

    def _watch_loss(self, loss: Tensor, what: str) -> None:
        """``train.sync_free``: remember, on the loss's device and without a sync, whether ``loss`` (0-d) is
        non-finite, and the step and value of the first non-finite one since the last :meth:`check_finite`."""
        loss = loss.detach().float()
        bad = ~torch.isfinite(loss)
        step = self.step + 1  # the number metrics.csv gives this step
        seen = self._nonfinite.get(what)
        if seen is None:
            self._nonfinite[what] = (bad, torch.where(bad, step, -1), loss)
            return
        flag, first, value = seen
        self._nonfinite[what] = (flag | bad, torch.where(flag, first, torch.where(bad, step, -1)),
                                 torch.where(flag, value, loss))

    def check_finite(self) -> None:
        """Raise the :class:`~qtkit.errors.TrainingError` of a non-finite loss seen since the last check
        (``train.sync_free``; one host-device sync; nothing to do otherwise).

        Called by :meth:`step_metrics` on the steps the loop logs, and before every checkpoint and evaluation, so
        a checkpoint never holds weights updated by a non-finite loss. Unlike the per-step check (``sync_free``
        false), the updates between the bad step and this check were applied: the weights in memory are not
        usable, the last good checkpoint is. The failure stays armed: a later save or check raises again.
        """
        if not self._nonfinite:
            self._checked_step = self.step
            return
        bad = [(what, int(first), float(value)) for what, (flag, first, value) in self._nonfinite.items()
               if bool(flag)]
        if not bad:
            self._nonfinite.clear()
            self._checked_step = self.step
            return
        what, first, value = min(bad, key=lambda b: b[1])
        raise TrainingError(
            f"non-finite {what} loss ({value}) at step {first}, found at step {self.step} (steps numbered as in "
            f"metrics.csv). train.sync_free checks the losses every log_every steps and before checkpoints and "
            f"evaluations, not at each step (last check: step {self._checked_step}): the updates of steps "
            f"{first}..{self.step} were applied, so the weights in memory are unusable and no checkpoint is written "
            f"from them. {_NON_FINITE_HINT} For the exact per-step check, which stops before a bad update: "
            "--set sync_free=false."
        )

    def step_metrics(self, metrics: dict[str, Tensor | float], diagnose: bool) -> dict[str, Any]:
        """What a family's :meth:`train_step` returns: the step's metrics as floats (one sync per metric), or with
        ``train.sync_free`` detached tensors still on the device, except on the logged steps (``diagnose``), where
        the deferred non-finite check runs first (:meth:`check_finite`) and the metrics are read as floats."""
        if not self.train_config.sync_free:
            return {k: float(v) for k, v in metrics.items()}
        if diagnose:
            self.check_finite()
            return {k: float(v) for k, v in metrics.items()}
        return {k: v.detach() if isinstance(v, Tensor) else v for k, v in metrics.items()}

    def train_mode(self) -> None:
        """Back to training after an evaluation during :meth:`fit` (the shared loop calls it): policy and critic.

        (Before 2026-12-02 only the policy was switched back, so an ``ar-q`` critic trained without dropout after
        the first evaluation and a resume after an evaluation was not exact.)
        """
        self.policy.train()
        if self.critic is not None:
            self.critic.train()
        self.encoder.train()
        if self.critic_encoder is not None:
            self.critic_encoder.train()

    def fit(
        self,
        dataset: TrajectoryDataset | str,
        steps: int | None = None,
        *,
        eval_env: Any = None,
        eval_every: int | None = None,
        eval_episodes: int | None = None,
        log_dir: str | Path | None = None,
        resume: str | Path | None = None,
        checkpoint_every: int | None = None,
        until: int | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Train for ``steps`` gradient steps (default ``train.steps``) on ``dataset``.

        Evaluates on ``eval_env`` every ``eval_every`` steps and at the end; writes metrics (CSV,
        TensorBoard) and a checkpoint to ``log_dir`` (every ``checkpoint_every`` steps and at the end, before the
        final evaluation); ``resume`` continues a checkpoint exactly. Resuming, ``steps`` None (or the checkpoint's)
        continues the run as it was; another ``steps`` (not below the checkpoint's step) changes the run's length:
        the LR schedule then spans the new total from the checkpoint's step on.
        Every argument is checked before any work (ParameterRangeError, ConfigError); a context longer than the
        longest episode is a warning here (an error in ``qtkit train``: :meth:`check_fit`).
        ``until`` stops early at that step (the LR schedule still spans ``steps``), e.g. to train in chunks.
        Returns ``{"final": eval or None, "best": eval or None, "steps": n, "metrics": rows}``.

        Sets the agent up (statistics, device, optimisers, or everything from the checkpoint), then runs the
        shared training loop (:func:`qtkit.training.train`), which owns the schedule, logging and results.

        Under an initialised ``torch.distributed`` process group of N > 1 processes (torchrun, ``qtkit train --nproc``,
        or the caller's own), call it on every rank: it trains data-parallel (:mod:`qtkit.training.distributed`):
        ``train.batch_size`` is the global batch (it must divide by N), each rank trains on its slice of one shared
        batch stream, gradients are averaged, rank 0 writes ``log_dir`` and evaluates.
        """
        if isinstance(dataset, str):
            from qtkit.data import load_dataset

            dataset = load_dataset(dataset)
        tc = self.train_config
        if dataset.gamma != tc.gamma:  # Monte-Carlo returns must use the agent's discount
            dataset = dataset.with_gamma(tc.gamma)
        from qtkit.training.loop import check_schedule

        check_schedule(steps, eval_every=eval_every, eval_episodes=eval_episodes, checkpoint_every=checkpoint_every,
                       until=until)
        self.check_fit(dataset, strict_context=False)
        dp = distributed.world()  # a process group of > 1 processes: data-parallel training
        if dp is not None:
            distributed.check_batch_size(tc.batch_size, dp.world_size)
        with distributed.sharding(dp):
            return self._fit(dataset, steps, eval_env=eval_env, eval_every=eval_every, eval_episodes=eval_episodes,
                             log_dir=log_dir, resume=resume, checkpoint_every=checkpoint_every, until=until,
                             progress=progress)

    def _fit(self, dataset: TrajectoryDataset, steps: int | None, *, eval_env: Any, eval_every: int | None,
             eval_episodes: int | None, log_dir: str | Path | None, resume: str | Path | None,
             checkpoint_every: int | None, until: int | None, progress: bool) -> dict[str, Any]:
        """:meth:`fit` after its checks (inside :func:`qtkit.training.distributed.sharding` when data-parallel)."""
        from qtkit.training import Schedule, train

        tc = self.train_config
        dp = distributed.active()
        total = int(steps if steps is not None else tc.steps)
        if resume is not None:
            self._restore(resume, dataset, total=steps)
            total = self._total_steps or total
        else:
            self.prepare(dataset)
            self.to(self.resolve_device())
            self.make_optimizers(total)
            self.eval_history = []
            distributed.seed_rank(tc.seed)  # data-parallel: rank r > 0 gets its own dropout/augmentation stream
        if dp is not None:
            distributed.broadcast_modules(self.modules().values())  # every rank starts from rank 0's weights
        if tc.compile and not self._compiled:
            self.compile_modules()
            self._compiled = True
        if tc.compile_step and "train_step" not in self.__dict__:
            self.train_step = self._compiled_train_step()  # type: ignore[method-assign]
        self.train_mode()
        self._nonfinite.clear()
        self._checked_step = self.step

        device_sampler = None
        if tc.device_windows and not (dataset.is_image and dataset.is_lazy):  # lazy frames: the host sampler
            from qtkit.data.device_windows import DeviceWindowSampler

            device_sampler = DeviceWindowSampler(dataset, tc.context, self.device, rtg_scale=tc.rtg_scale,
                                                 frame_stack=self.encoder.frame_stack)

        rows = distributed.shard_rows(tc.batch_size)  # data-parallel: this rank's slice of the global batch

        def next_batch() -> Batch:
            if device_sampler is not None:  # the same windows, gathered on the device
                return device_sampler.sample(tc.batch_size, self.generator, rows=rows)
            batch = dataset.sample_windows(tc.batch_size, tc.context, self.generator, rtg_scale=tc.rtg_scale,
                                           frame_stack=self.encoder.frame_stack, rows=rows)
            return batch.to(self.device)

        episodes = tc.eval_episodes if eval_episodes is None else eval_episodes
        schedule = Schedule(steps=total, until=until, log_every=tc.log_every, eval_every=eval_every,
                            eval_episodes=episodes, eval_seed=tc.seed + 10_000, checkpoint_every=checkpoint_every)
        # the CPU-only process settings, behind QTKIT_CPU_TUNING (qtkit.cpu); the denormal flag is put back on return
        with cpu_training() if self.device.type == "cpu" else contextlib.nullcontext():
            return train(self, next_batch, schedule, eval_env=eval_env, log_dir=log_dir, progress=progress)

    # ------------------------------------------------------------------ acting
    def evaluate(self, env: Any = None, episodes: int = 10, seed: int = 0, num_envs: int | None = None,
                 progress: bool = False, normalized: bool | None = None) -> dict[str, Any]:
        """Run ``episodes`` episodes with the sampler; mean/std return and normalised score.

        ``normalized``: None reports the normalised score when the training dataset had reference
        scores; True requires it (a :class:`~qtkit.errors.DataError` names the dataset otherwise).
        """
        from qtkit.agents.evaluation import evaluate_agent

        self.check_finite()
        if normalized and self.ref_scores is None:
            from qtkit.errors import DataError

            raise DataError(
                f"agent {self.name!r} cannot report a normalised score: its training dataset "
                f"{self.dataset_id or '(unknown)'!r} has no reference scores (ref_min_score / ref_max_score). "
                "Load the dataset with qtkit.data.load_dataset(..., ref_min_score=R_random, ref_max_score=R_expert) "
                "before fit, or evaluate raw returns (normalized=None)."
            )
        return evaluate_agent(self, env, episodes=episodes, seed=seed, num_envs=num_envs, progress=progress)

    def rollout(self, num_envs: int = 1, seed: int = 0) -> Rollout:
        """A stateful acting context for ``num_envs`` environments (see :class:`~qtkit.agents.evaluation.Rollout`)."""
        from qtkit.agents.evaluation import Rollout

        return Rollout(self, num_envs=num_envs, seed=seed)

    def act(self, observations: Any, rollout: Rollout | None = None) -> np.ndarray:
        """Actions for one observation ``[obs]`` or a batch ``[E, obs]`` (numpy). Keeps the context in
        ``rollout`` (default: an internal one, reset by :meth:`reset`); call ``rollout.observe(rewards, dones)``
        after each env step so the return-to-go histories advance."""
        obs = np.asarray(observations, dtype=np.float32)
        single = obs.ndim == 1
        obs = obs[None] if single else obs
        if rollout is None:
            if self._rollout is None or self._rollout.num_envs != obs.shape[0]:
                self._rollout = self.rollout(num_envs=obs.shape[0], seed=self.train_config.seed)
            rollout = self._rollout
        action = rollout.act(obs)
        return action[0] if single else action

    def reset(self) -> None:
        self._rollout = None

    # ------------------------------------------------------------------ checkpoints
    def _weights(self) -> dict[str, Tensor]:
        weights = self.state_dict()
        weights["obs_mean"] = self.obs_mean
        weights["obs_std"] = self.obs_std
        if self.proprio_mean.numel():  # image + vector observations only: other checkpoints are as they were
            weights["proprio_mean"] = self.proprio_mean
            weights["proprio_std"] = self.proprio_std
        return weights

    def _optimizer_slots(self) -> dict[str, Any]:
        """The optimisers and schedulers by the names their states have in a checkpoint (None: unused)."""
        return {"policy_optimizer": self.policy_optimizer, "critic_optimizer": self.critic_optimizer,
                "policy_scheduler": self.policy_scheduler, "critic_scheduler": self.critic_scheduler}

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "total_steps": self._total_steps,
            "return_targets": self.return_targets,
            "ref_scores": self.ref_scores,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            **{name: None if o is None else o.state_dict() for name, o in self._optimizer_slots().items()},
            "eval_history": self.eval_history,
            "env_spec": self.env_spec,
            "dataset_id": self.dataset_id,
            "world_size": dp.world_size if (dp := distributed.active()) is not None else 1,
        }

    def save(self, directory: str | Path) -> Path:
        """Save config (YAML), weights (safetensors) and the resume state, atomically.

        During a data-parallel fit every rank calls it: the ranks' torch random states are gathered into the state
        (``rank_rng``, for an exact resume) and rank 0 alone writes."""
        from qtkit.checkpoint import save_checkpoint

        self.check_finite()  # train.sync_free: never write weights updated by a non-finite loss
        state = self._state()
        dp = distributed.active()
        if dp is not None:
            state["rank_rng"] = distributed.gather_rng_states()
            if not dp.is_main:
                return Path(directory)
        return save_checkpoint(directory, self.config, self._weights(), state)

    def load_weights(self, weights: dict[str, Tensor], state: dict[str, Any]) -> None:
        self.obs_mean = weights.pop("obs_mean")
        self.obs_std = weights.pop("obs_std")
        if "proprio_mean" in weights:
            self.proprio_mean = weights.pop("proprio_mean")
            self.proprio_std = weights.pop("proprio_std")
        self.load_state_dict(weights)
        self.return_targets = state.get("return_targets")
        self.ref_scores = tuple(state["ref_scores"]) if state.get("ref_scores") else None
        self.step = int(state.get("step", 0))
        self.eval_history = list(state.get("eval_history") or [])
        self.env_spec = state.get("env_spec")
        self.dataset_id = state.get("dataset_id")

    def check_resumable(self, config: dict[str, Any], directory: str | Path) -> None:
        """A checkpoint's ``config`` must equal this agent's; else a CheckpointError lists every difference.

        The checkpoint's config is resolved again first, so a parameter added to qtkit since it was written (absent
        there) counts as its default: a run checkpointed by an older qtkit resumes when nothing it set changed."""
        from qtkit.config import resolve_config
        from qtkit.errors import QtkitError

        with contextlib.suppress(QtkitError):  # e.g. a parameter removed since: compare as written (then listed)
            config = resolve_config(config)
        diff = config_differences(config, self.config)
        if diff:
            raise CheckpointError(
                f"cannot resume {self.name!r} from {str(directory)!r}: the checkpoint was made with another config "
                f"({len(diff)} difference{'s' if len(diff) > 1 else ''}): " + "; ".join(diff) + ". Resume with the "
                "same preset, --set overrides and --seed, or start a new run (e.g. --overwrite, or another --out)."
            )

    def _restore(self, directory: str | Path, dataset: TrajectoryDataset, total: int | None = None) -> None:
        """Continue the checkpoint in ``directory`` exactly; ``total``: a new length of the run (None: its own)."""
        from qtkit.checkpoint import read_checkpoint, recover_checkpoint

        dp = distributed.active()
        if dp is None or dp.is_main:
            recover_checkpoint(directory)  # moves files: one rank only, the others read after it
        distributed.barrier()
        config, weights, state = read_checkpoint(directory)
        self.check_resumable(config, directory)
        distributed.check_world_size(int(state.get("world_size", 1)), directory)
        self.check_dataset(dataset)
        self.load_weights(weights, state)
        self.to(self.resolve_device())
        saved_total = int(state["total_steps"])
        if total is not None and total < self.step:
            from qtkit.errors import ParameterRangeError

            raise ParameterRangeError(
                f"cannot resume {str(directory)!r} with steps={total}: the checkpoint is already at step {self.step}. "
                f"Give steps >= {self.step} (or leave it out to finish the run's {saved_total} steps)."
            )
        new_total = saved_total if total is None else int(total)
        self.make_optimizers(new_total)
        for name, target in self._optimizer_slots().items():
            saved = state.get(name)
            if target is None or saved is None:
                continue
            if name.endswith("_scheduler") and new_total != saved_total:
                continue  # the schedule of the new length (timm schedulers are functions of the step)
            target.load_state_dict(saved)
        if new_total != saved_total:
            every = self.train_config.lr_update_every
            lr_schedule_update(self.policy_scheduler, self.step, every)
            lr_schedule_update(self.critic_scheduler, self.step, every)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if dp is not None:  # each rank continues its own random stream
            cpu_rng, cuda_rng = state["rank_rng"][dp.rank]
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda_rng)


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: config}
    return {prefix[:-1]: config}


def config_differences(checkpoint: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Every key (dotted: ``train.batch_size``) where two agent configs differ, with both values:
    ``"train.batch_size: 8 in the checkpoint, 16 now"`` (``description`` is ignored)."""
    theirs = _flatten({k: v for k, v in checkpoint.items() if k != "description"})
    mine = _flatten({k: v for k, v in now.items() if k != "description"})
    missing = object()
    out = []
    for key in sorted(set(theirs) | set(mine)):
        a, b = theirs.get(key, missing), mine.get(key, missing)
        if a != b:
            shown_a = "absent" if a is missing else f"{a!r}"
            shown_b = "absent" if b is missing else f"{b!r}"
            out.append(f"{key}: {shown_a} in the checkpoint, {shown_b} now")
    return out
