"""Writing shower files: :class:`ShowerWriter` (chunk by chunk), :func:`write_showers`
(CaloChallenge layout) and :func:`write_calogan` (CaloGAN layout), all atomic."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from caloforge.errors import DataError
from caloforge.geometry import load_geometry
from caloforge.interrupt import deferred, handle_sigint
from caloforge.io.files import atomic_path, write_error
from caloforge.io.formats import CALOGAN_LAYERS, DEFAULT_CHUNK_BYTES
from caloforge.io.showers import CONDITION_NAMES

__all__ = ["ShowerWriter", "write_showers", "write_calogan"]


class _GuardedFile(io.FileIO):
    """The HDF5 file's bytes, written through Python so that a failed write (full disk,
    file-size limit) is *recorded* instead of reaching HDF5, which can crash (SIGSEGV)
    when it closes a file whose writes failed.  Later writes are dropped: the file is
    deleted anyway, and the writer raises :class:`OutputError` naming the cause."""

    error: OSError | None = None

    def write(self, b) -> int:
        if self.error is None:
            try:
                return super().write(b)
            except OSError as exc:
                self.error = exc
        return len(memoryview(b))

    def truncate(self, size=None):
        if self.error is None:
            try:
                return super().truncate(size)
            except OSError as exc:
                self.error = exc
        return size


class ShowerWriter:
    """Append showers to a CaloChallenge file chunk by chunk, atomically.

    The file is built under a temporary name and renamed onto ``path`` when the
    writer closes without error.  Each :meth:`append` is flushed and shielded from
    Ctrl-C, so on an interruption the showers appended so far survive, whole, in
    ``<stem>.partial.h5``; after a kill they are in the temporary file; after a failed
    write (full disk) nothing is left and :class:`~caloforge.errors.OutputError` says why.

    >>> import numpy as np, tempfile, os
    >>> from caloforge.io import read_showers
    >>> path = os.path.join(tempfile.mkdtemp(), "out.h5")
    >>> with ShowerWriter(path, n_voxels=4) as w:
    ...     w.append(np.array([10.0]), np.ones((1, 4)))
    ...     w.append(np.array([20.0, 30.0]), np.zeros((2, 4)))
    >>> len(read_showers(path))
    3
    """

    def __init__(
        self,
        path: str | Path,
        n_voxels: int,
        conditions: tuple[str, ...] | list[str] = (),
        dtype=np.float32,
        compression: str | None = "gzip",
        attrs: Mapping[str, object] | None = None,
    ) -> None:
        unknown = set(conditions) - set(CONDITION_NAMES)
        if unknown:
            raise DataError(f"unknown condition(s) {sorted(unknown)}; known: {', '.join(CONDITION_NAMES)}")
        self.path = Path(path)
        self.n_voxels = int(n_voxels)
        self.conditions = tuple(conditions)
        self.dtype = dtype
        self.compression = compression
        self.attrs = dict(attrs or {})
        self.n = 0
        self._ctx = None
        self._file = None
        self._raw: _GuardedFile | None = None
        self._sigint = None

    def __enter__(self) -> "ShowerWriter":
        import h5py

        self._sigint = handle_sigint()  # Ctrl-C between appends, never inside one
        self._sigint.__enter__()
        try:
            self._ctx = atomic_path(self.path, keep_partial=True)
            tmp = self._ctx.__enter__()
        except BaseException:
            self._sigint.__exit__(*sys.exc_info())
            raise
        try:
            with deferred():
                self._raw = _GuardedFile(tmp, "w+")
                self._file = h5py.File(self._raw, "w")
                self._create(h5py)
                self._check_written()
        except (OSError, RuntimeError) as exc:  # h5py reports a full disk as either
            err = write_error(self.path, (self._raw and self._raw.error) or exc)
            self.__exit__(type(err), err, None)
            raise err from None
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _create(self, h5py) -> None:
        rows = max(1, min(1024, (1 << 20) // (4 * self.n_voxels)))
        opts = dict(compression=self.compression) if self.compression else {}
        if self.compression == "gzip":
            opts.update(compression_opts=4, shuffle=True)
        f = self._file
        f.create_dataset("incident_energies", (0, 1), maxshape=(None, 1), dtype=np.float64, chunks=(4096, 1))
        f.create_dataset(
            "showers", (0, self.n_voxels), maxshape=(None, self.n_voxels), dtype=self.dtype,
            chunks=(rows, self.n_voxels), **opts,
        )
        for name in self.conditions:
            f.create_dataset(name, (0, 1), maxshape=(None, 1), dtype=np.float64, chunks=(4096, 1))
        for k, v in self.attrs.items():
            f.attrs[k] = v
        f.flush()

    def append(self, incident_energy, showers, conditions: Mapping[str, np.ndarray] | None = None) -> None:
        """Append a block of complete showers and flush it to disk."""
        energy = np.asarray(incident_energy, dtype=np.float64).reshape(-1, 1)
        showers = np.asarray(showers)
        conditions = dict(conditions or {})
        if showers.shape != (len(energy), self.n_voxels):
            raise DataError(f"{self.path}: expected showers of shape ({len(energy)}, {self.n_voxels}), got {showers.shape}")
        if set(conditions) != set(self.conditions):
            raise DataError(f"{self.path}: expected conditions {list(self.conditions)}, got {sorted(conditions)}")
        try:
            self._append(energy, showers, conditions)
        except (OSError, RuntimeError) as exc:  # h5py reports a failed write as either
            raise write_error(self.path, self._raw.error or exc) from None
        self._check_written()

    def _check_written(self) -> None:
        if self._raw is not None and self._raw.error is not None:
            raise write_error(self.path, self._raw.error)

    def _append(self, energy, showers, conditions) -> None:
        f, lo, hi = self._file, self.n, self.n + len(energy)
        with deferred():  # all datasets grow together: a partial file holds whole showers
            f["incident_energies"].resize(hi, axis=0)
            f["incident_energies"][lo:hi] = energy
            f["showers"].resize(hi, axis=0)
            f["showers"][lo:hi] = showers
            for name in self.conditions:
                f[name].resize(hi, axis=0)
                f[name][lo:hi] = np.asarray(conditions[name], dtype=np.float64).reshape(-1, 1)
            f.flush()
            self.n = hi

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._finish(exc)
        except BaseException as err:
            self._sigint.__exit__(type(err), err, err.__traceback__)
            raise
        self._sigint.__exit__(None, None, None)
        return False

    def _finish(self, exc: BaseException | None) -> None:
        """Close the file, then rename it onto ``path`` (success), to ``.partial`` (an
        interruption) or delete it (an error), re-raising ``exc``."""
        try:
            with deferred():
                if self._file is not None:
                    self._file.close()
                if self._raw is not None:
                    self._raw.close()
                    if self._raw.error is not None and exc is None:  # e.g. the metadata at close
                        exc = write_error(self.path, self._raw.error)
        except BaseException as close_exc:
            exc = exc or close_exc
        if exc is None:
            self._ctx.__exit__(None, None, None)
        elif not self._ctx.__exit__(type(exc), exc, exc.__traceback__):
            raise exc


def write_showers(
    path: str | Path,
    incident_energy: np.ndarray,
    showers: np.ndarray,
    conditions: Mapping[str, np.ndarray] | None = None,
    dtype=np.float32,
    compression: str | None = "gzip",
    attrs: Mapping[str, object] | None = None,
) -> None:
    """Write a CaloChallenge-format file atomically (temp file + rename).

    ``incident_energy`` (N,) MeV, ``showers`` (N, n_voxels) MeV, optional
    ``conditions`` from :data:`CONDITION_NAMES`.
    """
    showers = np.asarray(showers)
    conditions = dict(conditions or {})
    with ShowerWriter(path, showers.shape[1], tuple(conditions), dtype, compression, attrs) as w:
        step = max(1, DEFAULT_CHUNK_BYTES // (4 * showers.shape[1]))
        for lo in range(0, len(showers), step):
            sl = slice(lo, lo + step)
            w.append(np.asarray(incident_energy).reshape(-1)[sl], showers[sl], {k: np.asarray(v).reshape(-1)[sl] for k, v in conditions.items()})
        if len(showers) == 0:
            w.append(np.zeros(0), np.zeros((0, showers.shape[1])), {k: np.zeros(0) for k in conditions})


def write_calogan(path: str | Path, incident_energy: np.ndarray, showers: np.ndarray, overflow=None) -> None:
    """Write showers of the ``calogan`` geometry in the CaloGAN HDF5 layout (atomic)."""
    import h5py

    geo = load_geometry("calogan")
    showers = np.asarray(showers, dtype=np.float32)
    geo.check_voxels(showers.shape[-1], str(path))
    layers = geo.split(showers)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("energy", data=np.asarray(incident_energy, np.float64).reshape(-1, 1) / 1000.0)
        for name, arr in zip(CALOGAN_LAYERS, layers):
            f.create_dataset(name, data=arr, compression="gzip", compression_opts=4)
        if overflow is not None:
            f.create_dataset("overflow", data=np.asarray(overflow, np.float32).reshape(len(showers), 3))
