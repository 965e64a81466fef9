"""qtkit: offline reinforcement learning with transformers (QT and Q-Transformer).

>>> import qtkit
>>> agent = qtkit.build("qt-gpt-nstep", obs_dim=11, act_dim=3)
"""

from qtkit.build import build, load
from qtkit.config import list_presets
from qtkit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InheritanceCycleError,
    MissingShapeError,
    ParameterTypeError,
    PresetFileError,
    QtkitError,
    RegistryError,
    ShapeMismatchError,
    TrainingError,
    UnknownNameError,
    UnknownParameterError,
)
from qtkit.registry import get_component, list_components, register, register_kind

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InheritanceCycleError",
    "MissingShapeError",
    "ParameterTypeError",
    "PresetFileError",
    "QtkitError",
    "RegistryError",
    "ShapeMismatchError",
    "TrainingError",
    "UnknownNameError",
    "UnknownParameterError",
    "__version__",
    "build",
    "get_component",
    "list_components",
    "list_presets",
    "load",
    "register",
    "register_kind",
]
