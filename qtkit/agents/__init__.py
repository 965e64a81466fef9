"""Agent families (kind ``agent``): own the training loop, optimisers, EMA/targets, checkpoints."""

from qtkit.agents.base import Agent
from qtkit.agents.qt import QTAgent
from qtkit.agents.qtransformer import QTransformerAgent

__all__ = ["Agent", "QTAgent", "QTransformerAgent"]
