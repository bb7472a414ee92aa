"""Stage 1 of the evaluation: one streamed pass over each sample → :class:`SampleSummary`.

Both samples are read chunk by chunk (DS3-sized files fit in bounded memory: only per-shower
features, layer energies and radial profiles are kept, never the voxels), side by side in two
threads (numpy and the HDF5 decompression release the GIL).  Everything later — histograms,
distances, the classifier — works on the two summaries.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from caloforge.errors import DataError
from caloforge.evaluate.features import high_level_tables
from caloforge.evaluate.result import SampleSummary
from caloforge.geometry import Geometry
from caloforge.io import ShowerData, count_showers, iter_showers

__all__ = ["ShowerSource", "VOXEL_SPECTRUM_EDGES", "count", "load_source", "radial_bins", "random_rows",
           "scan_sample", "scan_pair"]

ShowerSource = ShowerData | str | Path

# voxel-energy spectrum: fixed log bins (MeV) so that chunks can be accumulated
VOXEL_SPECTRUM_EDGES = np.logspace(-3, 6, 91)


def count(source: ShowerSource) -> int:
    """Showers in a sample (a file is not read)."""
    return len(source) if isinstance(source, ShowerData) else count_showers(source)


def _chunks(source: ShowerSource, geometry: Geometry, stop: int, chunk_size: int | None) -> Iterator[ShowerData]:
    if isinstance(source, ShowerData):
        geometry.check_voxels(source.n_voxels, "showers")
        step = chunk_size or max(1, (32 << 20) // (8 * geometry.n_voxels))
        for lo in range(0, stop, step):
            yield source.select(slice(lo, min(lo + step, stop)))
    else:
        yield from iter_showers(source, geometry, chunk_size=chunk_size, stop=stop)


def radial_bins(geometry: Geometry, n_cartesian: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Common radial bins of a geometry and the voxel → ring weight matrix.

    Polar voxels share their energy between rings in proportion to overlapping area
    (uniform density inside a voxel); Cartesian cells go to the ring of their
    centre.  Returns ``(edges, M)`` with ``M`` of shape (n_voxels, n_rings), so
    ``showers @ M`` is the energy per ring.
    """
    polar = [layer for layer in geometry.layers if layer.kind == "polar" and layer.n_voxels]
    r = geometry.voxel_centers["r"]
    if polar:
        edges = np.unique(np.concatenate([np.asarray(layer.r_edges, float) for layer in polar]))
        cart_max = max((layer.outer_radius for layer in geometry.layers
                        if layer.kind == "cartesian" and layer.n_voxels), default=0.0)
        if cart_max > edges[-1]:
            edges = np.append(edges, cart_max)
    else:
        edges = np.linspace(0.0, float(r.max()) * (1 + 1e-9) + 1e-9, n_cartesian + 1)
    weights = np.zeros((geometry.n_voxels, len(edges) - 1), dtype=np.float32)
    for layer, sl in zip(geometry.layers, geometry.layer_slices):
        if not layer.n_voxels:
            continue
        if layer.kind == "polar":
            re = np.asarray(layer.r_edges, float)
            lo = np.maximum(re[:-1, None], edges[None, :-1])
            hi = np.minimum(re[1:, None], edges[None, 1:])
            overlap = np.clip(hi**2 - lo**2, 0, None) * np.where(hi > lo, 1.0, 0.0)
            frac = overlap / (re[1:] ** 2 - re[:-1] ** 2)[:, None]  # (n_r, n_rings)
            weights[sl] = np.tile(frac, (layer.n_alpha, 1))
        else:
            idx = np.clip(np.searchsorted(edges, r[sl], side="right") - 1, 0, len(edges) - 2)
            weights[np.arange(sl.start, sl.stop), idx] = 1.0
    return edges, weights


class _Cancelled(Exception):
    """A streamed pass stopped because the other one failed."""


