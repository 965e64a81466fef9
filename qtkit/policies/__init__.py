"""Policies (kind ``policy``): map a window (RTG, states, actions, timesteps) to actions."""

from qtkit.policies.gpt import GPTPolicy

__all__ = ["GPTPolicy"]
