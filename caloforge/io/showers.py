"""Showers in memory: :class:`ShowerData` and the checks every shower passes.

Array layout (what every caloforge function takes and returns)
--------------------------------------------------------------
``ShowerData.incident_energy``  (N,)            float, MeV, > 0
``ShowerData.showers``          (N, n_voxels)   float, MeV, ≥ 0, voxel order of the geometry
``ShowerData.conditions``       name → (N,)     optional: ``incident_theta``, ``incident_phi``
                                                [rad], ``impact_x``, ``impact_y`` [mm]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caloforge.errors import DataError

__all__ = ["CONDITION_NAMES", "ShowerData", "validate_rows", "check_showers"]

CONDITION_NAMES = ("incident_theta", "incident_phi", "impact_x", "impact_y", "impact_eta")


@dataclass
class ShowerData:
    """Showers with their conditions; see :mod:`caloforge.io.showers` for the layout."""

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


def validate_rows(path: Path, names, energy, showers, conditions, offset: int) -> None:
    """DataError naming ``path``, the dataset (``names``: energy, showers) and the row
    (counted from ``offset``) of the first non-finite or out-of-range value."""
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


def check_showers(data: ShowerData, source: str, n_voxels: int | None = None) -> ShowerData:
    """The one check of in-memory showers (the file readers apply the same rules row by row).

    Energies finite and > 0, shower energies finite and ≥ 0, conditions finite and, when
    ``n_voxels`` is given, the right voxel count; :class:`DataError` naming ``source``.
    """
    if n_voxels is not None and data.n_voxels != n_voxels:
        raise DataError(f"{source}: showers have {data.n_voxels} voxels, expected {n_voxels}")
    validate_rows(Path(source), ("incident_energies", "showers"), np.asarray(data.incident_energy),
                  np.asarray(data.showers), data.conditions, 0)
    return data
