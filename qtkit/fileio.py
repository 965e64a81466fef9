"""Files qtkit writes: atomic writes that respect the umask, and filesystem failures as one clear message.

Every file and folder qtkit writes for a user goes through :func:`atomic_write_bytes` / :func:`atomic_write_text`
(temporary file in the same folder, then one rename) or :func:`atomic_directory` (temporary sibling folder,
then one swap), so a kill, a full disk or an error leaves the previous version intact. Temporary files are
created 0600 by :mod:`tempfile`; they are given the umask's usual mode (``0666 & ~umask``, folders
``0777 & ~umask``) before the rename, as ``open()`` would.

:func:`check_output_dir` checks a run folder before any work starts, and :func:`output_errors` turns an
``OSError`` raised while writing into :class:`qtkit.errors.OutputPathError`, naming the path and the cause
(path is a file, under a file, permission denied, read-only filesystem, disk full) with the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from qtkit.errors import OutputPathError

__all__ = [
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_dir",
    "describe_os_error",
    "output_errors",
    "umask_mode",
]

_CAUSES = {
    errno.ENOSPC: ("the disk is full", "free space there or write elsewhere"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space there or write elsewhere"),
    errno.EROFS: ("the filesystem is read-only", "write to a writable folder"),
    errno.EACCES: ("permission denied", "write to a folder you may write to, or change its permissions"),
    errno.EPERM: ("operation not permitted", "write to a folder you may write to, or change its permissions"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose a path whose parents are folders"),
    errno.EISDIR: ("it is a folder where a file is expected", "choose a file path"),
    errno.EEXIST: ("it exists and is not a folder", "choose another path or remove the file"),
    errno.ENAMETOOLONG: ("the path is too long", "choose a shorter path"),
}


def umask_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file (folder) under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def describe_os_error(exc: OSError, path: str | os.PathLike[str], what: str = "output") -> str:
    """``cannot write <what> to '<path>': <cause>. <Fix>.`` for an OSError met while writing under ``path``."""
    cause, fix = _CAUSES.get(exc.errno or 0, (exc.strerror or str(exc), "check the path"))
    where = exc.filename if exc.filename and str(exc.filename) != str(path) else None
    detail = f" ({where})" if where else ""
    return f"cannot write {what} to {str(path)!r}{detail}: {cause}. Fix: {fix}."


@contextlib.contextmanager
def output_errors(path: str | os.PathLike[str], what: str = "output") -> Iterator[None]:
    """Re-raise an ``OSError`` (and torch's/safetensors' wrapped write failures) from the block as
    :class:`OutputPathError` naming ``path`` and the cause."""
    try:
        yield
    except OutputPathError:
        raise
    except OSError as exc:
        raise OutputPathError(describe_os_error(exc, path, what)) from exc
    except RuntimeError as exc:  # torch.save's "PytorchStreamWriter failed writing file ..." on a full disk
        text = str(exc)
        if "PytorchStreamWriter" in text or "inline_container" in text or "file write failed" in text:
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise OutputPathError(describe_os_error(full, path, what)) from exc
        raise


def check_output_dir(path: str | os.PathLike[str], what: str = "run folder") -> Path:
    """Check, before any work starts, that ``path`` can be a folder qtkit writes into; create it.

    Raises :class:`OutputPathError` when ``path`` is a file, lies under a file, or cannot be written
    (permissions, read-only filesystem). Returns the path.
    """
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            cause = "it is a file, not a folder" if parent == path else f"{str(parent)!r} is a file, not a folder"
            raise OutputPathError(f"cannot use {str(path)!r} as the {what}: {cause}. Fix: choose another --out.")
    with output_errors(path, what):
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".qtkit-write-test-")
        os.close(fd)
        os.unlink(probe)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it to ``path``.

    ``path`` is never half-written: on any error the temporary file is removed and ``path`` is left as it
    was. The file gets the umask's usual mode. Filesystem errors become :class:`OutputPathError`.
    """
    path = Path(path)
    with output_errors(path, "a file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            os.chmod(tmp, umask_mode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, lambda handle: handle.write(text.encode("utf-8")))


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Fill a sibling temporary folder (yielded), then swap it in for ``directory`` in one rename.

    An existing ``directory`` is only replaced once the block completes; on any error the temporary
    folder is removed and ``directory`` is left as it was. The folder gets the umask's usual mode.
    Filesystem errors become :class:`OutputPathError`.
    """
    directory = Path(directory)
    with output_errors(directory, "a folder"):
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
        try:
            yield tmp
            os.chmod(tmp, umask_mode(directory=True))
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
