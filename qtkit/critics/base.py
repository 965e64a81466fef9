"""The critic interface (:class:`Critic`, :class:`AutoregressiveCritic`) and what critics share (:func:`soft_update`).

A critic is a Q-function Q(s, a) that owns its target copy and its TD loss; the agent only decides when to
call it. Shapes (``obs``/``act``: observation/action sizes; ``E``: critic members or heads):

- states ``[..., obs]`` are standardised observations; actions ``[..., act]`` are raw (within the bounds);
- training passes a window batch: ``[B, K, obs]`` with ``[B, K, act]`` and ``mask [B, K]`` (valid positions);
- samplers score candidates: ``[E_envs, N, obs]`` with ``[E_envs, N, act]``.

Every registered critic subclasses :class:`Critic` (``tests/test_contract_critic.py`` checks the contract);
the Q-Transformer's autoregressive critic also declares :class:`AutoregressiveCritic`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from qtkit.data import Batch


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online`` for every parameter; buffers are copied.

    ``tau = 1`` copies the online module, ``tau = 0`` leaves the target unchanged. Both modules
    must have the same structure.
    """
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


class Critic(nn.Module, metaclass=abc.ABCMeta):
    """Base class and interface of critics: Q(s, a) with a target copy, bootstrap values and a TD loss.

    Attributes every critic has: ``obs_dim``, ``act_dim``, ``net`` (the online network: the parameters the
    agent's critic optimiser trains; the target copy is not in it and never needs a gradient).
    """

    obs_dim: int
    act_dim: int
    #: The online network (trained); the target copy lives beside it and is only moved by :meth:`update_target`.
    net: nn.Module
    #: Whether :meth:`bootstrap` needs the policy's actions on the window (the QT agent then keeps an EMA copy
    #: of its policy to produce them); False: the critic bootstraps on its own (e.g. a max over bins).
    needs_policy_actions: ClassVar[bool] = False
    #: Train on fixed shapes: compute every window position and mask the invalid ones instead of selecting the valid
    #: rows (whose count is data-dependent: a host-device sync, and a new shape for CUDA graphs). Set by the agent
    #: from ``train.sync_free``; equal to the default up to float summation order when nothing drops out (dropout
    #: masks are drawn for every position then). A critic without row selection ignores it.
    static_shapes: bool = False

    @abc.abstractmethod
    def forward(self, states: Tensor, actions: Tensor) -> Tensor:
        """Q of every member (online net), differentiable in ``actions``: ``[..., obs]``, ``[..., act]`` -> ``[E, ...]``.

        On a window: ``states [B, K, obs]``, ``actions [B, K, act]`` -> ``[E, B, K]``.
        """

    @abc.abstractmethod
    def score(self, states: Tensor, actions: Tensor) -> Tensor:
        """Candidate scores for samplers (from the target copy, min over members): ``[..., obs]``, ``[..., act]`` -> ``[...]``."""

    @abc.abstractmethod
    def bootstrap(
        self, states: Tensor, next_states: Tensor, policy_actions: Tensor | None, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Bootstrap values of a window, from the target copy (no gradient).

        ``states``/``next_states [B, K, obs]``, ``policy_actions [B, K, act]`` (given when
        :attr:`needs_policy_actions`, else None), ``mask [B, K]``. Returns ``(next_values [B, K], next_valid [B, K])``:
        ``next_values[:, t]`` is the value of the state after step t, ``next_valid`` where it is defined.
        """

    @abc.abstractmethod
    def loss(
        self, states: Tensor, actions: Tensor, targets: Tensor, valid: Tensor, batch: Batch | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The critic's training loss against the backup's ``targets``.

        ``states [B, K, obs]``, ``actions [B, K, act]`` (the dataset's), ``targets [B, K]``, ``valid [B, K]``
        (where a target is defined; the others may hold anything, NaN included), ``batch`` (the whole
        :class:`~qtkit.data.Batch`, for critics that read more, e.g. ``returns``). Returns ``(loss (0-d),
        metrics)`` with detached 0-d metrics.
        """

    @abc.abstractmethod
    def update_target(self, tau: float) -> None:
        """Polyak update of the target copy: ``target <- (1 - tau) * target + tau * online``."""

    def prepare(self, dataset: Any) -> float | None:
        """Take what the critic needs from the training dataset, once before training (default: nothing).

        ``dataset``: a :class:`qtkit.data.TrajectoryDataset`-like object (``rewards``, ``returns``, ``gamma``, ...).
        """
        return None


#: ``choose(q [N, bins], dim) -> bins [N] long``: how :meth:`AutoregressiveCritic.decode` picks each dimension's bin.
Chooser = Callable[[Tensor, int], Tensor]


class AutoregressiveCritic(Critic):
    """A critic over discretised actions, one dimension after the other (the Q-Transformer's critic, ``ar-q``).

    Its greedy decoding is a policy: the ``ar-argmax`` policy and the ``ar-greedy`` sampler act through it,
    and the ``qtransformer`` agent trains it alone. ``bins`` per action dimension; ``state_window`` (w):
    observations of history a query reads.
    """

    bins: int
    state_window: int

    @abc.abstractmethod
    def histories(self, states: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Per-position histories of a window: ``states [B, K, obs]``, ``mask [B, K]`` ->
        ``(hist [B, K, w, obs], hist_mask [B, K, w] | None)``."""

    @abc.abstractmethod
    def decode(self, states: Tensor, mask: Tensor | None = None, choose: Chooser | None = None) -> tuple[Tensor, Tensor]:
        """Decode bins dimension by dimension: ``states [B, obs]`` or a history ``[B, w', obs]`` (``mask [B, w']``)
        -> ``(bins [B, act] long, q [B])``; ``choose`` picks each dimension's bin (default argmax)."""

    def greedy(self, states: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The greedy action's bins: :meth:`decode` with argmax, ``(bins [B, act] long, q [B])``."""
        return self.decode(states, mask)

    @abc.abstractmethod
    def undiscretize(self, bins: Tensor) -> Tensor:
        """Bin centres: long ``[..., act]`` -> float ``[..., act]`` within the action bounds."""
