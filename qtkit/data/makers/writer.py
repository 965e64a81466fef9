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

#: Namespace of every dataset qtkit makes: ids are ``qtkit/<maker>-v0``.
NAMESPACE = "qtkit"
_VERSION_RE = re.compile(r"-v\d+$")
_TMP_PREFIX = ".qtkit-make-"


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


def datasets_root() -> Path:
    """``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``), created if missing."""
    from minari.storage import get_dataset_path

    return Path(get_dataset_path())


def dataset_dir(dataset_id: str) -> Path:
    """The folder of a local Minari dataset."""
    return datasets_root() / dataset_id


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
    tmp_root = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
    old_aside: Path | None = None
    try:
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
            )
            dataset.storage.update_metadata(metadata)
        _ensure_namespace(dataset_id)
        check_writable(dataset_id, overwrite)  # someone may have written it meanwhile
        final.parent.mkdir(parents=True, exist_ok=True)
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
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def list_local_datasets() -> dict[str, dict[str, Any]]:
    """Id -> metadata of every local Minari dataset (warnings about foreign folders are silenced)."""
    import minari

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(minari.list_local_datasets())
