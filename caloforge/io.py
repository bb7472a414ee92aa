"""Shower files: CaloChallenge and CaloGAN HDF5, streamed, validated, written atomically.

Array layout (what every caloforge function takes and returns)
--------------------------------------------------------------
``ShowerData.incident_energy``  (N,)            float, MeV, > 0
``ShowerData.showers``          (N, n_voxels)   float, MeV, ≥ 0, voxel order of the geometry
``ShowerData.conditions``       name → (N,)     optional: ``incident_theta``, ``incident_phi``
                                                [rad], ``impact_x``, ``impact_y`` [mm]

CaloChallenge file: datasets ``incident_energies`` (N, 1) and ``showers`` (N, n_voxels)
in MeV, plus the optional condition datasets above, each (N, 1).

CaloGAN file: ``energy`` (N, 1) in GeV, ``layer_0`` (N, 3, 96), ``layer_1`` (N, 12, 12),
``layer_2`` (N, 12, 6) in MeV, optional ``overflow`` (N, 3); mapped onto the
``calogan`` geometry.

Example
-------
>>> import numpy as np, tempfile, os
>>> from caloforge.io import write_showers, read_showers
>>> path = os.path.join(tempfile.mkdtemp(), "tiny.h5")
>>> write_showers(path, np.array([1000.0, 2000.0]), np.ones((2, 368)))
>>> data = read_showers(path, geometry="ds1-photons")
>>> len(data), data.showers.shape
(2, (2, 368))
"""

from __future__ import annotations

import difflib
import errno
import io
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from caloforge.errors import DataError, OutputError
from caloforge.geometry import Geometry, load_geometry
from caloforge.interrupt import check, deferred, handle_sigint

__all__ = [
    "CONDITION_NAMES",
    "ShowerData",
    "ShowerWriter",
    "FileSummary",
    "detect_format",
    "read_showers",
    "iter_showers",
    "ShowerFile",
    "write_showers",
    "write_calogan",
    "summarize",
    "atomic_path",
    "check_output_file",
    "check_output_dir",
]

CONDITION_NAMES = ("incident_theta", "incident_phi", "impact_x", "impact_y", "impact_eta")
CALOGAN_LAYERS = ("layer_0", "layer_1", "layer_2")
DEFAULT_CHUNK_BYTES = 64 * 2**20  # per streamed chunk of showers


@dataclass
class ShowerData:
    """Showers with their conditions; see the module docstring for the layout."""

    incident_energy: np.ndarray
    showers: np.ndarray
    conditions: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.incident_energy = np.asarray(self.incident_energy).reshape(-1)
        self.showers = np.asarray(self.showers)
        if self.showers.ndim != 2 or len(self.showers) != len(self.incident_energy):
            raise DataError(
                f"showers must be (N, n_voxels) with N = {len(self.incident_energy)}, got {self.showers.shape}"
            )
        self.conditions = {k: np.asarray(v).reshape(-1) for k, v in self.conditions.items()}
        for k, v in self.conditions.items():
            if len(v) != len(self.incident_energy):
                raise DataError(f"condition {k!r} has {len(v)} rows, expected {len(self.incident_energy)}")

    def __len__(self) -> int:
        return len(self.incident_energy)

    @property
    def n_voxels(self) -> int:
        return self.showers.shape[1]

    def select(self, index) -> "ShowerData":
        """Rows ``index`` (slice, mask or integer array) as a new ShowerData."""
        return ShowerData(
            self.incident_energy[index], self.showers[index], {k: v[index] for k, v in self.conditions.items()}
        )

    @staticmethod
    def concatenate(parts: list["ShowerData"]) -> "ShowerData":
        if not parts:
            raise DataError("nothing to concatenate")
        keys = set(parts[0].conditions)
        return ShowerData(
            np.concatenate([p.incident_energy for p in parts]),
            np.concatenate([p.showers for p in parts]),
            {k: np.concatenate([p.conditions[k] for p in parts]) for k in keys},
        )


