"""The data model of a calorimeter: materials, slabs, layers and their voxel layout.

A :class:`Geometry` is an ordered list of :class:`Layer` objects along the shower
axis ``z``.  Each layer is read out either in cylindrical r–α bins around the
particle direction (the CaloChallenge layout) or as a Cartesian ``ny × nx`` grid of
cells centred on the axis (CaloGAN, ATLAS-like, CLIC, ILD).  Flat shower vectors of
length :attr:`Geometry.n_voxels` concatenate the layers in order.

Voxel order inside a layer
--------------------------
* polar layers: α bins outer, r bins inner: ``index = i_alpha * n_r + i_r``
  (CaloChallenge convention); α bin edges are ``linspace(-π, π, n_alpha + 1)``.
* Cartesian layers: row-major ``(ny, nx)``: ``index = i_y * nx + i_x``.

Layers with no readout bins (the empty layers of the CaloChallenge XML files) are
kept, with zero voxels, because their material still absorbs energy.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal, Sequence

import numpy as np

from caloforge.errors import GeometryError

__all__ = ["Material", "Slab", "Sampling", "Layer", "Geometry", "G4_MATERIAL", "READOUT_FRAMES", "with_layers"]


@dataclass(frozen=True)
class Material:
    """Effective (homogenised) properties of one layer's absorber + active medium.

    Lengths in mm, energies in MeV.  ``Z`` is the effective atomic number that enters
    the GFlash parametrisation.
    """

    name: str
    Z: float
    X0: float  # radiation length [mm]
    lambda_I: float  # nuclear interaction length [mm]
    moliere_radius: float  # [mm]
    critical_energy: float  # [MeV]


# A Geant4 NIST material name, as slabs declare them
G4_MATERIAL = re.compile(r"^G4_[A-Za-z0-9_-]+$")
READOUT_FRAMES = ("detector", "particle")


@dataclass(frozen=True)
class Slab:
    """One flat slab of a sampling structure: a Geant4 NIST material and its thickness.

    ``active`` slabs are read out (the sensitive medium); the others are absorber,
    support or gaps.  Lengths in mm.
    """

    material: str  # Geant4 NIST name, e.g. "G4_W", "G4_Si", "G4_Pb", "G4_lAr", "G4_Galactic"
    thickness: float
    active: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.material, str) or not G4_MATERIAL.match(self.material):
            raise GeometryError(f"slab material must be a Geant4 NIST name like G4_W, not {self.material!r}")
        if (isinstance(self.thickness, bool) or not isinstance(self.thickness, numbers.Real)
                or not math.isfinite(self.thickness) or self.thickness <= 0):
            raise GeometryError(f"slab {self.material}: thickness must be a positive number of mm, "
                                f"got {self.thickness!r}")
        if not isinstance(self.active, bool):
            raise GeometryError(f"slab {self.material}: active must be true or false, got {self.active!r}")
        object.__setattr__(self, "thickness", float(self.thickness))


@dataclass(frozen=True)
class Sampling:
    """The physical structure of a readout layer: one sampling cell (front to back) × ``repeats``.

    Used by the Geant4 engine; the effective :class:`Material` of the layer stays what
    the parametrised engines use.
    """

    slabs: tuple[Slab, ...]
    repeats: int = 1

    def __post_init__(self) -> None:
        slabs = tuple(self.slabs) if isinstance(self.slabs, (list, tuple)) else None
        if not slabs or not all(isinstance(s, Slab) for s in slabs):
            raise GeometryError("a sampling structure needs a non-empty list of slabs")
        object.__setattr__(self, "slabs", slabs)
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, numbers.Integral) or self.repeats < 1:
            raise GeometryError(f"sampling repeats must be an integer >= 1, got {self.repeats!r}")
        object.__setattr__(self, "repeats", int(self.repeats))
        if not any(s.active for s in slabs):
            raise GeometryError("a sampling structure needs at least one active slab")

    @property
    def cell_thickness(self) -> float:
        """Thickness of one cell [mm]."""
        return math.fsum(s.thickness for s in self.slabs)

    @property
    def thickness(self) -> float:
        """Total thickness, ``repeats`` cells [mm]."""
        return self.repeats * self.cell_thickness

    def describe(self) -> str:
        """Short text, e.g. ``2 × (1.4 G4_W + 0.3 G4_Si*)`` (``*`` marks active slabs)."""
        cell = " + ".join(f"{s.thickness:g} {s.material}{'*' if s.active else ''}" for s in self.slabs)
        return f"{self.repeats} × ({cell})" if self.repeats > 1 else cell

    def to_dict(self) -> dict:
        return {"repeats": self.repeats,
                "slabs": [{"material": s.material, "thickness": s.thickness, "active": s.active} for s in self.slabs]}


@dataclass(frozen=True)
class Layer:
    """One readout layer.

    Attributes
    ----------
    id:
        layer id (the XML ``id`` for CaloChallenge layouts).
    kind:
        ``"polar"`` (r–α bins around the shower axis) or ``"cartesian"``.
    z_front, thickness:
        depth of the layer's front face along the shower axis and its thickness [mm].
    material:
        effective material the layer is made of.
    sampling_fraction:
        fraction of the deposited energy that is seen in the active medium
        (1.0 for a homogeneous or calibrated layer).
    sampling_term:
        stochastic term of the sampling fluctuations [√GeV] (σ/E = a/√E), 0 if none.
    r_edges, n_alpha:
        polar layers: radial bin edges [mm] and number of α bins.
    nx, ny, cell_x, cell_y:
        Cartesian layers: grid size and cell pitch [mm]; the grid is centred on the axis.
    sampling:
        the physical slabs the layer is made of (for the Geant4 engine), or None;
        their total thickness equals ``thickness``.
    """

    id: int
    kind: Literal["polar", "cartesian"]
    z_front: float
    thickness: float
    material: Material
    sampling_fraction: float = 1.0
    sampling_term: float = 0.0
    name: str = ""
    r_edges: tuple[float, ...] = ()
    n_alpha: int = 1
    nx: int = 0
    ny: int = 0
    cell_x: float = 0.0
    cell_y: float = 0.0
    sampling: Sampling | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("polar", "cartesian"):
            raise GeometryError(f"layer {self.id}: kind must be 'polar' or 'cartesian', not {self.kind!r}")
        if self.thickness < 0 or not math.isfinite(self.thickness):
            raise GeometryError(f"layer {self.id}: thickness must be a finite non-negative number")
        if not 0.0 < self.sampling_fraction <= 1.0:
            raise GeometryError(f"layer {self.id}: sampling_fraction must be in (0, 1], got {self.sampling_fraction}")
        if self.kind == "polar":
            if self.n_alpha < 1:
                raise GeometryError(f"layer {self.id}: n_alpha must be >= 1")
            edges = np.asarray(self.r_edges, dtype=float)
            if len(edges) > 1 and (edges[0] < 0 or np.any(np.diff(edges) <= 0)):
                raise GeometryError(f"layer {self.id}: r_edges must start at >= 0 and increase strictly")
        else:
            if self.nx < 1 or self.ny < 1 or self.cell_x <= 0 or self.cell_y <= 0:
                raise GeometryError(f"layer {self.id}: Cartesian layers need nx, ny >= 1 and positive cell sizes")
        if self.sampling is not None:
            if not isinstance(self.sampling, Sampling):
                raise GeometryError(f"{self.label}: sampling must be a Sampling, not {type(self.sampling).__name__}")
            if abs(self.sampling.thickness - self.thickness) > 1e-6:
                raise GeometryError(
                    f"{self.label}: the sampling structure is {self.sampling.thickness:.6g} mm thick "
                    f"({self.sampling.describe()}), but the layer is {self.thickness:.6g} mm"
                )

    @property
    def label(self) -> str:
        """``layer 3 (EMB2)``: how messages name the layer."""
        return f"layer {self.id} ({self.name})" if self.name else f"layer {self.id}"

    @property
    def n_r(self) -> int:
        """Number of radial bins (polar layers)."""
        return max(len(self.r_edges) - 1, 0)

    @property
    def shape(self) -> tuple[int, int]:
        """Per-layer image shape: ``(n_alpha, n_r)`` for polar, ``(ny, nx)`` for Cartesian."""
        if self.kind == "polar":
            return (self.n_alpha if self.n_r else 0, self.n_r)
        return (self.ny, self.nx)

    @property
    def n_voxels(self) -> int:
        rows, cols = self.shape
        return rows * cols

    @property
    def z_center(self) -> float:
        return self.z_front + 0.5 * self.thickness

    @property
    def alpha_edges(self) -> np.ndarray:
        """α bin edges (polar layers), CaloChallenge convention."""
        return np.linspace(-math.pi, math.pi, self.n_alpha + 1)

    def voxel_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the voxel centres [mm], flat in this layer's voxel order."""
        rows, cols = self.shape
        if self.kind == "polar":
            r_edges = np.asarray(self.r_edges, dtype=float)
            r_mid = 0.5 * (r_edges[:-1] + r_edges[1:])
            a_edges = self.alpha_edges
            a_mid = 0.5 * (a_edges[:-1] + a_edges[1:])
            alpha, r = np.meshgrid(a_mid, r_mid, indexing="ij")  # α outer, r inner
            return (r * np.cos(alpha)).ravel(), (r * np.sin(alpha)).ravel()
        x = (np.arange(self.nx) - 0.5 * (self.nx - 1)) * self.cell_x
        y = (np.arange(self.ny) - 0.5 * (self.ny - 1)) * self.cell_y
        yy, xx = np.meshgrid(y, x, indexing="ij")
        return xx.ravel(), yy.ravel()

    def locate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Voxel index within this layer for points (x, y) [mm]; -1 outside the readout."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if self.n_voxels == 0:
            return np.full(x.shape, -1, dtype=np.int64)
        if self.kind == "polar":
            r = np.hypot(x, y)
            i_r = np.searchsorted(np.asarray(self.r_edges), r, side="right") - 1
            alpha = np.arctan2(y, x)
            i_a = np.floor((alpha + math.pi) / (2 * math.pi) * self.n_alpha).astype(np.int64)
            i_a = np.clip(i_a, 0, self.n_alpha - 1)
            inside = (i_r >= 0) & (i_r < self.n_r)
            return np.where(inside, i_a * self.n_r + i_r, -1)
        i_x = np.floor(x / self.cell_x + 0.5 * self.nx).astype(np.int64)
        i_y = np.floor(y / self.cell_y + 0.5 * self.ny).astype(np.int64)
        inside = (i_x >= 0) & (i_x < self.nx) & (i_y >= 0) & (i_y < self.ny)
        return np.where(inside, i_y * self.nx + i_x, -1)

    def voxel_areas(self) -> np.ndarray:
        """Transverse area of every voxel [mm²], flat in voxel order."""
        if self.kind == "polar":
            r_edges = np.asarray(self.r_edges, dtype=float)
            ring = math.pi * np.diff(r_edges**2) / self.n_alpha
            return np.tile(ring, self.n_alpha) if self.n_r else np.zeros(0)
        return np.full(self.n_voxels, self.cell_x * self.cell_y)

    @property
    def outer_radius(self) -> float:
        """Largest transverse distance the readout reaches [mm]."""
        if self.kind == "polar":
            return float(self.r_edges[-1]) if self.n_r else 0.0
        return 0.5 * math.hypot(self.nx * self.cell_x, self.ny * self.cell_y)


