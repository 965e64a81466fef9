"""``ar-q``: the Q-Transformer critic, an autoregressive per-dimension Q over action bins (ALGORITHMS.md §6).

Every action dimension ``i`` is split into ``bins`` uniform bins over ``[action_low_i, action_high_i]``.
One sequence per state (N = w + D tokens)::

    [s_{t-w+1} ... s_t | x_1 ... x_D]      x_1 = start + dim_1,  x_i = bin_embed_{i-1}[a^{i-1}] + dim_i

goes through the causal backbone; the head at ``x_i`` gives ``Q_i(s, a^{1:i-1}, ·)`` over the bins of
dimension i (``heads`` twin heads, optionally dueling). The bin fed at token ``i+1`` is exactly the
bin whose Q was read at token ``i`` (the public implementation is off by one there).

State inputs come in three forms (``obs`` = observation size, standardised like everywhere else):

- **single**: ``states [B, obs]`` with ``actions [B, act]`` (or bins ``[B, D]``);
- **history**: ``states [B, w', obs]`` (oldest first, the current state last; ``mask [B, w']`` marks the
  real ones) with ``actions [B, act]``; only the last ``state_window`` are used;
- **window** (training): ``states [B, K, obs]`` with ``actions [B, K, act]``; position t uses the last
  ``state_window`` observations of the window up to t (``mask [B, K]``; positions before the window
  start are padding). With ``state_window = 1`` this is simply one state per position, so
  candidates ``[E, N, obs]`` with ``[E, N, act]`` are scored independently as well.

Decoding (:meth:`ARQCritic.decode`, :meth:`ARQCritic.greedy`) uses the backbone's key/value cache when it
has one (``supports_kv_cache``, e.g. ``gpt2``): one incremental call per dimension over 1 new token (the
first over the w' state tokens and x_1), instead of D passes over w'+1 .. w'+D tokens; the results are
the same (``tests/test_kv_cache.py``).

The agent calls :meth:`ARQCritic.prepare` once with the training dataset (before training): it
resolves ``floor="auto"`` and checks a numeric floor. The resolved floor is a buffer, so it is
saved and loaded with the weights.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qtkit.backbones.base import hidden_at
from qtkit.backups.functional import autoregressive_targets, mc_lower_bound
from qtkit.critics.base import AutoregressiveCritic, Chooser, soft_update
from qtkit.errors import ConfigError, TrainingError
from qtkit.params import FiniteFloat, Ge, NonNegativeFloat, PositiveInt
from qtkit.registry import register
from qtkit.training.distributed import mean_denominator, row_mean


class ARQNet(nn.Module):
    """Embeddings, causal backbone and Q heads of :class:`ARQCritic` (the parameters the optimiser gets).

    ``forward(hist [N, w', obs], hist_mask [N, w'] | None, action_tokens [N, n, W]) -> Q [H, N, n, bins]``.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, bins: int, window: int, heads: int, dueling: bool, backbone: nn.Module
    ) -> None:
        super().__init__()
        width = int(backbone.width)
        self.bins, self.heads, self.window, self.dueling = bins, heads, window, dueling
        self.backbone = backbone
        self.embed_state = nn.Linear(obs_dim, width)
        self.state_pos = nn.Parameter(torch.empty(window, width))  # position in the state history
        self.dim_embed = nn.Parameter(torch.empty(act_dim, width))  # which action dimension a token is
        self.start = nn.Parameter(torch.empty(width))  # the "previous bin" of dimension 1
        self.bin_embed = nn.Parameter(torch.empty(max(act_dim - 1, 0), bins, width))  # bin of dim i -> token i+1
        self.embed_ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, heads * (bins + int(dueling)))
        for p in (self.state_pos, self.dim_embed, self.start, self.bin_embed, self.head.weight):
            nn.init.normal_(p, std=0.02)
        nn.init.zeros_(self.head.bias)

    def action_tokens(self, previous: Tensor) -> Tensor:
        """Tokens of dimensions 1..n from the embeddings of the n-1 previous bins: ``[N, n-1, W] -> [N, n, W]``."""
        n = previous.shape[1] + 1
        start = self.start.to(previous.dtype).expand(previous.shape[0], 1, -1)
        return torch.cat((start, previous), dim=1) + self.dim_embed[:n].to(previous.dtype)

    def bin_embeddings(self, bins: Tensor) -> Tensor:
        """Embeddings of chosen bins of dimensions 1..m: ``bins [N, m] long -> [N, m, W]``."""
        m = bins.shape[1]
        return self.bin_embed[torch.arange(m, device=bins.device), bins]

    def embed_states(self, hist: Tensor) -> Tensor:
        """State tokens (before the LayerNorm): ``hist [N, w', obs] -> [N, w', W]`` (the last ``w'`` history slots)."""
        return self.embed_state(hist) + self.state_pos[self.window - hist.shape[1]:]

    def q_head(self, hidden: Tensor) -> Tensor:
        """Q over bins from the backbone's outputs: ``hidden [N, n, W] -> [H, N, n, bins]`` (dueling combined)."""
        out = self.head(hidden)
        out = out.view(*out.shape[:2], self.heads, -1).permute(2, 0, 1, 3)  # [H, N, n, bins(+1)]
        if self.dueling:
            value, advantage = out[..., :1], out[..., 1:]
            out = value + advantage - advantage.mean(dim=-1, keepdim=True)
        return out

    def forward(
        self, hist: Tensor, hist_mask: Tensor | None, action_tokens: Tensor, last_only: bool = False, first: int = 0
    ) -> Tensor:
        """Q over bins at the action tokens ``first..n-1`` (or the last one): ``[H, N, n - first, bins]``
        (``[H, N, bins]`` if last_only); the backbone's last layer runs at those tokens only."""
        n_hist = hist.shape[1]
        states = self.embed_states(hist)
        x = self.embed_ln(torch.cat((states, action_tokens.to(states.dtype)), dim=1))
        mask = None
        if hist_mask is not None:
            mask = torch.cat((hist_mask, hist_mask.new_ones(hist_mask.shape[0], action_tokens.shape[1])), dim=1)
        n_tokens = x.shape[1]
        start = n_tokens - 1 if last_only else n_hist + first  # only the read tokens' last layer is computed
        positions = torch.arange(start, n_tokens, device=x.device)
        hidden = hidden_at(self.backbone, x, mask, positions)  # [N, n or 1, W]
        out = self.q_head(hidden)
        return out[:, :, 0] if last_only else out

    # ------------------------------------------------------------------ incremental decoding (KV cache)
    def decode_start(self, hist: Tensor, hist_mask: Tensor | None) -> tuple[Tensor, Any]:
        """First decoding call: the state tokens and x_1 through ``backbone.forward_cached``.

        ``hist [N, w', obs]``, ``hist_mask [N, w'] | None`` -> ``(Q_1 [H, N, bins], cache)``; the backbone must
        have ``supports_kv_cache``. Equal to ``forward(hist, hist_mask, action_tokens(empty), last_only=True)``.
        """
        states = self.embed_states(hist)
        first = self.action_tokens(states.new_zeros(states.shape[0], 0, states.shape[-1]))  # [N, 1, W]
        x = self.embed_ln(torch.cat((states, first.to(states.dtype)), dim=1))
        mask = None
        if hist_mask is not None:
            mask = torch.cat((hist_mask, hist_mask.new_ones(hist_mask.shape[0], 1)), dim=1)
        hidden, cache = self.backbone.forward_cached(x, None, mask)
        return self.q_head(hidden[:, -1:])[:, :, 0], cache

    def decode_step(self, chosen: Tensor, dim: int, cache: Any) -> tuple[Tensor, Any]:
        """Feed dimension ``dim - 1``'s chosen bins and read dimension ``dim`` (0-based, ``1 <= dim < D``).

        ``chosen [N] long`` -> ``(Q_{dim+1} [H, N, bins], cache)``: one new token,
        ``x_{dim+1} = bin_embed[dim-1][chosen] + dim_embed[dim]``, through ``backbone.forward_cached``.
        """
        token = self.bin_embed[dim - 1][chosen] + self.dim_embed[dim]  # [N, W], as action_tokens builds it
        x = self.embed_ln(token.unsqueeze(1))
        hidden, cache = self.backbone.forward_cached(x, cache, None)
        return self.q_head(hidden)[:, :, 0], cache


