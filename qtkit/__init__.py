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

#: Submodules reachable as attributes after ``import qtkit`` (``qtkit.data.load_dataset``, ``qtkit.samplers.Sampler``),
#: each imported on first access: ``import qtkit`` itself stays light (no torch, gymnasium, minari, ray...).
SUBMODULES = (
    "agents", "backbones", "backups", "checkpoint", "components", "config", "cpu", "critics", "data",
    "demo", "errors", "fileio", "params", "peers", "policies", "registry", "report", "samplers", "sweep", "training",
)


def __getattr__(name: str) -> object:
    if name in SUBMODULES:
        import importlib

        return importlib.import_module(f"qtkit.{name}")  # the import system sets qtkit.<name>
    raise AttributeError(f"module 'qtkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *SUBMODULES})

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
