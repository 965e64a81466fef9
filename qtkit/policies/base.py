"""The policy interface: :class:`Policy`, and the two ways a policy learns, :class:`BCPolicy` and :class:`CriticPolicy`.

A policy maps a window of the last K steps to actions (``obs``/``act``: observation/action sizes):

- ``states [B, K, obs]`` standardised observations;
- ``actions [B, K, act]`` the actions taken (the action at a position is never seen by that position's prediction);
- ``rtg [B, K]`` scaled return-to-go; ``timesteps [B, K]`` long; ``mask [B, K]`` bool (valid positions) or None;

and returns ``(actions [B, K, act] within [action_low, action_high], next-state prediction [B, K, obs] or None)``.

Every registered policy subclasses one of :class:`BCPolicy` (trained by behaviour cloning: the QT family) or
:class:`CriticPolicy` (no weights of its own: acts through a critic the agent attaches, the Q-Transformer's
``ar-argmax``). ``tests/test_contract_policy.py`` checks the contract.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

if TYPE_CHECKING:
    from qtkit.critics.base import Critic


class Policy(nn.Module, metaclass=abc.ABCMeta):
    """Base class and interface of policies: window -> actions.

    Attributes every policy has: ``obs_dim``, ``act_dim`` and the buffers ``action_low``/``action_high``
    ``[act]`` (saved with the weights).
    """

    obs_dim: int
    act_dim: int
    action_low: Tensor
    action_high: Tensor
    #: Whether :meth:`forward` also takes ``predict_next=False`` (skip the next-state prediction) and
    #: ``last_only=True`` (only the last position's action, ``[B, 1, act]``); the outputs asked for are those
    #: of the full pass. Samplers and the QT agent's bootstrap pass use them to skip work.
    supports_last_only: ClassVar[bool] = False

    @abc.abstractmethod
    def forward(
        self, states: Tensor, actions: Tensor, rtg: Tensor, timesteps: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``(actions [B, K, act], next-state prediction [B, K, obs] or None)`` for every position of the window."""


class BCPolicy(Policy):
    """A policy with weights, trained by behaviour cloning (plus whatever the agent adds, e.g. QT's L_Q)."""

    @abc.abstractmethod
    def bc_loss(
        self,
        predicted_actions: Tensor,
        predicted_next_states: Tensor | None,
        actions: Tensor,
        next_states: Tensor,
        mask: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Behaviour-cloning loss L_DT of a :meth:`forward` pass: ``(loss (0-d), detached 0-d metrics)``.

        ``predicted_actions``, ``actions [B, K, act]``; ``predicted_next_states`` ``[B, K, obs]`` or None,
        ``next_states [B, K, obs]`` (standardised); ``mask [B, K]`` (valid positions). Padding never counts.
        """


class CriticPolicy(Policy):
    """A policy without weights of its own that acts through a critic (e.g. the greedy decoding of an
    autoregressive critic). The agent calls :meth:`attach` once after building; the critic stays outside the
    policy's module tree, so its weights are saved once, under the critic."""

    @abc.abstractmethod
    def attach(self, critic: Critic) -> CriticPolicy:
        """Act through ``critic`` from now on (raises a ConfigError naming what the critic lacks); returns self."""
