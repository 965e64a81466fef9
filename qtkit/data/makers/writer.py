"""Writing a made dataset as a local Minari dataset (hdf5 backend), atomically.

Layout (minari 0.5): a dataset ``qtkit/pointmaze-umaze-sparse-v0`` lives in
``$MINARI_DATASETS_PATH/qtkit/pointmaze-umaze-sparse-v0/data/{metadata.json,main_data.hdf5}`` and its
metadata records the id, which must match the folder. So a dataset is written *with its final id* into a
hidden temporary root ``$MINARI_DATASETS_PATH/.qtkit-make-XXXX/`` (same filesystem; minari skips hidden
folders when listing) and the finished folder is renamed into place. A failed or interrupted make
removes the temporary root and leaves nothing under the final id; with ``overwrite`` the old dataset is
only removed once the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from qtkit.errors import ConfigError, DataError
from qtkit.fileio import umask_mode

#: Namespace of every dataset qtkit makes: ids are ``qtkit/<maker>-v0``.
NAMESPACE = "qtkit"
_VERSION_RE = re.compile(r"-v\d+$")
_TMP_PREFIX = ".qtkit-make-"
#: A staging folder older than this is stale whatever its owner (a crashed make on another host, a reused pid).
STALE_AFTER_S = 24 * 3600
OWNER_FILE = ".qtkit-owner"


# ----------------------------------------------------------------------------- staging folders, no litter
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def is_stale(folder: Path, now: float | None = None) -> bool:
    """Whether staging folder ``folder`` (``<prefix><pid>-XXXX`` with an owner file) was left by a dead make:
    its owner process (on this host) is gone, or it is older than :data:`STALE_AFTER_S`. A folder without the
    pid in its name (older qtkit) is stale after an hour."""
    import socket
    import time

    now = time.time() if now is None else now
    try:
        age = now - folder.stat().st_mtime
    except OSError:
        return False
    if age > STALE_AFTER_S:
        return True
    match = re.match(r"^\.[a-z-]+?-(\d+)-", folder.name)
    if match is None:
        return age > 3600
    pid = int(match.group(1))
    try:
        host = (folder / OWNER_FILE).read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        host = socket.gethostname()  # written first thing; missing only when the make died at once
    if host != socket.gethostname():
        return False  # another machine's make (shared filesystem): only its age tells
    return pid != os.getpid() and not _pid_alive(pid)


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove the stale staging folders ``parent/<prefix>*`` (see :func:`is_stale`); returns them."""
    removed = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return removed
    for folder in candidates:
        if is_stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (``kill PID``) raises KeyboardInterrupt, so ``finally`` clauses remove staging
    folders on the way down (only in the main thread, and only over the default handler). ``kill -9`` cannot be
    caught: its leftovers are removed by the next make (:func:`remove_stale`)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"terminated (signal {signum})")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A fresh hidden folder ``parent/<prefix><pid>-XXXX`` (stale ones from dead makes removed first), removed
    when the block ends, however it ends (error, Ctrl-C, SIGTERM via :func:`terminate_as_interrupt`)."""
    import socket

    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    try:
        (tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n", encoding="utf-8")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class DatasetExistsError(DataError, FileExistsError):
    """A made dataset would replace an existing one and ``overwrite`` was not given."""


def default_dataset_id(maker: str) -> str:
    """The Minari id a maker writes by default: ``qtkit/<maker>-v0``."""
    return f"{NAMESPACE}/{maker}-v0"


def normalize_dataset_id(dataset_id: str) -> str:
    """Validate a user-chosen id; a ``minari:`` prefix is dropped and a missing version becomes ``-v0``."""
    from minari.dataset.minari_dataset import parse_dataset_id

    raw = str(dataset_id).strip()
    if raw.startswith("minari:"):
        raw = raw[len("minari:") :]
    if not _VERSION_RE.search(raw):
        raw = f"{raw}-v0"
    try:
        parse_dataset_id(raw)
    except (ValueError, TypeError):
        raise ConfigError(
            f"Dataset id {dataset_id!r} is not a valid Minari id. Use '(namespace/)name-vN', "
            f"e.g. '{NAMESPACE}/my-umaze-v0' (letters, digits, '_' and '-')."
        ) from None
    return raw


def minari_root_path() -> Path:
    """Where Minari keeps local datasets (``$MINARI_DATASETS_PATH``, default ``~/.minari/datasets``), not created."""
    env = os.environ.get("MINARI_DATASETS_PATH")  # as minari reads it (an empty value is the current folder)
    return Path(env) if env is not None else Path.home() / ".minari" / "datasets"


def datasets_root() -> Path:
    """``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``), created if missing."""
    from minari.storage import get_dataset_path

    return Path(get_dataset_path())


def dataset_dir(dataset_id: str) -> Path:
    """The folder of a local Minari dataset (the datasets folder is not created)."""
    return minari_root_path() / dataset_id


def dataset_exists(dataset_id: str) -> bool:
    """Whether a local Minari dataset folder ``dataset_id`` exists (a finished one: makes are atomic)."""
    return (dataset_dir(dataset_id) / "data").is_dir()


def check_writable(dataset_id: str, overwrite: bool) -> None:
    """Raise :class:`DatasetExistsError` if ``dataset_id`` exists locally and ``overwrite`` is False."""
    path = dataset_dir(dataset_id)
    if path.exists() and not overwrite:
        raise DatasetExistsError(
            f"Dataset {dataset_id!r} already exists at {path}. Pass overwrite=True (CLI: --overwrite) to "
            f"replace it, or write elsewhere with dataset_id=... (CLI: --id NAMESPACE/NAME-v0)."
        )


@contextlib.contextmanager
def _minari_root(root: Path) -> Iterator[None]:
    """Point minari at ``root`` for the duration (minari reads ``MINARI_DATASETS_PATH`` on every call)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _ensure_namespace(dataset_id: str) -> None:
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.namespace import create_namespace, list_local_namespaces

    namespace = parse_dataset_id(dataset_id)[0]
    if namespace is not None and namespace not in list_local_namespaces():
        description = "Datasets made by qtkit (qtkit data make)." if namespace == NAMESPACE else None
        create_namespace(namespace, description=description)


