"""The training loop every agent family and the d3rlpy peers share (:func:`train`)."""

from qtkit.training.loop import Schedule, Trainable, summarize, train

__all__ = ["Schedule", "Trainable", "summarize", "train"]
