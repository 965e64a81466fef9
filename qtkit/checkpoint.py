"""Checkpoint folders: ``config.yaml`` + ``weights.safetensors`` + ``state.pt``, written atomically.

A checkpoint is replaced only once its successor is complete (:func:`qtkit.fileio.atomic_directory`). A process
killed in the instant between moving the old folder aside and moving the new one in leaves the old one as a
hidden sibling (``.checkpoint.old-PID``): the readers read it there, and :func:`recover_checkpoint` (a resume)
puts it back.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from qtkit.config import dump_yaml
from qtkit.errors import CheckpointError
from qtkit.fileio import atomic_directory, atomic_write_text  # noqa: F401  (re-exported: older imports)

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.pt"
FILES = (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE)


def save_checkpoint(
    directory: str | os.PathLike[str],
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write a checkpoint folder atomically: a sibling temp folder is filled, then swapped in.

    An existing checkpoint at ``directory`` is only replaced once the new one is complete. Filesystem
    failures raise :class:`~qtkit.errors.OutputPathError` naming the folder and the cause.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_FILE).write_text(dump_yaml(config), encoding="utf-8")
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
        torch.save(state, tmp / STATE_FILE)
    return directory


def leftovers(directory: str | os.PathLike[str]) -> list[Path]:
    """The hidden siblings a killed :func:`save_checkpoint` may leave: ``.NAME.tmp-*`` and ``.NAME.old-*``."""
    directory = Path(directory)
    if not directory.parent.is_dir():
        return []
    return sorted(p for p in directory.parent.iterdir()
                  if p.name.startswith((f".{directory.name}.tmp-", f".{directory.name}.old-")))


def _previous(directory: Path) -> Path | None:
    """The complete checkpoint a kill between the two renames of a swap left aside (``.NAME.old-PID``), if any."""
    old = [p for p in leftovers(directory) if ".old-" in p.name and all((p / f).is_file() for f in FILES)]
    return max(old, key=lambda p: p.stat().st_mtime) if old else None


def _locate(directory: Path) -> Path:
    """``directory``, or the previous checkpoint left aside when a kill fell inside a swap (read, not moved)."""
    if not directory.exists():
        return _previous(directory) or directory
    return directory


def recover_checkpoint(directory: str | os.PathLike[str]) -> bool:
    """For the run that owns ``directory`` (a resume): put back the previous checkpoint if a kill fell between the
    two renames of the swap, and remove the leftovers of interrupted saves. Returns True when a checkpoint folder
    is there afterwards. (Readers such as :func:`read_checkpoint` never move anything: a live run may be saving.)"""
    from qtkit.fileio import output_errors

    directory = Path(directory)
    with output_errors(directory.parent, "the run folder"):
        if not directory.exists() and (previous := _previous(directory)) is not None:
            os.replace(previous, directory)
        if directory.is_dir():
            for path in leftovers(directory):
                shutil.rmtree(path, ignore_errors=True)
    return directory.is_dir()


def _check_folder(directory: Path) -> None:
    if not directory.is_dir():
        if directory.exists():
            raise CheckpointError(f"{str(directory)!r} is a file, not a checkpoint folder. Pass the --out folder of "
                                  "`qtkit train` or a folder written by agent.save().")
        raise CheckpointError(
            f"Checkpoint folder {str(directory)!r} does not exist. Fix: pass the folder given to agent.save() "
            "or the --out of `qtkit train`."
        )
    missing = [name for name in FILES if not (directory / name).is_file()]
    if len(missing) == len(FILES):
        raise CheckpointError(
            f"{str(directory)!r} holds no checkpoint ({', '.join(FILES)}); a run stopped before its first checkpoint "
            "has none. Fix: pass the --out of a `qtkit train` run that saved one, or train (again) there."
        )
    if missing:
        raise CheckpointError(
            f"Checkpoint {str(directory)!r} is incomplete: missing {', '.join(missing)}. Use a complete checkpoint "
            "(the --out of a `qtkit train` run that saved one), or train again."
        )


def _damaged(path: Path, exc: BaseException) -> CheckpointError:
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckpointError(
        f"cannot read {str(path)!r}: the file is damaged or truncated ({cause}). Fix: restore it from a copy, or "
        "train again (a `qtkit train` run keeps its last complete checkpoint; a kill never leaves a half-written one)."
    )


def read_checkpoint_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Only ``state.pt`` of a checkpoint (the step, the run's total steps, ...), with errors naming the file."""
    directory = _locate(Path(directory))
    _check_folder(directory)
    try:
        state = torch.load(directory / STATE_FILE, weights_only=False)
    except Exception as exc:  # pickle, zip and EOF errors of a damaged file
        raise _damaged(directory / STATE_FILE, exc) from None
    if not isinstance(state, dict):
        raise _damaged(directory / STATE_FILE, TypeError(f"expected a dict, got {type(state).__name__}"))
    return state


def read_checkpoint_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Only ``config.yaml`` of a checkpoint (the agent's resolved config), with errors naming the file."""
    directory = _locate(Path(directory))
    _check_folder(directory)
    try:
        config = yaml.safe_load((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _damaged(directory / CONFIG_FILE, exc) from None
    if not isinstance(config, dict) or not isinstance(config.get("train"), dict):
        raise _damaged(directory / CONFIG_FILE, ValueError("not a qtkit agent config: no 'train' section"))
    return config


def read_checkpoint(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(config, weights, state)`` from a checkpoint folder, with errors naming what is missing or damaged."""
    from safetensors.torch import load_file

    directory = _locate(Path(directory))
    config = read_checkpoint_config(directory)
    try:
        weights = load_file(str(directory / WEIGHTS_FILE))
    except Exception as exc:  # safetensors' SafetensorError on a truncated or garbled file
        raise _damaged(directory / WEIGHTS_FILE, exc) from None
    state = read_checkpoint_state(directory)
    return config, weights, state