def write_minari_dataset(
    dataset_id: str,
    episodes: Sequence[Any],
    *,
    env: Any,
    eval_env: Any,
    metadata: dict[str, Any],
    description: str,
    algorithm_name: str,
    requirements: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``episodes`` (minari ``EpisodeBuffer`` s) as ``dataset_id``; returns the dataset folder.

    ``env`` is the collection env (an instance: its spec and spaces are stored), ``eval_env`` an env id,
    spec or instance for evaluation. ``metadata`` (ref scores, provenance) is added to metadata.json.
    """
    import minari

    check_writable(dataset_id, overwrite)
    root = datasets_root()
    final = root / dataset_id
    old_aside: Path | None = None
    with staging_dir(root, _TMP_PREFIX) as tmp_root:
        with _minari_root(tmp_root), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(author_email|code_permalink).*", category=UserWarning)
            dataset = minari.create_dataset_from_buffers(
                dataset_id,
                list(episodes),
                env=env,
                eval_env=eval_env,
                algorithm_name=algorithm_name,
                author="qtkit",
                code_permalink="qtkit.data.makers",
                description=description,
                data_format="hdf5",
                requirements=requirements,
                **_lossless_images(),
            )
            dataset.storage.update_metadata(metadata)
        _ensure_namespace(dataset_id)
        check_writable(dataset_id, overwrite)  # someone may have written it meanwhile
        final.parent.mkdir(parents=True, exist_ok=True)
        _umask_modes(tmp_root / dataset_id)
        if final.exists():
            old_aside = tmp_root / "replaced"
            os.replace(final, old_aside)
        try:
            os.replace(tmp_root / dataset_id, final)
        except BaseException:
            if old_aside is not None and not final.exists():
                os.replace(old_aside, final)
            raise
    return final


def _lossless_images() -> dict[str, Any]:
    """``jpeg_encoding=False`` where minari has it (0.5.4+ JPEG-encodes image observation spaces, uint8
    ``[H>=32, W>=32, (C)]`` in [0, 255], by default: lossy, so frames would differ from what the evaluation env
    renders). Made pixel datasets store the raw frames."""
    import inspect

    import minari

    params = inspect.signature(minari.create_dataset_from_buffers).parameters
    return {"jpeg_encoding": False} if "jpeg_encoding" in params else {}


def _umask_modes(folder: Path) -> None:
    """Give ``folder`` and everything under it the umask's usual modes (what ``open``/``mkdir`` give)."""
    dir_mode, file_mode = umask_mode(directory=True), umask_mode()
    os.chmod(folder, dir_mode)
    for base, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(base, d), dir_mode)
        for f in files:
            os.chmod(os.path.join(base, f), file_mode)


def list_local_datasets() -> dict[str, dict[str, Any]]:
    """Id -> metadata of every local Minari dataset (warnings about foreign folders are silenced)."""
    import minari

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(minari.list_local_datasets())
