"""Output files: checked before the work starts, written atomically, failures in one line.

A file is written under a temporary name beside its destination and renamed onto it
only when complete, so a reader never sees half a file and an existing file survives
a failed or interrupted write.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from caloforge.errors import OutputError
from caloforge.interrupt import check, deferred
from caloforge.io.hdf5 import h5_reason

__all__ = ["check_output_file", "check_output_dir", "atomic_path", "write_error"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_parent(path: Path, what: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable directory (OutputError if not)."""
    for p in path.absolute().parents:
        if p.exists():
            if not p.is_dir():
                raise OutputError(f"{path}: cannot write {what}: {p} is not a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: cannot write {what}: directory {p} is not writable")
            return


def check_output_file(path: str | Path) -> Path:
    """Check, before any work starts, that an output *file* can be written at ``path``.

    Call it on every ``-o FILE`` (simulate, generate, train's files, …) so that a bad
    path fails in a second, not after the work.  Refuses, with an
    :class:`~caloforge.errors.OutputError` naming the path (one line, exit 2 in the
    CLI): an existing directory or other non-regular file, a parent that is a file,
    and a location without write permission.  Nothing is created: missing parent
    directories are created (like ``mkdir -p``) only when the file is written
    (:func:`atomic_path`).  An existing regular file is fine: it is replaced
    atomically once the new one is complete.  Returns ``path`` as a Path.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name for the output, e.g. {path / 'out.h5'}")
    if path.exists() and not path.is_file():
        raise OutputError(f"{path}: exists and is not a regular file")
    if path.name in ("", ".", ".."):
        raise OutputError(f"{path}: not a file name")
    _check_parent(path, "the output file")
    return path


def check_output_dir(path: str | Path) -> Path:
    """Check, before any work starts, that an output *directory* (a report, a run) is usable.

    Refuses (:class:`~caloforge.errors.OutputError`, one line) a path that exists and
    is not a directory, a parent that is a file, and a location without write
    permission.  Nothing is created: a missing directory (and its parents) is created
    when the first file is written.  Returns ``path`` as a Path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a directory; choose another output directory")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: output directory is not writable")
    else:
        _check_parent(path, "the output directory")
    return path


_WRITE_ERRNOS = {errno.ENOSPC: "disk full", errno.EFBIG: "file too large (file-size limit)",
                 errno.EDQUOT: "disk quota exceeded", errno.EIO: "I/O error", errno.EROFS: "read-only file system",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


def write_error(path: Path, exc: Exception) -> OutputError:
    """One line for a failed write; h5py hides the errno in its message, so look there too."""
    if isinstance(exc, OutputError):
        return exc
    reason = _WRITE_ERRNOS.get(getattr(exc, "errno", None) or 0)
    text = str(exc)
    if reason is None:
        for code, name in _WRITE_ERRNOS.items():
            if f"errno = {code}," in text or os.strerror(code) in text:
                reason = name
                break
    return OutputError(f"{path}: write failed: {reason or h5_reason(exc)}; nothing was written under this name")


@contextmanager
def atomic_path(path: str | Path, keep_partial: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is deleted (or, with ``keep_partial`` and an
    interruption, renamed to ``<stem>.partial<suffix>``), and an existing ``path`` is
    left untouched.  A failed write (full disk, file-size limit, …) raises
    :class:`OutputError`.  The parent directory is created when missing.
    """
    path = check_output_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would honour the umask
        yield tmp_path
        check()  # a Ctrl-C swallowed during the work: do not publish the file
        with deferred():  # an interrupt here must not leave the file half-renamed or the temp behind
            os.replace(tmp_path, path)
    except BaseException as exc:
        # a partial file only for an interruption: after a failed write it may be inconsistent
        # (a dead worker ends the run like an interruption: what was appended before is whole)
        if (keep_partial and (isinstance(exc, KeyboardInterrupt) or getattr(exc, "keeps_partial", False))
                and tmp_path.exists()
                and tmp_path.stat().st_size > 0):
            os.replace(tmp_path, path.with_name(f"{path.stem}.partial{path.suffix}"))
        else:
            tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise write_error(path, exc) from None
        raise
