"""Components of kind `backbone`: sequence models over token embeddings.

``forward(tokens [B, N, W], mask [B, N] | None) -> hidden [B, N, W]``; see :mod:`qtkit.backbones.base`.
"""

from qtkit.backbones import gpt2, xformer  # noqa: F401  (register the built-in backbones)
from qtkit.backbones.base import Backbone, attention_mask, zero_padding
from qtkit.backbones.gpt2 import GPT2Backbone
from qtkit.backbones.xformer import XFormerBackbone

__all__ = ["Backbone", "GPT2Backbone", "XFormerBackbone", "attention_mask", "zero_padding"]