# ----------------------------------------------------------------------------------
# Opening and validating
# ----------------------------------------------------------------------------------
@contextmanager
def _open(path: Path):
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
        raise DataError(f"{path}: cannot open HDF5 file, truncated or corrupted ({_h5_reason(exc)})") from None
    try:
        yield f
    except OSError as exc:  # a damaged chunk surfaces only when it is read
        raise DataError(f"{path}: cannot read data, truncated or corrupted ({_h5_reason(exc)})") from None
    finally:
        f.close()


def _h5_reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split("(")[0].strip().rstrip(",") or text


def detect_format(path: str | Path) -> str:
    """``"calochallenge"`` or ``"calogan"``, from the datasets a file holds."""
    path = Path(path)
    with _open(path) as f:
        return _detect(path, f)


def _detect(path: Path, f) -> str:
    names = set(f.keys())
    if {"incident_energies", "showers"} <= names:
        return "calochallenge"
    if {"energy", *CALOGAN_LAYERS} <= names:
        return "calogan"
    missing = [n for n in ("incident_energies", "showers") if n not in names]
    if "energy" in names or any(n.startswith("layer_") for n in names):
        missing = [n for n in ("energy", *CALOGAN_LAYERS) if n not in names]
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (found {close[0]!r})" if close else ""))
    found = ", ".join(sorted(names)) or "none"
    raise DataError(f"{path}: missing dataset {', '.join(hints)}; datasets in file: {found}")


def _check_float(path: Path, name: str, ds) -> None:
    import h5py

    if not isinstance(ds, h5py.Dataset):  # e.g. a group where the dataset belongs
        raise DataError(f"{path}: {name!r} is a {type(ds).__name__.lower()}, expected a dataset")
    if ds.ndim == 0:
        raise DataError(f"{path}: dataset {name!r} is a scalar, expected one row per shower")
    if ds.dtype.kind != "f":
        raise DataError(f"{path}: dataset {name!r} has dtype {ds.dtype}, expected floating point")


@dataclass
class _Layout:
    """Where the pieces of one file are and how many rows it has."""

    format: str
    n: int
    n_voxels: int
    conditions: tuple[str, ...]


def _layout(path: Path, f, geometry: Geometry | None) -> _Layout:
    fmt = _detect(path, f)
    if fmt == "calochallenge":
        e, s = f["incident_energies"], f["showers"]
        _check_float(path, "incident_energies", e)
        _check_float(path, "showers", s)
        if e.ndim not in (1, 2) or (e.ndim == 2 and e.shape[1] != 1):
            raise DataError(f"{path}: 'incident_energies' must have shape (N, 1), got {e.shape}")
        if s.ndim != 2 or s.shape[1] == 0:
            raise DataError(f"{path}: 'showers' must have shape (N, n_voxels) with n_voxels > 0, got {s.shape}")
        if e.shape[0] != s.shape[0]:
            raise DataError(f"{path}: 'incident_energies' has {e.shape[0]} rows but 'showers' has {s.shape[0]}")
        conds = []
        for name in CONDITION_NAMES:
            if name in f:
                c = f[name]
                _check_float(path, name, c)
                if c.shape[0] != s.shape[0] or c.size != s.shape[0]:
                    raise DataError(f"{path}: {name!r} has shape {c.shape}, expected ({s.shape[0]}, 1)")
                conds.append(name)
        layout = _Layout(fmt, s.shape[0], s.shape[1], tuple(conds))
    else:
        e = f["energy"]
        _check_float(path, "energy", e)
        n = e.shape[0]
        n_vox = 0
        for name, shape in zip(CALOGAN_LAYERS, ((3, 96), (12, 12), (12, 6))):
            ds = f[name]
            _check_float(path, name, ds)
            if ds.shape[1:] != shape:
                raise DataError(f"{path}: {name!r} must have shape (N, {shape[0]}, {shape[1]}), got {ds.shape}")
            if ds.shape[0] != n:
                raise DataError(f"{path}: 'energy' has {n} rows but {name!r} has {ds.shape[0]}")
            n_vox += shape[0] * shape[1]
        layout = _Layout(fmt, n, n_vox, ())
        if geometry is None:
            geometry = load_geometry("calogan")
    if geometry is not None and layout.n_voxels != geometry.n_voxels:
        raise DataError(
            f"{path}: showers have {layout.n_voxels} voxels, but geometry {geometry.name!r} has {geometry.n_voxels}"
        )
    return layout


