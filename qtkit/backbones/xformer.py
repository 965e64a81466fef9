"""``xformer``: x-transformers' ``Decoder`` (causal) / ``Encoder`` over continuous token embeddings.

x-transformers is imported inside the constructor, so ``import qtkit`` stays light. Padding is
passed as x-transformers' key ``mask``; in x-transformers 2.31 that alone keeps padded keys out
of valid queries' attention and keeps every output finite (a query with no visible key is zeroed),
but a NaN in a padded token still leaks (its attention weight is exactly 0 and ``0 * NaN = NaN``),
so padded tokens are zeroed first.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from qtkit.backbones.base import Backbone, check_heads, zero_padding
from qtkit.errors import ConfigError
from qtkit.params import DropoutRate, PositiveInt
from qtkit.registry import register

#: Keys of ``extra`` that have their own parameter (or are fixed by the backbone).
RESERVED = {"dim": "width", "depth": "depth", "heads": "heads", "causal": "causal"}


@register("backbone", "xformer")
class XFormerBackbone(Backbone):
    """x-transformers Decoder/Encoder (rotary, ALiBi, flash, any extra option): [B, N, width] -> [B, N, width].

    ``dropout`` sets x-transformers' ``attn_dropout`` and ``ff_dropout`` and the input-embedding
    dropout; ``flash``, ``rotary`` and ``alibi`` map to ``attn_flash``, ``rotary_pos_emb`` and
    ``alibi_pos_bias``; ``extra`` is passed to ``AttentionLayers`` as is (e.g. ``{ff_glu: true,
    attn_qk_norm: true, use_rmsnorm: true}``). The per-head width defaults to ``width // heads``
    (x-transformers' default of 64 breaks e.g. ``width=128, heads=1``).
    """

    def __init__(
        self,
        width: PositiveInt = 256,
        depth: PositiveInt = 4,
        heads: PositiveInt = 4,
        ff_mult: PositiveInt = 4,
        dropout: DropoutRate = 0.1,
        causal: bool = True,
        flash: bool = True,
        rotary: bool = False,
        alibi: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        where = "backbone 'xformer'"
        dim_head = check_heads(width, heads, where)
        extra = dict(extra or {})
        clash = sorted(k for k in extra if k in RESERVED)
        if clash:
            raise ConfigError(
                f"{where}: extra may not set {', '.join(clash)}; use the backbone's own parameter(s) "
                f"{', '.join(RESERVED[k] for k in clash)} instead."
            )
        from x_transformers import Decoder, Encoder

        kwargs: dict[str, Any] = {
            "dim": width,
            "depth": depth,
            "heads": heads,
            "attn_dim_head": dim_head,
            "attn_dropout": dropout,
            "ff_dropout": dropout,
            "ff_mult": ff_mult,
            "attn_flash": flash,
            "rotary_pos_emb": rotary,
            "alibi_pos_bias": alibi,
            **extra,
        }
        self.width, self.depth, self.heads, self.causal = width, depth, heads, causal
        self.drop = nn.Dropout(dropout)
        try:
            self.layers = (Decoder if causal else Encoder)(**kwargs)
        except (TypeError, AssertionError, ValueError) as exc:
            raise ConfigError(f"{where}: x-transformers rejected the options {kwargs}: {exc}") from exc

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """``tokens [B, N, W]``, ``mask [B, N]`` bool (True = valid) or None -> hidden ``[B, N, W]``."""
        self.check_inputs(tokens, mask)
        x = self.drop(zero_padding(tokens, mask))
        return self.layers(x, mask=mask)
