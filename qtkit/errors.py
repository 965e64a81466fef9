"""qtkit's error hierarchy: every error names the thing that is wrong and says how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class QtkitError(Exception):
    """Base class of every error qtkit raises on purpose."""


class ConfigError(QtkitError, ValueError):
    """A preset, a component spec or an override is wrong."""


class UnknownNameError(ConfigError, KeyError):
    """A preset, a component or a kind that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownParameterError(ConfigError):
    """A parameter that the component (or the training config) does not accept."""


class ParameterTypeError(ConfigError, TypeError):
    """A parameter of the wrong type."""


class ParameterRangeError(ConfigError):
    """A parameter outside the range its declaration states (``batch_size >= 1``, ``gamma in (0, 1]``...)."""


class MissingShapeError(ConfigError):
    """obs_dim / act_dim / action bounds were not given and cannot be inferred."""


class InheritanceCycleError(ConfigError):
    """Presets whose ``base:`` chain loops."""


class PresetFileError(ConfigError):
    """A presets YAML file that cannot be read or parsed."""


class RegistryError(QtkitError):
    """Registering a component under a name that is taken, or an unknown kind."""


class DataError(QtkitError, ValueError):
    """A dataset that is missing, malformed or contains bad values."""


class ShapeMismatchError(QtkitError, ValueError):
    """Two things that must agree on a shape do not (agent vs dataset, agent vs env...)."""


class TrainingError(QtkitError, RuntimeError):
    """Training cannot go on (a non-finite loss, a bad checkpoint...)."""


class OutputPathError(QtkitError, OSError):
    """A file or folder qtkit must write cannot be written (a file in the way, permissions, read-only, disk full)."""


class CheckpointError(QtkitError):
    """A checkpoint folder that is missing, incomplete or of another preset."""


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """A ' Did you mean ...?' suffix listing close matches of ``name`` (empty if none)."""
    matches = difflib.get_close_matches(str(name), sorted(set(candidates)), n=n, cutoff=0.6)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