def _read_rows(path: Path, f, layout: _Layout, start: int, stop: int, validate: bool) -> ShowerData:
    if layout.format == "calochallenge":
        energy = np.asarray(f["incident_energies"][start:stop], dtype=np.float64).reshape(-1)
        showers = np.asarray(f["showers"][start:stop])
        conditions = {k: np.asarray(f[k][start:stop], dtype=np.float64).reshape(-1) for k in layout.conditions}
        names = ("incident_energies", "showers")
    else:
        energy = np.asarray(f["energy"][start:stop], dtype=np.float64).reshape(-1) * 1000.0  # GeV → MeV
        showers = np.concatenate([np.asarray(f[k][start:stop]).reshape(stop - start, -1) for k in CALOGAN_LAYERS], 1)
        conditions = {}
        names = ("energy", "layer_*")
    if validate:
        _validate_rows(path, names, energy, showers, conditions, start)
    return ShowerData(energy, showers, conditions)


def _validate_rows(path: Path, names, energy, showers, conditions, offset: int) -> None:
    e_name, s_name = names
    bad = ~np.isfinite(energy)
    if bad.any():
        raise DataError(f"{path}: {e_name!r} contains NaN/inf (row {offset + int(np.argmax(bad))})")
    bad = energy <= 0
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{path}: {e_name!r} must be > 0, row {offset + row} is {energy[row]:g}")
    finite = np.isfinite(showers).all(axis=1)
    if not finite.all():
        raise DataError(f"{path}: {s_name!r} contains NaN/inf (row {offset + int(np.argmin(finite))})")
    row_min = showers.min(axis=1) if showers.size else np.zeros(len(showers))
    if (row_min < 0).any():
        row = int(np.argmin(row_min))
        raise DataError(f"{path}: {s_name!r} has negative energies (row {offset + row}, {row_min[row]:g} MeV)")
    for k, v in conditions.items():
        bad = ~np.isfinite(v)
        if bad.any():
            raise DataError(f"{path}: {k!r} contains NaN/inf (row {offset + int(np.argmax(bad))})")