def scan_sample(
    source: ShowerSource,
    geometry: Geometry,
    *,
    max_showers: int | None = None,
    chunk_size: int | None = None,
    keep_rows: np.ndarray | None = None,
    hl_matrix: bool | str = True,
    advance: Callable[[float], None] = lambda n=1: None,
    cancel: "threading.Event | None" = None,
    cut: float = 0.0,
) -> SampleSummary:
    """One streamed pass over a sample: features and accumulators, chunk by chunk.

    ``keep_rows`` (sorted row indices) are kept with their voxels for the classifier.
    ``cut`` [MeV]: voxels below it are set to 0 first (the CaloChallenge protocol);
    ``hl_matrix="calochallenge"`` keeps its 30-column high-level set.
    Memory: one chunk of voxels plus O(N × n_features) floats.
    """
    n_total = count(source)
    stop = n_total if max_showers is None else min(n_total, int(max_showers))
    if stop == 0:
        raise DataError(f"{source if not isinstance(source, ShowerData) else 'sample'}: no showers to evaluate")
    edges_r, ring_w = radial_bins(geometry)
    feats: dict[str, list[np.ndarray]] = {}
    energies, layer_e, radial, hl, kept = [], [], [], [], []
    voxel_sum = np.zeros(geometry.n_voxels, np.float64)
    spectrum = np.zeros(len(VOXEL_SPECTRUM_EDGES) + 1, np.float64)
    n_zero = 0
    offset = 0
    for chunk in _chunks(source, geometry, stop, chunk_size):
        if cancel is not None and cancel.is_set():  # the other sample failed or Ctrl-C: stop early
            raise _Cancelled()
        s = np.asarray(chunk.showers, dtype=np.float32)
        if cut > 0:
            s = np.where(s < cut, np.float32(0.0), s)
        e = chunk.incident_energy.astype(np.float64)
        # features, high-level matrix and layer energies share one pass over the voxels
        table, matrix, layer_energy = high_level_tables(s, e, geometry, matrix=hl_matrix)
        for name, col in table.items():
            feats.setdefault(name, []).append(col.astype(np.float32))
        if matrix is not None:
            hl.append(matrix.astype(np.float32))
        energies.append(e)
        layer_e.append(layer_energy.astype(np.float32))
        radial.append(s @ ring_w)
        voxel_sum += s.sum(axis=0, dtype=np.float64)
        nz = s[s > 0]
        n_zero += s.size - nz.size
        idx = np.searchsorted(VOXEL_SPECTRUM_EDGES, nz, side="right")
        spectrum += np.bincount(idx, minlength=len(spectrum))[: len(spectrum)]
        if keep_rows is not None:
            lo, hi = np.searchsorted(keep_rows, [offset, offset + len(e)])
            if hi > lo:
                rows = keep_rows[lo:hi] - offset
                kept.append(ShowerData(chunk.incident_energy[rows], s[rows]))  # after the cut
        offset += len(e)
        advance(len(e))
    columns = {k: np.concatenate(v) for k, v in feats.items()}
    return SampleSummary(
        n=offset,
        incident_energy=np.concatenate(energies),
        features=columns,
        hl_matrix=np.concatenate(hl) if hl else None,
        layer_energy=np.concatenate(layer_e),
        radial=np.concatenate(radial),
        voxel_sum=voxel_sum,
        voxel_spectrum=spectrum,
        n_zero_voxels=n_zero,
        classifier_sample=ShowerData.concatenate(kept) if kept else None,
    )


def load_source(source: ShowerSource, what: str, geometry: Geometry) -> ShowerSource:
    """Check a sample against the geometry up front, before any long step starts."""
    if isinstance(source, ShowerData):
        geometry.check_voxels(source.n_voxels, what)
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        for _ in iter_showers(path, geometry, chunk_size=1, stop=1):  # format, datasets, voxel count
            pass
        return path
    raise DataError(f"{what}: expected a ShowerData or a path to a shower file, got {type(source).__name__}")


def random_rows(n: int, k: int, seed: int) -> np.ndarray | None:
    """``k`` sorted random row indices of ``n`` (``None`` for ``k ≤ 0``): the classifier's subsample."""
    if k <= 0:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, k), replace=False))


def scan_pair(reference: ShowerSource, generated: ShowerSource, geometry: Geometry, *,
              scan: Callable[[int, ShowerSource, threading.Event], SampleSummary]) -> tuple[SampleSummary, SampleSummary]:
    """``scan(i, source, cancel)`` of both samples side by side; neither result depends on the
    other.  A failure in one pass (a bad file) or Ctrl-C stops the other at its next chunk."""
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(scan, 0, reference, cancel), pool.submit(scan, 1, generated, cancel)]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C: stop both passes at their next chunk
            cancel.set()
            raise
        errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
        if errors:  # a bad file: stop the other pass now rather than after its whole file
            cancel.set()
            raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])
        return futures[0].result(), futures[1].result()
