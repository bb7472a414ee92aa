"""One pass over a shower file for ``caloforge info``: counts, energy range, response, sparsity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caloforge.geometry import Geometry, load_geometry
from caloforge.io.formats import file_layout, iter_showers
from caloforge.io.hdf5 import open_hdf5

__all__ = ["FileSummary", "summarize"]


@dataclass
class FileSummary:
    """What :func:`summarize` reports about one file."""

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
    with open_hdf5(path) as f:
        layout = file_layout(path, f, None)
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