def _chunk_rows(n_voxels: int, chunk_size: int | None) -> int:
    if chunk_size:
        return max(int(chunk_size), 1)
    return max(DEFAULT_CHUNK_BYTES // (8 * max(n_voxels, 1)), 1)


# ----------------------------------------------------------------------------------
# Public readers
# ----------------------------------------------------------------------------------
def iter_showers(
    path: str | Path,
    geometry: Geometry | str | None = None,
    chunk_size: int | None = None,
    start: int = 0,
    stop: int | None = None,
    validate: bool = True,
) -> Iterator[ShowerData]:
    """Stream a shower file in chunks of ``chunk_size`` rows (default: ~64 MB each).

    Memory stays bounded by one chunk whatever the file size.  Every chunk is
    validated (finite, non-negative showers, positive incident energies) before it is
    yielded; a bad chunk raises :class:`DataError` naming the file and row.
    """
    path = Path(path)
    geo = load_geometry(geometry) if geometry is not None else None
    with _open(path) as f:
        layout = _layout(path, f, geo)
        stop = layout.n if stop is None else min(stop, layout.n)
        step = _chunk_rows(layout.n_voxels, chunk_size)
        for lo in range(start, stop, step):
            check()  # a Ctrl-C swallowed by a callback stops a long pass here
            yield _read_rows(path, f, layout, lo, min(lo + step, stop), validate)


def read_showers(
    path: str | Path,
    geometry: Geometry | str | None = None,
    start: int = 0,
    stop: int | None = None,
    validate: bool = True,
    dtype=np.float32,
) -> ShowerData:
    """Read (rows ``start:stop`` of) a CaloChallenge or CaloGAN file into memory.

    The file is read and validated chunk by chunk, so a bad row is reported before
    the whole file is in memory.  Showers are returned as ``dtype``.
    """
    path = Path(path)
    geo = load_geometry(geometry) if geometry is not None else None
    with _open(path) as f:
        layout = _layout(path, f, geo)
        stop = layout.n if stop is None else min(stop, layout.n)
        n = max(stop - start, 0)
        energy = np.empty(n, np.float64)
        showers = np.empty((n, layout.n_voxels), dtype)
        conds = {k: np.empty(n, np.float64) for k in layout.conditions}
        step = _chunk_rows(layout.n_voxels, None)
        for lo in range(start, stop, step):
            check()
            hi = min(lo + step, stop)
            part = _read_rows(path, f, layout, lo, hi, validate)
            energy[lo - start : hi - start] = part.incident_energy
            showers[lo - start : hi - start] = part.showers
            for k in conds:
                conds[k][lo - start : hi - start] = part.conditions[k]
    return ShowerData(energy, showers, conds)


class ShowerFile:
    """A shower file kept open for reading row ranges in any order (streamed training).

    ``incident_energy`` and the conditions are small (8 bytes a shower) and read whole by
    :meth:`columns`; showers are read by :meth:`read` (rows ``start:stop``) or :meth:`take`
    (any rows, grouped by ``block_rows`` so that one HDF5 chunk is decompressed once per call).
    ``chunk_rows`` is the file's own HDF5 chunk height of the showers (``None``: contiguous).

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.h5")
    >>> write_showers(path, np.arange(1.0, 7.0), np.arange(12.0).reshape(6, 2))
    >>> with ShowerFile(path) as f:
    ...     len(f), f.take(np.array([4, 1])).showers.tolist()
    (6, [[8.0, 9.0], [2.0, 3.0]])
    """

    def __init__(self, path: str | Path, geometry: Geometry | str | None = None) -> None:
        self.path = Path(path)
        geo = load_geometry(geometry) if geometry is not None else None
        self._ctx = _open(self.path)
        self._file = self._ctx.__enter__()
        try:
            self.layout = _layout(self.path, self._file, geo)
        except BaseException:
            self.close()
            raise
        ds = self._file["showers" if self.layout.format == "calochallenge" else CALOGAN_LAYERS[0]]
        self.chunk_rows: int | None = int(ds.chunks[0]) if ds.chunks else None

    def __len__(self) -> int:
        return self.layout.n

    @property
    def n_voxels(self) -> int:
        return self.layout.n_voxels

    @property
    def conditions(self) -> tuple[str, ...]:
        return self.layout.conditions

    def columns(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(incident energies (N,) MeV, conditions name → (N,)) of the whole file, validated."""
        f, n = self._file, self.layout.n
        try:
            if self.layout.format == "calochallenge":
                energy = np.asarray(f["incident_energies"][:], dtype=np.float64).reshape(-1)
                conds = {k: np.asarray(f[k][:], dtype=np.float64).reshape(-1) for k in self.layout.conditions}
                name = "incident_energies"
            else:
                energy = np.asarray(f["energy"][:], dtype=np.float64).reshape(-1) * 1000.0
                conds, name = {}, "energy"
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read data, truncated or corrupted ({_h5_reason(exc)})") from None
        _validate_rows(self.path, (name, "showers"), energy, np.zeros((n, 0), np.float32), conds, 0)
        return energy, conds

    def read(self, start: int, stop: int, validate: bool = True) -> ShowerData:
        """Rows ``start:stop``."""
        try:
            return _read_rows(self.path, self._file, self.layout, int(start), int(stop), validate)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read data, truncated or corrupted ({_h5_reason(exc)})") from None

    def take(self, rows: np.ndarray, block_rows: int | None = None, validate: bool = True) -> ShowerData:
        """Rows ``rows`` (any order, repeats allowed), in that order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.layout.n):
            raise DataError(f"{self.path}: row index out of range 0..{self.layout.n - 1}")
        step = int(block_rows or self.chunk_rows or 64)
        order = np.argsort(rows, kind="stable")
        parts = []
        sorted_rows = rows[order]
        blocks = sorted_rows // step
        for b in np.unique(blocks):
            want = sorted_rows[blocks == b]
            part = self.read(want[0], want[-1] + 1, validate)
            parts.append(part.select(want - want[0]))
        if not parts:
            return ShowerData(np.zeros(0), np.zeros((0, self.layout.n_voxels), np.float32),
                              {k: np.zeros(0) for k in self.layout.conditions})
        out = ShowerData.concatenate(parts)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return out.select(back)

    def close(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)

    def __enter__(self) -> "ShowerFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def count_showers(path: str | Path) -> int:
    """Number of showers in a file, without reading them."""
    path = Path(path)
    with _open(path) as f:
        return _layout(path, f, None).n


# ----------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------
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


def _write_error(path: Path, exc: Exception) -> OutputError:
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
    return OutputError(f"{path}: write failed: {reason or _h5_reason(exc)}; nothing was written under this name")


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
        raise _write_error(path, exc) from None
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
            raise _write_error(path, exc) from None
        raise


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
            err = _write_error(self.path, (self._raw and self._raw.error) or exc)
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
            raise _write_error(self.path, self._raw.error or exc) from None
        self._check_written()

    def _check_written(self) -> None:
        if self._raw is not None and self._raw.error is not None:
            raise _write_error(self.path, self._raw.error)

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
                        exc = _write_error(self.path, self._raw.error)
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


# ----------------------------------------------------------------------------------
# Summary (caloforge info)
# ----------------------------------------------------------------------------------
@dataclass
class FileSummary:
    path: str
    format: str
    n_showers: int
    n_voxels: int
    conditions: tuple[str, ...]
    energy_min: float
    energy_max: float
    distinct_energies: list[float] | None  # None when more than ``max_distinct`` values
    mean_response: float  # mean of (sum of voxels) / incident energy
    sparsity: float  # fraction of zero voxels
    geometry: str | None = None
    geometry_match: bool | None = None
    geometry_message: str = ""


def summarize(path: str | Path, geometry: Geometry | str | None = None, max_distinct: int = 50) -> FileSummary:
    """Stream through a file, validate every row and summarise it (bounded memory)."""
    path = Path(path)
    with _open(path) as f:
        layout = _layout(path, f, None)
    geo = load_geometry(geometry) if geometry is not None else None
    n = 0
    e_min, e_max = np.inf, -np.inf
    distinct: set[float] | None = set()
    resp_sum = 0.0
    zeros = 0
    for part in iter_showers(path):
        e = part.incident_energy
        n += len(e)
        if len(e):
            e_min, e_max = min(e_min, e.min()), max(e_max, e.max())
        if distinct is not None:
            distinct.update(np.unique(np.round(e, 6)).tolist())
            if len(distinct) > max_distinct:
                distinct = None
        with np.errstate(over="ignore"):  # a tiny (subnormal) energy gives an infinite response, not a warning
            resp_sum += float((part.showers.sum(axis=1, dtype=np.float64) / e).sum())
        zeros += int(np.count_nonzero(part.showers == 0))
    summary = FileSummary(
        path=str(path),
        format=layout.format,
        n_showers=n,
        n_voxels=layout.n_voxels,
        conditions=layout.conditions,
        energy_min=float(e_min) if n else float("nan"),
        energy_max=float(e_max) if n else float("nan"),
        distinct_energies=sorted(distinct) if distinct is not None else None,
        mean_response=resp_sum / n if n else float("nan"),
        sparsity=zeros / (n * layout.n_voxels) if n else float("nan"),
    )
    if geo is not None:
        summary.geometry = geo.name
        summary.geometry_match = layout.n_voxels == geo.n_voxels
        summary.geometry_message = (
            f"matches geometry {geo.name!r} ({geo.n_voxels} voxels)"
            if summary.geometry_match
            else f"does NOT match geometry {geo.name!r}: file has {layout.n_voxels} voxels, geometry {geo.n_voxels}"
        )
    return summary


def check_showers(data: ShowerData, source: str, n_voxels: int | None = None) -> ShowerData:
    """The one check of in-memory showers (the file readers apply the same rules row by row).

    Energies finite and > 0, shower energies finite and ≥ 0, conditions finite and, when
    ``n_voxels`` is given, the right voxel count; :class:`DataError` naming ``source``.
    """
    if n_voxels is not None and data.n_voxels != n_voxels:
        raise DataError(f"{source}: showers have {data.n_voxels} voxels, expected {n_voxels}")
    _validate_rows(Path(source), ("incident_energies", "showers"), np.asarray(data.incident_energy),
                   np.asarray(data.showers), data.conditions, 0)
    return data
