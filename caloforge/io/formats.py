"""Reading CaloChallenge and CaloGAN HDF5 files: format detection, validation, streaming.

CaloChallenge file: datasets ``incident_energies`` (N, 1) and ``showers`` (N, n_voxels)
in MeV, plus the optional condition datasets of :data:`CONDITION_NAMES`, each (N, 1).

CaloGAN file: ``energy`` (N, 1) in GeV, ``layer_0`` (N, 3, 96), ``layer_1`` (N, 12, 12),
``layer_2`` (N, 12, 6) in MeV, optional ``overflow`` (N, 3); mapped onto the
``calogan`` geometry.

Every reader validates the rows it returns (:func:`~caloforge.io.showers.validate_rows`)
and keeps memory bounded by one chunk of :data:`DEFAULT_CHUNK_BYTES`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from caloforge.errors import DataError
from caloforge.geometry import Geometry, load_geometry
from caloforge.interrupt import check
from caloforge.io.hdf5 import h5_reason, open_hdf5
from caloforge.io.showers import CONDITION_NAMES, ShowerData, validate_rows

__all__ = [
    "CALOGAN_LAYERS",
    "DEFAULT_CHUNK_BYTES",
    "FileLayout",
    "file_layout",
    "detect_format",
    "iter_showers",
    "read_showers",
    "ShowerFile",
    "count_showers",
]

CALOGAN_LAYERS = ("layer_0", "layer_1", "layer_2")
DEFAULT_CHUNK_BYTES = 64 * 2**20  # per streamed chunk of showers


def detect_format(path: str | Path) -> str:
    """``"calochallenge"`` or ``"calogan"``, from the datasets a file holds."""
    path = Path(path)
    with open_hdf5(path) as f:
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
class FileLayout:
    """Where the pieces of one file are and how many rows it has."""

    format: str
    n: int
    n_voxels: int
    conditions: tuple[str, ...]


def file_layout(path: Path, f, geometry: Geometry | None) -> FileLayout:
    """Format, row and voxel counts and conditions of the open file ``f``, checked against
    each other and against ``geometry`` (CaloGAN files: the ``calogan`` geometry by default)."""
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
        layout = FileLayout(fmt, s.shape[0], s.shape[1], tuple(conds))
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
        layout = FileLayout(fmt, n, n_vox, ())
        if geometry is None:
            geometry = load_geometry("calogan")
    if geometry is not None and layout.n_voxels != geometry.n_voxels:
        raise DataError(
            f"{path}: showers have {layout.n_voxels} voxels, but geometry {geometry.name!r} has {geometry.n_voxels}"
        )
    return layout


def _read_rows(path: Path, f, layout: FileLayout, start: int, stop: int, validate: bool) -> ShowerData:
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
        validate_rows(path, names, energy, showers, conditions, start)
    return ShowerData(energy, showers, conditions)


def _chunk_rows(n_voxels: int, chunk_size: int | None) -> int:
    if chunk_size:
        return max(int(chunk_size), 1)
    return max(DEFAULT_CHUNK_BYTES // (8 * max(n_voxels, 1)), 1)


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
    with open_hdf5(path) as f:
        layout = file_layout(path, f, geo)
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
    with open_hdf5(path) as f:
        layout = file_layout(path, f, geo)
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
    >>> from caloforge.io import write_showers
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.h5")
    >>> write_showers(path, np.arange(1.0, 7.0), np.arange(12.0).reshape(6, 2))
    >>> with ShowerFile(path) as f:
    ...     len(f), f.take(np.array([4, 1])).showers.tolist()
    (6, [[8.0, 9.0], [2.0, 3.0]])
    """

    def __init__(self, path: str | Path, geometry: Geometry | str | None = None) -> None:
        self.path = Path(path)
        geo = load_geometry(geometry) if geometry is not None else None
        self._ctx = open_hdf5(self.path)
        self._file = self._ctx.__enter__()
        try:
            self.layout = file_layout(self.path, self._file, geo)
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
            raise DataError(f"{self.path}: cannot read data, truncated or corrupted ({h5_reason(exc)})") from None
        validate_rows(self.path, (name, "showers"), energy, np.zeros((n, 0), np.float32), conds, 0)
        return energy, conds

    def read(self, start: int, stop: int, validate: bool = True) -> ShowerData:
        """Rows ``start:stop``."""
        try:
            return _read_rows(self.path, self._file, self.layout, int(start), int(stop), validate)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read data, truncated or corrupted ({h5_reason(exc)})") from None

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
    with open_hdf5(path) as f:
        return file_layout(path, f, None).n
