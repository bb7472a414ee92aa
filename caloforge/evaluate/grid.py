"""The regular Cartesian grid of a geometry, as the granular observables see it.

Highly granular Si-W geometries (``clic``, ``ild``, their ``-angled`` variants) have readout
layers that are all the same ny × nx grid; this module reads that grid, its cell centres and
each layer's MIP energy from the :class:`~caloforge.geometry.Geometry` alone.

>>> from caloforge.geometry import load_geometry
>>> regular_grid(load_geometry("ds1-photons")) is None
True
"""

from __future__ import annotations

import numpy as np

from caloforge.errors import ConfigError
from caloforge.geometry import Geometry

__all__ = ["regular_grid", "grid_shape", "grid_centres", "mip_per_layer"]


def _readout(geometry: Geometry) -> list:
    return [layer for layer in geometry.layers if layer.n_voxels]


def regular_grid(geometry: Geometry) -> tuple[int, int, int] | None:
    """(Z, Y, X) when every readout layer is the same Cartesian ny × nx grid, else ``None``."""
    layers = _readout(geometry)
    shapes = {(layer.kind, layer.ny, layer.nx) for layer in layers}
    if len(shapes) != 1 or next(iter(shapes))[0] != "cartesian":
        return None
    _, ny, nx = next(iter(shapes))
    return len(layers), ny, nx


def grid_shape(geometry: Geometry, what: str = "evaluate") -> tuple[int, int, int]:
    """:func:`regular_grid`, raising :class:`~caloforge.errors.ConfigError` for other geometries."""
    shape = regular_grid(geometry)
    if shape is None:
        raise ConfigError(f"{what}: geometry {geometry.name!r} is not a regular Cartesian grid "
                          "(every readout layer the same ny × nx grid)")
    return shape


def grid_centres(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell centres [mm] of the grid: ``z`` (Z,) of the layers, ``y`` (Y,), ``x`` (X,), the grid
    centred on the shower axis."""
    layers = _readout(geometry)
    first = layers[0]
    x = (np.arange(first.nx) - 0.5 * (first.nx - 1)) * first.cell_x
    y = (np.arange(first.ny) - 0.5 * (first.ny - 1)) * first.cell_y
    return np.array([layer.z_center for layer in layers], dtype=np.float64), y.astype(np.float64), x.astype(np.float64)


def mip_per_layer(geometry: Geometry) -> np.ndarray:
    """Visible energy [MeV] of a minimum-ionising particle crossing each readout layer at normal
    incidence: sampling fraction × E_c × (thickness / X0) (Rossi: a MIP loses ≈ E_c per X0)."""
    return np.array([layer.sampling_fraction * layer.material.critical_energy * layer.thickness / layer.material.X0
                     for layer in _readout(geometry)])
