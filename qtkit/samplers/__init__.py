"""Samplers (kind ``sampler``): choose the action at evaluation time (build, score, select candidates)."""

from qtkit.samplers.ar_greedy import ARGreedySampler
from qtkit.samplers.base import RolloutContext, Sampler
from qtkit.samplers.candidates import GaussianSampler, RTGGridSampler, SingleRTGSampler

__all__ = ["ARGreedySampler", "GaussianSampler", "RTGGridSampler", "RolloutContext", "Sampler", "SingleRTGSampler"]
