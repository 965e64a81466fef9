"""The backbone interface: a sequence model over continuous token embeddings.

A backbone maps ``tokens [B, N, W]`` and an optional validity ``mask [B, N]`` (True = a real
token, False = padding, on either side of each row; ``None`` = all valid) to hidden states
``[B, N, W]``. Guarantees every backbone keeps (``tests/test_contract_backbone.py`` checks them):

- causal by default: output ``i`` depends only on tokens ``<= i`` (``causal=False`` for encoders);
- outputs at valid positions do not depend on what padded tokens hold (huge values, NaN);
- every output is finite, padded positions included (a padded query always sees itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qtkit.errors import ConfigError, ShapeMismatchError


class Backbone(nn.Module):
    """Base class of backbones: ``forward(tokens [B, N, W], mask [B, N] | None) -> [B, N, W]``."""

    #: Token width ``W`` (input and output).
    width: int
    #: Whether token ``i`` only attends to tokens ``<= i``.
    causal: bool
    #: Whether ``forward`` takes ``positions=`` (see :func:`hidden_at`); a backbone that does computes
    #: its last layer for those query positions only (the same outputs as indexing the full result).
    supports_positions: bool = False
    #: Whether the backbone has the incremental decoding API ``forward_cached(tokens_new, cache, mask_new)
    #: -> (hidden_new, cache)`` (a key/value cache; causal backbones only), e.g. :class:`GPT2Backbone`.
    supports_kv_cache: bool = False

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:  # pragma: no cover
        """``tokens [B, N, W]``, ``mask [B, N]`` bool (True = valid) -> hidden ``[B, N, W]``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers
    def check_inputs(self, tokens: Tensor, mask: Tensor | None) -> None:
        """Raise :class:`ShapeMismatchError` unless ``tokens [B, N, width]`` and ``mask [B, N]`` agree."""
        name = type(self).__name__
        if tokens.ndim != 3 or tokens.shape[-1] != self.width:
            raise ShapeMismatchError(
                f"{name}: tokens must be [batch, tokens, {self.width}], got {list(tokens.shape)}. "
                "Embed your inputs to the backbone's width first."
            )
        if mask is not None and (mask.shape != tokens.shape[:2] or mask.dtype != torch.bool):
            raise ShapeMismatchError(
                f"{name}: mask must be a bool tensor of shape {list(tokens.shape[:2])} (True = valid "
                f"token), got {mask.dtype} {list(mask.shape)}."
            )


def hidden_at(backbone: nn.Module, tokens: Tensor, mask: Tensor | None, positions: Tensor | None) -> Tensor:
    """``backbone(tokens, mask)[:, positions]`` (``[B, len(positions), W]``; all of it when ``positions`` is None).

    A backbone with ``supports_positions`` gets ``positions=`` and skips the last layer's work at the
    other tokens (their keys and values are still computed); any other backbone (the plain
    ``forward(tokens, mask)`` interface) runs in full and is indexed. ``positions``: 1-D long tensor
    of distinct token indices in ``[0, N)``, ascending.
    """
    if positions is None:
        return backbone(tokens, mask)
    if getattr(backbone, "supports_positions", False):
        return backbone(tokens, mask, positions=positions)
    return backbone(tokens, mask)[:, positions]


def check_heads(width: int, heads: int, where: str) -> int:
    """Validate ``width``/``heads`` and return the per-head width ``width // heads``."""
    if width <= 0 or heads <= 0 or width % heads:
        raise ConfigError(
            f"{where}: width ({width}) must be a positive multiple of heads ({heads}); "
            f"e.g. width {max(heads, 1) * max(1, width // max(heads, 1))} with {heads} heads."
        )
    return width // heads


def zero_padding(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """``tokens [B, N, W]`` with padded positions (``mask`` False) set to 0, so garbage (NaN) cannot leak.

    Masked attention multiplies a padded value by an attention weight of exactly 0, and
    ``0 * NaN = NaN``: the padded content itself must be cleaned, masking the keys is not enough.
    """
    if mask is None:
        return tokens
    return tokens.masked_fill(~mask.unsqueeze(-1), 0.0)


def attention_mask(mask: Tensor, causal: bool) -> Tensor:
    """Boolean attention mask ``[B, 1, N, N]`` (True = may attend) from a validity ``mask [B, N]``.

    Query ``i`` attends to valid keys ``j`` (``j <= i`` when causal) and always to itself, so no
    row is empty (an empty row gives NaN with ``-inf`` masking, e.g. a left-padded causal row).
    """
    n = mask.shape[-1]
    allowed = mask[:, None, None, :].expand(-1, 1, n, n)  # [B, 1, N(query), N(key)]
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    return allowed | eye


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout`` at about a third of its CPU cost (same distribution up to rounding ``p`` to 1/65536).

    PyTorch's CPU dropout draws one Mersenne-Twister number per element (``bernoulli_``); here
    one 64-bit draw gives four 16-bit uniforms. The kept values are scaled by ``1 / (1 - p)`` of
    the rounded ``p``, so the expectation is exact. On other devices this is ``F.dropout``.
    """
    if not training or p <= 0.0:
        return x
    drop = round(p * 65536)
    if x.device.type != "cpu" or drop >= 65536:
        return F.dropout(x, p, True)
    if drop == 0:
        return x
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    uniform = words.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    keep = torch.ge(uniform, drop - 32768, out=torch.empty_like(x))  # 1.0 with probability 1 - drop / 65536
    return x * keep.mul_(65536 / (65536 - drop))  # backward: one multiply by the saved mask


class Dropout(nn.Module):
    """``nn.Dropout`` using the fast CPU :func:`dropout`."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
