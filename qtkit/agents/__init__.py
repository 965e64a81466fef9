"""Agent families (kind ``agent``): siblings on the :class:`Agent` base, each providing its optimisers and
training step; the training loop they share is :mod:`qtkit.training`."""

from qtkit.agents.base import Agent
from qtkit.agents.qt import QTAgent
from qtkit.agents.qtransformer import QTransformerAgent

__all__ = ["Agent", "QTAgent", "QTransformerAgent"]
