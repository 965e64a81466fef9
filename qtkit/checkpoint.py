"""Checkpoint folders: ``config.yaml`` + ``weights.safetensors`` + ``state.pt``, written atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from qtkit.config import dump_yaml
from qtkit.errors import CheckpointError

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.pt"


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Fill a sibling temporary folder (yielded), then swap it in for ``directory`` in one rename.

    An existing ``directory`` is only replaced once the block completes; on any error the temporary
    folder is removed and ``directory`` is left as it was.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        yield tmp
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
