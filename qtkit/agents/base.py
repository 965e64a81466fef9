"""The agent base: owns components, config, device; families add training and acting."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from qtkit.config import dump_yaml


def make_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int, lr: float) -> Any:
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


def lr_schedule_update(scheduler: Any, step: int, every: int = 1) -> None:
    """Set the LR of a :func:`make_lr_scheduler` schedule for the update after gradient step ``step``.

    ``every > 1`` changes the LR only every ``every`` steps, to its value at the last multiple of
    ``every`` (the reference QT code steps ``CosineAnnealingLR`` once per 1000-step iteration).
    """
    if scheduler is not None:
        scheduler.step_update(num_updates=(step // every) * every)


@dataclass
class TrainConfig:
    """Training parameters every agent family has (a family's ``TrainConfig`` extends this and may
    change defaults). The fields and their type hints are the schema of a preset's ``train`` section."""

    steps: int = 100_000  # gradient steps of fit() when not given
    batch_size: int = 256  # windows per batch
    context: int = 20  # window length K
    gamma: float = 0.99
    rtg_scale: float = 1000.0  # return-to-go is divided by this before a sequence policy sees it
    lr: float = 3.0e-4
    weight_decay: float = 1.0e-4
    optimizer: str = "adamw"  # any timm create_optimizer_v2 name ("adam": L2 weight decay, the QT reference)
    decay_all_parameters: bool = False  # False: biases and norm weights get no weight decay; True: all (reference Adam)
    scheduler: str = "cosine"  # "constant" (warm-up, then lr), any timm create_scheduler_v2 name, or "none"
    warmup_steps: int = 0
    lr_schedule_steps: int | None = None  # steps the LR schedule spans (None: the run's steps)
    lr_update_every: int = 1  # steps between LR updates (the QT reference: 1000, once per iteration)
    min_lr: float = 0.0
    grad_clip: float | None = 9.0  # gradient-norm clip of the main update (None: off)
    tau: float = 0.005  # soft update of the critic's target network, every step
    seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # for sweeps
    eval_episodes: int = 10
    device: str = "auto"  # "auto" (cuda when present), "cpu", "cuda", "cuda:1"...
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast (CPU or CUDA)
    tf32: bool = True  # allow TF32 matmuls on CUDA
    compile: bool = False  # torch.compile the training forward passes
    log_every: int = 100

    def __post_init__(self) -> None:
        from qtkit.errors import ConfigError

        if isinstance(self.lr_update_every, bool) or not isinstance(self.lr_update_every, int) or self.lr_update_every < 1:
            raise ConfigError(f"train.lr_update_every must be an integer >= 1 (steps between LR updates), "
                              f"got {self.lr_update_every!r}.")
        if self.lr_schedule_steps is not None and self.lr_schedule_steps < 1:
            raise ConfigError(f"train.lr_schedule_steps must be >= 1 or null (the run's steps), "
                              f"got {self.lr_schedule_steps!r}.")


class Agent:
    """A built agent: its resolved ``config`` and its components (``policy``, ``critic``, ``backup``,
    ``sampler``). Subclasses (agent families) define ``TrainConfig`` and the training step."""

    TrainConfig: ClassVar[type]

    def __init__(
        self,
        config: dict[str, Any],
        policy: Any = None,
        critic: Any = None,
        backup: Any = None,
        sampler: Any = None,
    ) -> None:
        self.config = copy.deepcopy(config)
        self.train_config = self.TrainConfig(**config["train"])
        self.policy = policy
        self.critic = critic
        self.backup = backup
        self.sampler = sampler
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ introspection
    @property
    def name(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def shapes(self) -> dict[str, Any]:
        return dict(self.config["shapes"])

    def modules(self) -> dict[str, nn.Module]:
        """The trainable modules of the agent, by slot."""
        return {
            slot: module
            for slot in ("policy", "critic")
            if isinstance(module := getattr(self, slot), nn.Module)
        }

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
