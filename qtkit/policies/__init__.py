"""Policies (kind ``policy``): map a window (RTG, states, actions, timesteps) to actions."""

from qtkit.policies.ar_argmax import ARArgmaxPolicy
from qtkit.policies.gpt import GPTPolicy

__all__ = ["ARArgmaxPolicy", "GPTPolicy"]
