"""The QT agent family: a sequence policy trained with L_DT + eta * L_Q against a critic.

Decision Transformer is this family with ``eta = 0`` and no critic (ALGORITHMS.md §2-§4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from qtkit.agents.base import Agent
from qtkit.registry import register


@dataclass
class QTTrainConfig:
    """Training parameters of the QT family (the ``train`` section of a preset)."""

    steps: int = 100_000  # gradient steps of fit() when not given
    batch_size: int = 256
    context: int = 20  # window length K
    gamma: float = 0.99
    eta: float = 1.0  # weight of L_Q; 0 gives Decision Transformer
    rtg_scale: float = 1000.0  # return-to-go is divided by this before the policy sees it
    lr: float = 3.0e-4
    weight_decay: float = 1.0e-4
    critic_lr: float = 3.0e-4
    critic_weight_decay: float = 0.0
    optimizer: str = "adam"  # any timm create_optimizer_v2 name
    scheduler: str = "cosine"  # any timm create_scheduler_v2 name, or "none"
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float | None = 9.0  # policy gradient-norm clip (None: off)
    critic_grad_clip: float | None = None
    tau: float = 0.005  # soft target update of the critic, every step
    ema_decay: float = 0.995  # EMA copy of the policy used for bootstrap actions
    ema_every: int = 5
    ema_start: int = 1000
    seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # for sweeps
    eval_episodes: int = 10
    device: str = "auto"  # "auto" (cuda when present), "cpu", "cuda", "cuda:1"...
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast (CPU or CUDA)
    tf32: bool = True  # allow TF32 matmuls on CUDA
    compile: bool = False  # torch.compile the policy and critic
    log_every: int = 100


@register("agent", "qt")
class QTAgent(Agent):
    """QT / Decision Transformer: GPT-style policy, optional twin critic, n-step backups."""

    TrainConfig = QTTrainConfig
