"""``gpt2``: the GPT-2 block of the reference QT / Decision Transformer code, in plain PyTorch.

Pre-LayerNorm blocks (LN -> self-attention -> residual; LN -> MLP -> residual), a final LayerNorm,
dropout on the input embeddings, the attention weights and both residual branches, and no
positional embedding by default (the policy adds timestep embeddings), as in the reference's
``trajectory_gpt2.GPT2Model``. Written for speed on CPU: one fused qkv projection, PyTorch's
``scaled_dot_product_attention`` (``is_causal=True`` without a padding mask, an explicit boolean
mask with one), no Python loop over tokens. Training-mode dropout on CPU uses the faster
:func:`qtkit.backbones.base.dropout`, so attention with dropout is computed explicitly there
(as SDPA's own CPU fallback does); CUDA keeps the fused SDPA kernels and ``F.dropout``.

Two shortcuts give the outputs of the plain computation (``tests/test_speed_paths.py``): a mask with
no padding on CPU takes the unmasked ``is_causal`` kernels, and ``forward(..., positions=...)`` runs
the last block's queries, attention output, MLP and final LayerNorm only at the tokens a caller reads
(keys and values still at every token): e.g. the GPT policy reads the state (and action) tokens,
never the return-to-go tokens, and a rollout reads one token per row.

Incremental decoding (``supports_kv_cache``): :meth:`GPT2Backbone.forward_cached` feeds new tokens
after the ones already seen, whose per-layer keys and values (and validity mask) a :class:`KVCache`
keeps, and returns the new tokens' hidden states, equal to the full forward's at those positions
(``tests/test_kv_cache.py``, ``tests/test_contract_backbone.py``). The ``ar-q`` critic decodes its
D action dimensions this way: D calls of 1 new token instead of D passes over w+1 .. w+D tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qtkit.backbones.base import Backbone, Dropout, attention_mask, check_heads, dropout, zero_padding
from qtkit.errors import ConfigError, ShapeMismatchError
from qtkit.params import DropoutRate, NonNegativeInt, OneOf, PositiveFloat, PositiveInt
from qtkit.registry import register

#: MLP activations.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new"
}


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection: ``[B, N, W] -> [B, N, W]``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.attn_dropout = dropout
        self.resid_dropout = Dropout(dropout)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None, is_causal: bool, positions: Tensor | None = None
    ) -> Tensor:
        """``x [B, N, W]``, ``attn_mask`` bool (True = may attend; ``[B, 1, M, N]`` or ``[M, N]``) or None
        -> ``[B, M, W]`` for the ``M`` query ``positions`` (all ``N`` tokens when None)."""
        b, n, w = x.shape
        d = w // self.heads
        if positions is None:
            qkv = self.qkv(x).view(b, n, 3, self.heads, d)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, D]
        else:  # queries at the kept positions only; keys and values at every token
            weight, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, positions], weight[:w], bias[:w]).view(b, -1, self.heads, d).transpose(1, 2)
            kv = F.linear(x, weight[w:], bias[w:]).view(b, n, 2, self.heads, d)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return self.output(self.attend(q, k, v, attn_mask, is_causal))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
        """Attention of ``q [B, H, M, D]`` over ``k, v [B, H, N, D]`` (dropout in training) -> ``[B, H, M, D]``.

        ``is_causal`` only with ``M == N`` (SDPA aligns its causal mask top-left)."""
        p = self.attn_dropout if self.training else 0.0
        if p > 0.0 and q.device.type == "cpu":
            return attention_with_dropout(q, k, v, attn_mask, is_causal, p)
        # fused kernels (flash / memory-efficient on CUDA, flash on CPU)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=is_causal)

    def output(self, y: Tensor) -> Tensor:
        """Merge the heads and project: ``[B, H, M, D]`` -> ``[B, M, W]``."""
        b, _, m, _ = y.shape
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, m, -1)))

    def forward_cached(
        self, x: Tensor, past_k: Tensor | None, past_v: Tensor | None, attn_mask: Tensor | None, is_causal: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """New tokens ``x [B, n, W]`` after ``L`` cached ones (``past_k, past_v [B, H, L, D]`` or None) ->
        ``(out [B, n, W], keys [B, H, L+n, D], values [B, H, L+n, D])``; ``attn_mask [B, 1, n, L+n]`` or None."""
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if past_k is not None and past_v is not None:
            k, v = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
        return self.output(self.attend(q, k, v, attn_mask, is_causal)), k, v


def attention_with_dropout(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool, p: float
) -> Tensor:
    """Softmax attention with dropout on the weights (what SDPA's CPU fallback does, with the fast
    CPU :func:`dropout`): ``q, k, v [B, H, N, D]`` -> ``[B, H, N, D]``."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))  # [B, H, N, N]
    if attn_mask is None and is_causal:
        n = q.shape[-2]
        attn_mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:  # every row allows at least its own key: no all -inf row
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.matmul(dropout(scores.softmax(-1), p, True), v)


