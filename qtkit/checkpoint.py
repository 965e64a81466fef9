"""Checkpoint folders: ``config.yaml`` + ``weights.safetensors`` + ``state.pt``, written atomically."""

from __future__ import annotations

import os
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


def save_checkpoint(
    directory: str | os.PathLike[str],
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write a checkpoint folder atomically: a sibling temp folder is filled, then swapped in.

    An existing checkpoint at ``directory`` is only replaced once the new one is complete.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_FILE).write_text(dump_yaml(config), encoding="utf-8")
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
        torch.save(state, tmp / STATE_FILE)
    return directory


def read_checkpoint(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(config, weights, state)`` from a checkpoint folder, with errors naming what is missing."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"Checkpoint folder {str(directory)!r} does not exist. Pass the folder given to agent.save() "
            "or the --out of `qtkit train`."
        )
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE) if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"Checkpoint {str(directory)!r} is incomplete: missing {', '.join(missing)}.")
    config = yaml.safe_load((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    weights = load_file(str(directory / WEIGHTS_FILE))
    state = torch.load(directory / STATE_FILE, weights_only=False)
    return config, weights, state