@dataclass(frozen=True)
class Geometry:
    """A calorimeter: readout layers in depth order, plus dead material in front.

    ``upstream_X0`` is material (in radiation lengths) that the particle crosses
    before the first layer and whose deposits are not read out.

    For the Geant4 engine: ``upstream`` is the same dead material as physical slabs,
    placed back to back directly in front of the first layer; ``half_width`` is the
    transverse half size of every slab [mm]; ``readout_frame`` says whether the cells
    are fixed in the detector (``"detector"``) or follow the particle's entry point and
    direction (``"particle"``, the CaloChallenge convention).
    """

    name: str
    layers: tuple[Layer, ...]
    upstream_X0: float = 0.0
    description: str = ""
    particle: str = ""  # the particle the binning was made for, if any (CaloChallenge XML)
    source: str = field(default="", compare=False)
    upstream: tuple[Slab, ...] = ()
    half_width: float = 1000.0
    readout_frame: Literal["detector", "particle"] = "detector"

    def __post_init__(self) -> None:
        if isinstance(self.upstream, list):
            object.__setattr__(self, "upstream", tuple(self.upstream))
        if not isinstance(self.upstream, tuple) or not all(isinstance(s, Slab) for s in self.upstream):
            raise GeometryError(f"geometry {self.name!r}: upstream must be a list of slabs")
        if (isinstance(self.half_width, bool) or not isinstance(self.half_width, numbers.Real)
                or not math.isfinite(self.half_width) or self.half_width <= 0):
            raise GeometryError(f"geometry {self.name!r}: half_width must be a positive number of mm, "
                                f"got {self.half_width!r}")
        object.__setattr__(self, "half_width", float(self.half_width))
        if self.readout_frame not in READOUT_FRAMES:
            raise GeometryError(f"geometry {self.name!r}: readout_frame must be 'detector' or 'particle', "
                                f"not {self.readout_frame!r}")
        if not self.layers:
            raise GeometryError(f"geometry {self.name!r} has no layers")
        if self.n_voxels == 0:
            raise GeometryError(f"geometry {self.name!r} has no readout voxels")
        ids = [layer.id for layer in self.layers]
        if len(set(ids)) != len(ids):
            raise GeometryError(f"geometry {self.name!r}: duplicate layer ids")
        for a, b in zip(self.layers, self.layers[1:]):
            if b.z_front < a.z_front + a.thickness - 1e-6:
                raise GeometryError(f"geometry {self.name!r}: layer {b.id} overlaps layer {a.id} in depth")

    # ----- sizes and slices -------------------------------------------------------
    @cached_property
    def n_voxels(self) -> int:
        return sum(layer.n_voxels for layer in self.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @cached_property
    def active_layers(self) -> tuple[int, ...]:
        """Positions (in :attr:`layers`) of layers that have readout voxels."""
        return tuple(i for i, layer in enumerate(self.layers) if layer.n_voxels)

    @cached_property
    def layer_slices(self) -> tuple[slice, ...]:
        """Slice of the flat voxel vector belonging to each layer (empty for empty layers)."""
        out, start = [], 0
        for layer in self.layers:
            out.append(slice(start, start + layer.n_voxels))
            start += layer.n_voxels
        return tuple(out)

    @cached_property
    def voxel_layer(self) -> np.ndarray:
        """Position in :attr:`layers` of every voxel, shape (n_voxels,)."""
        return np.repeat(np.arange(self.n_layers), [layer.n_voxels for layer in self.layers])

    @property
    def depth(self) -> float:
        """Total depth from the first layer's front to the last layer's back [mm]."""
        last = self.layers[-1]
        return last.z_front + last.thickness - self.layers[0].z_front

    # ----- voxel positions ----------------------------------------------------------
    @cached_property
    def voxel_centers(self) -> dict[str, np.ndarray]:
        """Centre of every voxel: arrays ``x, y, z, r, alpha`` of shape (n_voxels,), mm / rad.

        For polar layers ``x = r cos α`` and ``y = r sin α`` (CaloChallenge's η- and
        φ-like directions).
        """
        xs, ys, zs = [], [], []
        for layer in self.layers:
            x, y = layer.voxel_centers()
            xs.append(x)
            ys.append(y)
            zs.append(np.full(layer.n_voxels, layer.z_center))
        x, y, z = (np.concatenate(v) for v in (xs, ys, zs))
        return {"x": x, "y": y, "z": z, "r": np.hypot(x, y), "alpha": np.arctan2(y, x)}

    @cached_property
    def voxel_areas(self) -> np.ndarray:
        """Transverse area of every voxel [mm²], shape (n_voxels,)."""
        return np.concatenate([layer.voxel_areas() for layer in self.layers])

    # ----- reshaping ------------------------------------------------------------------
    def split(self, showers: np.ndarray) -> list[np.ndarray]:
        """Flat (..., n_voxels) → one array per layer of shape (..., *layer.shape)."""
        showers = np.asarray(showers)
        self.check_voxels(showers.shape[-1])
        lead = showers.shape[:-1]
        return [showers[..., s].reshape(*lead, *layer.shape) for s, layer in zip(self.layer_slices, self.layers)]

    def join(self, per_layer: Sequence[np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`split`: per-layer arrays → flat (..., n_voxels).

        Accepts either one array per layer, or one per *active* layer.
        """
        layers = [self.layers[i] for i in self.active_layers] if len(per_layer) != self.n_layers else self.layers
        if len(per_layer) != len(layers):
            raise GeometryError(
                f"geometry {self.name!r}: expected {self.n_layers} or {len(self.active_layers)} layer arrays, "
                f"got {len(per_layer)}"
            )
        flat = []
        for arr, layer in zip(per_layer, layers):
            arr = np.asarray(arr)
            if tuple(arr.shape[arr.ndim - 2 :]) != layer.shape:
                raise GeometryError(f"layer {layer.id}: expected shape (..., {layer.shape}), got {arr.shape}")
            flat.append(arr.reshape(*arr.shape[:-2], layer.n_voxels))
        return np.concatenate(flat, axis=-1)

    def layer_energy(self, showers: np.ndarray) -> np.ndarray:
        """Energy per layer, (..., n_voxels) → (..., n_layers)."""
        showers = np.asarray(showers)
        self.check_voxels(showers.shape[-1])
        return np.stack([showers[..., s].sum(axis=-1) for s in self.layer_slices], axis=-1)

    def check_voxels(self, n: int, where: str = "") -> None:
        if n != self.n_voxels:
            prefix = f"{where}: " if where else ""
            raise GeometryError(f"{prefix}{n} voxels per shower, but geometry {self.name!r} has {self.n_voxels}")

    def require_sampling(self) -> None:
        """GeometryError unless every layer with material has a :class:`Sampling` structure.

        Zero-thickness placeholder layers need none.
        """
        for layer in self.layers:
            if layer.thickness > 0 and layer.sampling is None:
                raise GeometryError(
                    f"geometry {self.name!r}: {layer.label} has no sampling structure: declare `sampling:` "
                    f"(absorber and active slabs) to simulate it with Geant4"
                )

    # ----- description --------------------------------------------------------------
    def describe(self) -> list[dict]:
        """One row per layer: what ``caloforge geometry`` prints."""
        rows = []
        for layer in self.layers:
            if layer.kind == "polar":
                binning = f"{layer.n_alpha}α × {layer.n_r}r" if layer.n_r else "no readout"
                extent = f"r ≤ {layer.outer_radius:g} mm" if layer.n_r else "-"
            else:
                binning = f"{layer.ny} × {layer.nx}"
                extent = f"{layer.cell_x:g}×{layer.cell_y:g} mm"
            rows.append(
                {
                    "id": layer.id,
                    "name": layer.name,
                    "binning": binning,
                    "extent": extent,
                    "voxels": layer.n_voxels,
                    "z_front": layer.z_front,
                    "thickness": layer.thickness,
                    "X0": layer.thickness / layer.material.X0,
                    "lambda_I": layer.thickness / layer.material.lambda_I,
                    "material": layer.material.name,
                    "sampling_fraction": layer.sampling_fraction,
                    "sampling": layer.sampling.describe() if layer.sampling is not None else "",
                }
            )
        return rows

    def to_dict(self) -> dict:
        """Plain-data form (YAML/JSON-serialisable); :func:`geometry_from_dict` reads it back."""
        materials = {layer.material.name: layer.material for layer in self.layers}
        out_layers = []
        for layer in self.layers:
            d: dict = {
                "id": layer.id,
                "name": layer.name,
                "kind": layer.kind,
                "z_front": layer.z_front,
                "thickness": layer.thickness,
                "material": layer.material.name,
                "sampling_fraction": layer.sampling_fraction,
                "sampling_term": layer.sampling_term,
            }
            if layer.kind == "polar":
                d.update(r_edges=list(layer.r_edges), n_alpha=layer.n_alpha)
            else:
                d.update(nx=layer.nx, ny=layer.ny, cell_x=layer.cell_x, cell_y=layer.cell_y)
            if layer.sampling is not None:
                d["sampling"] = layer.sampling.to_dict()
            out_layers.append(d)
        return {
            "name": self.name,
            "description": self.description,
            "particle": self.particle,
            "upstream_X0": self.upstream_X0,
            "materials": {
                k: {f: getattr(m, f) for f in ("Z", "X0", "lambda_I", "moliere_radius", "critical_energy")}
                for k, m in materials.items()
            },
            "layers": out_layers,
            "upstream": [{"material": s.material, "thickness": s.thickness, "active": s.active}
                         for s in self.upstream],
            "half_width": self.half_width,
            "readout_frame": self.readout_frame,
        }


def with_layers(geometry: Geometry, **changes) -> Geometry:
    """Copy of ``geometry`` with every layer's fields changed (e.g. ``sampling_fraction=1``)."""
    return replace(geometry, layers=tuple(replace(layer, **changes) for layer in geometry.layers))