class Block(nn.Module):
    """One pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``; ``[B, N, W]``."""

    def __init__(self, width: int, heads: int, mlp_dim: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_dim),
            ACTIVATIONS[activation](),
            nn.Linear(mlp_dim, width),
            Dropout(dropout),
        )

    def forward(
        self, x: Tensor, attn_mask: Tensor | None, is_causal: bool, positions: Tensor | None = None
    ) -> Tensor:
        """``x [B, N, W]`` -> ``[B, N, W]``, or ``[B, M, W]`` at the ``M`` query ``positions`` only."""
        h = self.attn(self.ln_1(x), attn_mask, is_causal, positions)
        x = x + h if positions is None else x[:, positions] + h
        return x + self.mlp(self.ln_2(x))

    def forward_cached(
        self, x: Tensor, past_k: Tensor | None, past_v: Tensor | None, attn_mask: Tensor | None, is_causal: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """New tokens ``x [B, n, W]`` after the cached ones -> ``(x [B, n, W], keys, values)`` (all tokens')."""
        h, k, v = self.attn.forward_cached(self.ln_1(x), past_k, past_v, attn_mask, is_causal)
        x = x + h
        return x + self.mlp(self.ln_2(x)), k, v


@dataclass
class KVCache:
    """What :meth:`GPT2Backbone.forward_cached` keeps of the ``L`` tokens it has seen.

    ``keys[l]``, ``values[l]``: layer l's keys and values ``[B, heads, L, width / heads]``; ``mask``: the
    cached tokens' validity ``[B, L]`` bool (None = all valid; a padded token is only seen by itself).
    """

    keys: list[Tensor]
    values: list[Tensor]
    mask: Tensor | None

    @property
    def length(self) -> int:
        """Number of cached tokens ``L``."""
        return int(self.keys[0].shape[2])

    @property
    def batch_size(self) -> int:
        """Rows ``B``."""
        return int(self.keys[0].shape[0])

    def select(self, rows: Tensor) -> KVCache:
        """The cache of a subset (or a repetition) of rows: ``rows [B'] long`` -> a cache of ``B'`` rows."""
        return KVCache([k[rows] for k in self.keys], [v[rows] for v in self.values],
                       None if self.mask is None else self.mask[rows])


@register("backbone", "gpt2")
class GPT2Backbone(Backbone):
    """GPT-2 transformer (reference QT/DT block, pure PyTorch): tokens [B, N, width] -> [B, N, width].

    ``mlp_dim`` (when set) overrides ``mlp_ratio * width``. ``activation`` is ``relu`` (the reference
    QT/DT scripts' ``--activation_function`` default), ``gelu`` or ``gelu_tanh`` (GPT-2's own).
    ``max_len > 0`` adds a learned positional embedding for up to ``max_len`` tokens (off by
    default: the policies add timestep embeddings). ``causal=False`` makes it an encoder.
    ``forward(tokens, mask, positions=...)`` computes the last layer at the given tokens only;
    ``forward_cached`` decodes incrementally with a key/value cache (causal only).
    """

    supports_positions = True
    supports_kv_cache = True

    def __init__(
        self,
        width: PositiveInt = 256,
        depth: PositiveInt = 4,
        heads: PositiveInt = 4,
        mlp_ratio: PositiveFloat = 4.0,
        mlp_dim: PositiveInt | None = None,
        activation: Annotated[str, OneOf(tuple(ACTIVATIONS))] = "relu",
        dropout: DropoutRate = 0.1,
        causal: bool = True,
        max_len: NonNegativeInt = 0,
    ) -> None:
        super().__init__()
        where = "backbone 'gpt2'"
        check_heads(width, heads, where)
        hidden = int(mlp_dim) if mlp_dim else round(mlp_ratio * width)
        if hidden < 1:
            raise ConfigError(f"{where}: the MLP width must be positive, got mlp_dim={mlp_dim}, mlp_ratio={mlp_ratio}.")
        self.width, self.depth, self.heads, self.causal = width, depth, heads, causal
        self.max_len = max_len
        self.pos_emb = nn.Parameter(torch.zeros(max_len, width)) if max_len else None
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, hidden, dropout, activation) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: weights N(0, 0.02), residual output projections N(0, 0.02 / sqrt(2 * depth))."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.depth))
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb, std=0.02)

    def forward(self, tokens: Tensor, mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """``tokens [B, N, W]``, ``mask [B, N]`` bool (True = valid) or None -> hidden ``[B, N, W]``.

        ``positions`` (1-D long tensor of distinct token indices, ascending) returns only those
        outputs, ``[B, len(positions), W]``, equal to ``forward(tokens, mask)[:, positions]``: the last
        block then computes queries, attention output, MLP and final LayerNorm at those tokens only.
        """
        self.check_inputs(tokens, mask)
        n = tokens.shape[1]
        if mask is not None and mask.device.type == "cpu" and not torch.compiler.is_compiling() and bool(mask.all()):
            mask = None  # nothing padded: the unmasked (is_causal) kernels give the same outputs (CPU: no sync)
        x = zero_padding(tokens, mask)
        if self.pos_emb is not None:
            if n > self.max_len:
                raise ConfigError(f"backbone 'gpt2': {n} tokens exceed max_len={self.max_len}; raise max_len.")
            x = x + self.pos_emb[:n]
        x = self.drop(x)
        attn_mask = attention_mask(mask, self.causal) if mask is not None else None
        is_causal = self.causal and attn_mask is None
        for block in self.blocks[:-1]:
            x = block(x, attn_mask, is_causal)
        if positions is None:
            x = self.blocks[-1](x, attn_mask, is_causal)
        else:
            positions = torch.as_tensor(positions, dtype=torch.long, device=tokens.device)
            if attn_mask is not None:
                query_mask: Tensor | None = attn_mask[:, :, positions]  # [B, 1, M, N]
            elif self.causal:  # query at token i sees keys j <= i
                query_mask = torch.arange(n, device=tokens.device) <= positions.unsqueeze(-1)  # [M, N]
            else:
                query_mask = None
            x = self.blocks[-1](x, query_mask, False, positions)
        return self.ln_f(x)

    def forward_cached(
        self, tokens: Tensor, cache: KVCache | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, KVCache]:
        """Incremental forward: ``tokens [B, n, W]`` (n >= 1) follow the ``L`` tokens in ``cache`` (None: L = 0).

        ``mask [B, n]`` bool marks the new tokens' validity (None = all valid); the cache keeps every
        layer's keys and values and the validity of all ``L + n`` tokens. Returns ``(hidden [B, n, W],
        cache)`` with ``hidden`` equal to ``forward(all L + n tokens, their mask)[:, L:]`` (one call over
        every token, several calls of one token each, or anything between). The given cache is not
        modified. Dropout applies as in :meth:`forward` (so decode in eval mode). Causal backbones only.
        """
        if not self.causal:
            raise ConfigError("backbone 'gpt2': forward_cached needs a causal backbone (an encoder's earlier "
                              "tokens would see the later ones); set causal: true.")
        self.check_inputs(tokens, mask)
        b, n = tokens.shape[:2]
        past = 0 if cache is None else cache.length
        if cache is not None and cache.batch_size != b:
            raise ShapeMismatchError(f"backbone 'gpt2': the cache holds {cache.batch_size} rows, tokens have {b}.")
        if n == 0:
            raise ShapeMismatchError("backbone 'gpt2': forward_cached needs at least one new token.")
        if mask is not None and mask.device.type == "cpu" and not torch.compiler.is_compiling() and bool(mask.all()):
            mask = None  # nothing padded among the new tokens (CPU: no sync)
        x = zero_padding(tokens, mask)
        if self.pos_emb is not None:
            if past + n > self.max_len:
                raise ConfigError(f"backbone 'gpt2': {past + n} tokens exceed max_len={self.max_len}; raise max_len.")
            x = x + self.pos_emb[past:past + n]
        x = self.drop(x)
        # Validity of every token seen so far, [B, L + n] (None: all valid).
        past_mask = None if cache is None else cache.mask
        if past_mask is None and mask is None:
            valid = None
        else:
            old = past_mask if past_mask is not None else torch.ones(b, past, dtype=torch.bool, device=x.device)
            new = mask if mask is not None else torch.ones(b, n, dtype=torch.bool, device=x.device)
            valid = torch.cat((old, new), dim=1)
        # New query i (token L + i) sees valid keys j <= L + i, and always itself.
        attn_mask: Tensor | None = None
        is_causal = False
        if valid is not None:
            query = torch.arange(past, past + n, device=x.device).unsqueeze(-1)  # [n, 1]
            key = torch.arange(past + n, device=x.device)  # [L + n]
            allowed = (valid[:, None, None, :] & (key <= query)) | (key == query)  # [B, 1, n, L + n]
            attn_mask = allowed
        elif n > 1:
            if past == 0:
                is_causal = True
            else:
                query = torch.arange(past, past + n, device=x.device).unsqueeze(-1)
                attn_mask = torch.arange(past + n, device=x.device) <= query  # [n, L + n]
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            past_k = None if cache is None else cache.keys[i]
            past_v = None if cache is None else cache.values[i]
            x, k, v = block.forward_cached(x, past_k, past_v, attn_mask, is_causal)
            keys.append(k)
            values.append(v)
        return self.ln_f(x), KVCache(keys, values, valid)