@register("critic", "ar-q")
class ARQCritic(AutoregressiveCritic):
    """Q-Transformer critic: per-dimension Q over action bins from a causal backbone (autoregressive argmax).

    ``bins`` per dimension; ``state_window`` observations of history; ``heads`` twin Q heads (min for
    targets and scores); ``dueling`` heads; ``conservative_weight`` α of the term pushing non-dataset
    bins to ``floor`` ("auto": 0 for sparse 0/1 rewards, else the dataset's minimum discounted return,
    resolved by :meth:`prepare`); ``mc_lower_bound``: every dimension's target is at least ``batch.returns``.
    """

    needs_policy_actions = False  # bootstraps with max over the last dimension's bins
    #: :meth:`decode` uses the backbone's key/value cache when it ``supports_kv_cache``; False forces the
    #: recompute path (one :meth:`next_q` pass per dimension), e.g. to compare the two.
    use_kv_cache: bool = True

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        gamma: float,
        backbone: nn.Module,
        bins: Annotated[int, Ge(2)] = 256,
        state_window: PositiveInt = 1,
        heads: PositiveInt = 2,
        dueling: bool = False,
        conservative_weight: NonNegativeFloat = 1.0,
        floor: FiniteFloat | Literal["auto"] = "auto",
        mc_lower_bound: bool = True,
    ) -> None:
        super().__init__()
        where = "critic 'ar-q'"
        low = torch.as_tensor(list(action_low), dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(list(action_high), dtype=torch.float32).reshape(-1)
        if low.numel() != act_dim or high.numel() != act_dim:
            raise ConfigError(f"{where}: action_low/action_high need {act_dim} entries, got {low.tolist()}, {high.tolist()}.")
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()) or bool((low >= high).any()):
            raise ConfigError(
                f"{where} needs finite action bounds with action_low < action_high to place its {bins} bins per "
                f"dimension, got action_low={low.tolist()}, action_high={high.tolist()}. Clip the env's actions "
                "(gymnasium.wrappers.ClipAction) or pass finite action_low/action_high to qtkit.build."
            )
        if not getattr(backbone, "causal", True):
            raise ConfigError(f"{where}: the backbone must be causal (dimension i may only see bins < i); set causal: true.")
        max_len = int(getattr(backbone, "max_len", 0) or 0)
        if max_len and max_len < state_window + act_dim:
            raise ConfigError(
                f"{where}: the backbone's max_len={max_len} is shorter than the {state_window + act_dim} tokens "
                f"(state_window + act_dim); raise max_len or set it to 0."
            )
        self.obs_dim, self.act_dim, self.bins = obs_dim, act_dim, bins
        self.state_window, self.heads, self.dueling = state_window, heads, dueling
        self.gamma = float(gamma)
        self.conservative_weight = float(conservative_weight)
        self.floor = floor if isinstance(floor, str) else float(floor)
        self.mc_lower_bound = mc_lower_bound
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        #: The floor in use (NaN until :meth:`prepare` resolves "auto"); saved with the weights.
        self.register_buffer("floor_value", torch.tensor(math.nan if isinstance(floor, str) else float(floor)))
        self._floor_checked = -1  # the floor_value version _floor() last found resolved
        self.net = ARQNet(obs_dim, act_dim, bins, state_window, heads, dueling, backbone)
        self.target_net = copy.deepcopy(self.net).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> ARQCritic:
        """Set the online net's mode; the target net always stays in eval mode (no dropout in targets)."""
        super().train(mode)
        self.target_net.eval()
        return self

    # ------------------------------------------------------------------ data hook
    def prepare(self, dataset: Any) -> float:
        """Resolve and check ``floor`` from the training dataset; call once before training. Returns the floor.

        ``dataset``: a :class:`qtkit.data.TrajectoryDataset`-like object (``rewards [N]``, ``returns [N]``,
        ``gamma``, ``episode_lengths [E]``). ``floor="auto"``: 0 when every reward is 0 or 1, else the
        minimum discounted return G_t of the dataset (with this critic's ``gamma``). A numeric floor above
        the largest possible discounted return (max reward x horizon) gets a ``UserWarning``.
        """
        rewards = np.asarray(dataset.rewards, dtype=np.float64)
        if getattr(dataset, "gamma", self.gamma) != self.gamma and hasattr(dataset, "with_gamma"):
            dataset = dataset.with_gamma(self.gamma)
        returns = np.asarray(dataset.returns, dtype=np.float64)
        horizon = int(np.max(dataset.episode_lengths)) if len(getattr(dataset, "episode_lengths", [])) else len(rewards)
        if self.floor == "auto":
            sparse = bool(np.isin(rewards, (0.0, 1.0)).all())
            value = 0.0 if sparse else float(returns.min())
        else:
            value = float(self.floor)
            r_max = float(rewards.max())
            g = self.gamma
            best = r_max * (horizon if g == 1.0 else (1.0 - g**horizon) / (1.0 - g)) if r_max > 0 else r_max
            best = max(best, float(returns.max()))
            if value > best:
                warnings.warn(
                    f"critic 'ar-q': floor={value} is above the largest possible discounted return of this dataset "
                    f"({best:.4g}: max reward {r_max:.4g} over {horizon} steps, gamma {g}). The conservative term "
                    "pulls unseen bins up to the floor; use a lower bound of the return (or floor: auto).",
                    UserWarning,
                    stacklevel=2,
                )
        self.floor_value.fill_(value)
        return value

    def _floor(self) -> Tensor:
        # checked once per value of the buffer (its version counter moves with prepare's fill_ and with loading), so
        # a training step does not read it on the host every time
        version = self.floor_value._version
        if version != self._floor_checked:
            if torch.isnan(self.floor_value):
                raise TrainingError(
                    "critic 'ar-q': floor='auto' is not resolved yet; call critic.prepare(dataset) before training "
                    "(the agent does it at fit), or give a numeric floor."
                )
            self._floor_checked = version
        return self.floor_value

    # ------------------------------------------------------------------ bins
    def discretize(self, actions: Tensor) -> Tensor:
        """Bins of continuous actions: ``[..., D]`` -> long ``[..., D]`` in ``[0, bins-1]`` (clipped to the bounds)."""
        low, high = self.action_low.to(actions.device), self.action_high.to(actions.device)
        scaled = (actions.float() - low) / (high - low) * self.bins
        return scaled.floor().clamp_(0, self.bins - 1).long()

    def undiscretize(self, bins: Tensor) -> Tensor:
        """Bin centres: long ``[..., D]`` -> float ``[..., D]``, strictly inside the bounds."""
        low, high = self.action_low.to(bins.device), self.action_high.to(bins.device)
        return low + (bins.float() + 0.5) * ((high - low) / self.bins)

    def _coordinates(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Continuous bin coordinates for interpolation: ``(lo [..., D] long, frac [..., D])`` with the action
        at ``(1 - frac) * centre[lo] + frac * centre[lo + 1]`` (clamped to the outer centres)."""
        low, high = self.action_low.to(actions.device), self.action_high.to(actions.device)
        u = ((actions.float() - low) / (high - low) * self.bins - 0.5).clamp(0.0, self.bins - 1.0)
        lo = u.detach().floor().clamp_(max=self.bins - 2)
        return lo.long(), u - lo

    # ------------------------------------------------------------------ state inputs
    def histories(self, states: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Per-position histories of a window: ``states [B, K, obs]``, ``mask [B, K]`` ->
        ``(hist [B, K, w, obs], hist_mask [B, K, w] | None)``; position t holds s_{t-w+1..t}, zero and masked
        before the window's start. ``hist_mask`` is None when w = 1 (the current state is always used)."""
        w = self.state_window
        if w == 1:
            return states.unsqueeze(2), None
        hist = F.pad(states, (0, 0, w - 1, 0)).unfold(1, w, 1).transpose(-1, -2)  # [B, K, w, obs]
        valid = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device) if mask is None else mask.bool()
        hist_mask = F.pad(valid, (w - 1, 0), value=False).unfold(1, w, 1).clone()  # [B, K, w]
        hist_mask[..., -1] = True  # a query always sees its own state
        return hist, hist_mask

    def _rows(self, states: Tensor, other_ndim: int, mask: Tensor | None) -> tuple[Tensor, Tensor | None, tuple[int, ...]]:
        """Flatten any state form to ``(hist [N, w', obs], hist_mask [N, w'] | None, lead shape)``.

        ``other_ndim``: ndim of the accompanying actions/bins (``[..., D]``); 0 when there are none
        (then ``[B, obs]`` is single and ``[B, w', obs]`` a history).
        """
        w = self.state_window
        if other_ndim and states.ndim == other_ndim:  # one state per action: single or window form
            lead = tuple(states.shape[:-1])
            if len(lead) >= 2 and w > 1:
                flat = states.reshape(-1, lead[-1], self.obs_dim)
                m = None if mask is None else mask.reshape(-1, lead[-1])
                hist, hist_mask = self.histories(flat, m)
                assert hist_mask is not None
                return hist.reshape(-1, w, self.obs_dim), hist_mask.reshape(-1, w), lead
            return states.reshape(-1, 1, self.obs_dim), None, lead
        if (other_ndim == 0 and states.ndim == 2) or states.ndim == 1:
            return states.reshape(-1, 1, self.obs_dim), None, tuple(states.shape[:-1])
        if states.ndim < 3 or (other_ndim and states.ndim != other_ndim + 1):
            raise ValueError(
                f"critic 'ar-q': cannot read states of shape {tuple(states.shape)} with actions of ndim {other_ndim}; "
                "give [B, obs] + [B, act], a history [B, w, obs] + [B, act] or a window [B, K, obs] + [B, K, act]."
            )
        lead = tuple(states.shape[:-2])
        hist = states.reshape(-1, states.shape[-2], self.obs_dim)[:, -w:]
        hist_mask = None if mask is None or w == 1 else mask.reshape(-1, mask.shape[-1])[:, -w:].bool()
        return hist, hist_mask, lead

    # ------------------------------------------------------------------ Q-values
    def _teacher_forced(self, net: ARQNet, hist: Tensor, hist_mask: Tensor | None, bins: Tensor) -> Tensor:
        """Q of every dimension given the dataset prefix: ``bins [N, D]`` -> ``[H, N, D, bins]``."""
        tokens = net.action_tokens(net.bin_embeddings(bins[:, :-1]))
        return net(hist, hist_mask, tokens)

    def q_values_all_heads(self, states: Tensor, action_bins: Tensor, mask: Tensor | None = None) -> Tensor:
        """Teacher-forced Q of the online net, every head: ``action_bins [..., D]`` -> ``[H, ..., D, bins]``.

        ``Q[h, ..., i, b] = Q_i^h(s, a^{1:i-1}, b)``: dimension i sees only the bins of dimensions < i.
        """
        hist, hist_mask, lead = self._rows(states, action_bins.ndim, mask)
        q = self._teacher_forced(self.net, hist, hist_mask, action_bins.reshape(-1, self.act_dim))
        return q.reshape(self.heads, *lead, self.act_dim, self.bins)

    def q_values(self, states: Tensor, action_bins: Tensor, mask: Tensor | None = None) -> Tensor:
        """Teacher-forced Q of the online net, min over heads: ``action_bins [..., D]`` -> ``[..., D, bins]``."""
        return self.q_values_all_heads(states, action_bins, mask).amin(0)

    def next_q(self, states: Tensor, prefix: Tensor, mask: Tensor | None = None) -> Tensor:
        """Q of the next dimension d = ``prefix.shape[-1]`` given its prefix, min over the online heads.

        ``states [B, obs]`` or a history ``[B, w', obs]`` (``mask [B, w']``), ``prefix [B, d]`` long with
        ``0 <= d < D`` -> ``[B, bins]``. One backbone pass over ``w' + d + 1`` tokens (the prefix is recomputed,
        no key/value cache; :meth:`decode` uses one when the backbone has it).
        """
        hist, hist_mask, _ = self._rows(states, 0, mask)
        tokens = self.net.action_tokens(self.net.bin_embeddings(prefix.reshape(hist.shape[0], prefix.shape[-1])))
        return self.net(hist, hist_mask, tokens, last_only=True).amin(0)

    @torch.no_grad()
    def decode(self, states: Tensor, mask: Tensor | None = None, choose: Chooser | None = None) -> tuple[Tensor, Tensor]:
        """Autoregressive decoding: for d = 1..D pick a bin from Q_d (min over the online heads) and feed it back.

        ``states [B, obs]`` or a history ``[B, w', obs]`` (``mask [B, w']``); ``choose(q [B, bins], d) -> [B]``
        (default argmax; called once per dimension, in order). Returns ``(bins [B, D] long, q [B])``: q is the
        last dimension's Q at its chosen bin. With a backbone that ``supports_kv_cache`` (and
        :attr:`use_kv_cache`): one pass over the w'+1 first tokens, then one token per dimension (the compute of
        about one full pass; with few states each step is bound by reading the weights); otherwise D
        :meth:`next_q` passes of w'+1 .. w'+D tokens. Batched over B. Same bins and q either way.
        """
        hist, hist_mask, _ = self._rows(states, 0, mask)
        if self.use_kv_cache and getattr(self.net.backbone, "supports_kv_cache", False):
            return self._decode_cached(self.net, hist, hist_mask, choose)
        batch = hist.shape[0]
        prefix = torch.zeros(batch, 0, dtype=torch.long, device=states.device)
        value = torch.zeros(batch, device=states.device)
        for d in range(self.act_dim):
            q = self.next_q(states, prefix, mask).float()  # [B, bins]
            chosen = q.argmax(dim=-1) if choose is None else choose(q, d).to(device=q.device, dtype=torch.long)
            value = q.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
            prefix = torch.cat((prefix, chosen.unsqueeze(-1)), dim=-1)
        return prefix, value

    def _decode_cached(
        self, net: ARQNet, hist: Tensor, hist_mask: Tensor | None, choose: Chooser | None
    ) -> tuple[Tensor, Tensor]:
        """:meth:`decode` with ``net``'s backbone key/value cache: ``hist [B, w', obs]`` -> ``(bins [B, D], q [B])``."""
        chosen_bins = []
        q_heads, cache = net.decode_start(hist, hist_mask)  # [H, B, bins]
        value = torch.zeros(hist.shape[0], device=hist.device)
        for d in range(self.act_dim):
            if d > 0:
                q_heads, cache = net.decode_step(chosen_bins[-1], d, cache)
            q = q_heads.amin(0).float()  # [B, bins]
            chosen = q.argmax(dim=-1) if choose is None else choose(q, d).to(device=q.device, dtype=torch.long)
            value = q.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
            chosen_bins.append(chosen)
        return torch.stack(chosen_bins, dim=-1), value

    def greedy(self, states: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Greedy action: ``a^i = argmax_b Q_i(s, a^{1:i-1}, b)`` for i = 1..D (online net, min over heads).

        ``states [B, obs]`` or a history ``[B, w', obs]`` -> ``(bins [B, D] long, q [B] = max_b Q_D)``.
        """
        return self.decode(states, mask)

    def _value(self, net: ARQNet, states: Tensor, actions: Tensor, mask: Tensor | None) -> Tensor:
        hist, hist_mask, lead = self._rows(states, actions.ndim, mask)
        lo, frac = self._coordinates(actions.reshape(-1, self.act_dim))  # [N, D]
        table = net.bin_embed  # [D-1, bins, W]
        dims = torch.arange(self.act_dim - 1, device=lo.device)
        f = frac[:, :-1].unsqueeze(-1).to(table.dtype)
        previous = (1.0 - f) * table[dims, lo[:, :-1]] + f * table[dims, lo[:, :-1] + 1]  # [N, D-1, W]
        q = net(hist, hist_mask, net.action_tokens(previous), last_only=True)  # [H, N, bins]
        lo_last = lo[:, -1].expand(self.heads, -1).unsqueeze(-1)
        f_last = frac[:, -1].to(q.dtype)
        value = (1.0 - f_last) * q.gather(-1, lo_last).squeeze(-1) + f_last * q.gather(-1, lo_last + 1).squeeze(-1)
        return value.reshape(self.heads, *lead)

    def forward(self, states: Tensor, actions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Q of continuous actions, every head: ``[H, ...]``; differentiable in ``actions``.

        Window ``states [B, K, obs]`` + ``actions [B, K, act]`` -> ``[H, B, K]`` (like twin-mlp's ``[E, B, K]``);
        single ``[B, obs]`` + ``[B, act]`` or history ``[B, w, obs]`` + ``[B, act]`` -> ``[H, B]``. The previous
        dimensions are embedded by linear interpolation between the two nearest bin centres' embeddings and
        the last dimension's Q is read by linear interpolation between its two nearest bins, so at bin
        centres this is exactly ``q_values_all_heads(...)[..., D-1, bin]``.
        """
        return self._value(self.net, states, actions, mask)

    @torch.no_grad()
    def score(self, states: Tensor, actions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Scores for samplers: min over the target heads of :meth:`forward`'s value, shape ``[...]``."""
        return self._value(self.target_net, states, actions, mask).amin(0)

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def bootstrap(
        self, states: Tensor, next_states: Tensor, policy_actions: Tensor | None, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Bootstrap values ``next_values[:, t] = max_b min_h Q̄_1^h(s_{t+1}, b)`` from the target net.

        ``states``/``next_states [B, K, obs]``, ``mask [B, K]``; ``policy_actions`` is ignored. s_{t+1}'s
        history is s_{t-w+2..t} followed by ``next_states[:, t]``, so every valid step has its value:
        returns ``(next_values [B, K], next_valid = mask)``.
        """
        mask = mask.bool()
        if not self.static_shapes and not bool(mask.any()):
            return torch.zeros(mask.shape, dtype=torch.float32, device=states.device), mask.clone()
        hist, hist_mask = self.histories(states, mask)
        next_hist = torch.cat((hist[:, :, 1:], next_states.unsqueeze(2)), dim=2)  # [B, K, w, obs]
        next_mask = None if hist_mask is None else F.pad(hist_mask[:, :, 1:], (0, 1), value=True)  # [B, K, w]
        # the valid positions' rows [N, ...]; static_shapes: every position's [B * K, ...], the others zeroed below
        rows = (lambda x: x.flatten(0, 1)) if self.static_shapes else (lambda x: x[mask])
        next_hist = rows(next_hist)
        next_mask = None if next_mask is None else rows(next_mask)
        tokens = self.target_net.action_tokens(next_hist.new_zeros(next_hist.shape[0], 0, self.net.start.shape[0]))
        q = self.target_net(next_hist, next_mask, tokens, last_only=True).amin(0).amax(-1).float()  # [N or B*K]
        if self.static_shapes:
            return torch.where(mask, q.view(mask.shape), 0.0), mask.clone()
        next_values = torch.zeros(mask.shape, dtype=torch.float32, device=states.device)
        next_values[mask] = q
        return next_values, mask.clone()

    def _targets(self, hist: Tensor, hist_mask: Tensor | None, bins: Tensor, last: Tensor, returns: Tensor | None) -> Tensor:
        """Per-dimension targets ``[N, D]`` from the target net's teacher-forced Q (min over heads).

        Only ``Q̄_2 .. Q̄_D`` are read (``y_i = max_b Q̄_{i+1}``), so the target pass computes its last layer
        and head at tokens 2..D only (none at all when D = 1).
        """
        with torch.no_grad():
            last = last.float()
            if self.act_dim == 1:
                y = last.unsqueeze(-1)
            else:
                net = self.target_net
                tokens = net.action_tokens(net.bin_embeddings(bins[:, :-1]))
                q_next = net(hist, hist_mask, tokens, first=1).amin(0).float()  # [N, D-1, bins]: Q̄_2 .. Q̄_D
                y = autoregressive_targets(F.pad(q_next, (0, 0, 1, 0)), last)  # row 0 (Q̄_1) is not read
            if returns is not None:
                y = mc_lower_bound(y, returns.float().unsqueeze(-1).expand_as(y))
        return y

    def _select(self, states: Tensor, actions: Tensor, targets: Tensor, valid: Tensor, batch: Any,
                every_position: bool = False) -> tuple[Any, ...]:
        """The training rows of a window: ``(hist [N, w, obs], hist_mask [N, w] | None, bins [N, D], last [N],
        returns [N] | None, keep)``. The N valid positions, ``keep`` None; or, ``every_position``, all N = B * K
        positions with ``keep [B * K]`` marking the valid ones (the others' target and return are 0, so that
        nothing non-finite reaches the loss's backward through them)."""
        if self.mc_lower_bound and batch is None:
            raise ValueError("critic 'ar-q' with mc_lower_bound needs loss(..., batch=batch) for batch.returns.")
        valid = valid.bool()
        window_mask = batch.mask if batch is not None else valid
        hist, hist_mask = self.histories(states, window_mask)
        returns = batch.returns if self.mc_lower_bound else None
        if every_position:
            keep = valid.flatten()

            def zeroed(x: Tensor) -> Tensor:
                return torch.where(keep, x.flatten().to(torch.float32), 0.0)

            return (hist.flatten(0, 1), None if hist_mask is None else hist_mask.flatten(0, 1),
                    self.discretize(actions.flatten(0, 1)), zeroed(targets),
                    None if returns is None else zeroed(returns), keep)
        rows = (hist[valid], None if hist_mask is None else hist_mask[valid], self.discretize(actions[valid]))
        return (*rows, targets[valid], None if returns is None else returns[valid], None)

    def dimension_targets(
        self, states: Tensor, actions: Tensor, targets: Tensor, valid: Tensor, batch: Any = None
    ) -> Tensor:
        """The per-dimension targets :meth:`loss` regresses on: ``[B, K, D]`` (0 where not ``valid``)."""
        hist, hist_mask, bins, last, returns, _ = self._select(states, actions, targets, valid, batch)
        out = torch.zeros(*valid.shape, self.act_dim, device=states.device)
        out[valid.bool()] = self._targets(hist, hist_mask, bins, last, returns)
        return out

    def loss(
        self, states: Tensor, actions: Tensor, targets: Tensor, valid: Tensor, batch: Any = None, **_: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Q-Transformer loss, summed over heads, mean over valid positions.

        ``states [B, K, obs]``, ``actions [B, K, act]`` (the dataset's), ``targets [B, K]`` (the backup's
        last-dimension targets), ``valid [B, K]``, ``batch`` (for ``returns`` and ``mask``). Per position::

            ½ Σ_i (Q_i(s, a^{1:i}) − y_i)²  +  α · ½ Σ_i mean_{b ≠ a^i} (Q_i(s, a^{1:i−1}, b) − floor)²

        with ``y_i = max_b Q̄_{i+1}(s, a^{1:i}, b)`` (i < D), ``y_D = targets`` and, with ``mc_lower_bound``,
        ``y_i ← max(y_i, G_t)``. Returns ``(loss, metrics)`` (metrics detached).
        """
        hist, hist_mask, bins, last, returns, keep = self._select(states, actions, targets, valid, batch,
                                                                  every_position=self.static_shapes)
        n = bins.shape[0] if keep is None else keep.sum()  # valid rows (static_shapes: a tensor, never read here)

        def rows_mean(x: Tensor) -> Tensor:  # [H, N] -> [H]: the mean over the valid rows
            if keep is None:
                return row_mean(x)
            return torch.where(keep, x, 0.0).sum(-1) / mean_denominator(n).to(x.dtype)

        if keep is None and n == 0:
            zero = sum(p.sum() for p in self.net.parameters()) * 0.0
            # data-parallel: take part in the other ranks' row means (their global row count includes this 0)
            for _ in range(2 if self.conservative_weight > 0 else 1):
                row_mean(zero.new_zeros(1, 0))
            return zero, {"critic_loss": zero.detach()}
        y = self._targets(hist, hist_mask, bins, last, returns)  # [N, D]
        q = self._teacher_forced(self.net, hist, hist_mask, bins).float()  # [H, N, D, bins]
        index = bins.unsqueeze(0).expand(self.heads, -1, -1).unsqueeze(-1)
        q_data = q.gather(-1, index).squeeze(-1)  # [H, N, D]
        td = rows_mean(0.5 * ((q_data - y) ** 2).sum(-1))  # [H]: mean over the N rows
        loss = td.sum()
        metrics = {"td_loss": td.sum().detach()}
        if self.conservative_weight > 0:
            # Q with the dataset bins set to the floor: their gap is exactly 0 (and so is their gradient).
            # One [H, N, D, bins] copy instead of a one-hot mask, its complement and a masked product.
            floor = self._floor().to(q.dtype)
            others_q = q.scatter(-1, index, floor.expand(index.shape))
            gap = (others_q - floor) ** 2
            conservative = rows_mean(0.5 * (gap.sum(-1) / (self.bins - 1)).sum(-1))  # [H]
            loss = loss + self.conservative_weight * conservative.sum()
            metrics["conservative_loss"] = conservative.sum().detach()
            count = n * self.heads * self.act_dim  # H * N * D positions, bins - 1 other bins each
            ood = others_q.detach()
            if keep is not None:
                ood = torch.where(keep[:, None, None], ood, 0.0)  # [H, N, D, bins]: the valid rows only
            # the sum holds the floor once per position (its dataset bin): the rest is the other bins' Q
            metrics["q_ood_mean"] = (ood.sum() - floor * count) / (
                (count if keep is None else count.clamp(min=1)) * (self.bins - 1))
        if keep is None:
            q_mean, target_mean = q_data[..., -1].detach().mean(), y[:, -1].mean()
        else:
            q_mean = torch.where(keep, q_data[..., -1].detach(), 0.0).sum() / (n * self.heads).clamp(min=1)
            target_mean = torch.where(keep, y[:, -1], 0.0).sum() / n.clamp(min=1)
        metrics.update({"critic_loss": loss.detach(), "q_mean": q_mean, "target_mean": target_mean})
        return loss, metrics

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """Polyak update: target <- (1 - tau) * target + tau * online."""
        soft_update(self.target_net, self.net, tau)
