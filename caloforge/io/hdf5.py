"""Opening HDF5 shower files, with one-line errors for missing, foreign or damaged files."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from caloforge.errors import DataError

__all__ = ["open_hdf5", "h5_reason"]


@contextmanager
def open_hdf5(path: Path) -> Iterator:
    """The h5py file at ``path``, read-only; :class:`DataError` for a missing, non-HDF5 or
    damaged file, also when a damaged chunk surfaces only as it is read."""
    import h5py

    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a shower file")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: cannot open HDF5 file, truncated or corrupted ({h5_reason(exc)})") from None
    try:
        yield f
    except OSError as exc:  # a damaged chunk surfaces only when it is read
        raise DataError(f"{path}: cannot read data, truncated or corrupted ({h5_reason(exc)})") from None
    finally:
        f.close()


def h5_reason(exc: Exception) -> str:
    """The first line of an h5py/OS error, without the parenthesised details."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split("(")[0].strip().rstrip(",") or text
