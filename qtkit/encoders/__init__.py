"""Encoders (kind ``encoder``): one observation -> the features policies and critics consume.

``flat`` (vectors, the default), ``conv`` (a small RL CNN for 64x64 frames) and ``timm`` (any timm model).
"""

from qtkit.encoders.base import Encoder
from qtkit.encoders.conv import ConvEncoder
from qtkit.encoders.flat import FlatEncoder
from qtkit.encoders.image import ImageEncoder
from qtkit.encoders.timm import TimmEncoder

__all__ = ["ConvEncoder", "Encoder", "FlatEncoder", "ImageEncoder", "TimmEncoder"]
