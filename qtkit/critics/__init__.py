"""Critics (kind ``critic``): Q(s, a) models that own their target copies and TD losses."""

from qtkit.critics.ar_q import ARQCritic
from qtkit.critics.twin_mlp import TwinMLPCritic

__all__ = ["ARQCritic", "TwinMLPCritic"]
