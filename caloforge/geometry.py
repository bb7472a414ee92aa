"""Voxel layouts of calorimeters and the material stacks behind them.

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

Example
-------
>>> from caloforge.geometry import load_geometry
>>> g = load_geometry("ds1-photons")
>>> g.n_voxels
368
>>> [layer.n_voxels for layer in g.layers if layer.n_voxels]
[8, 160, 190, 5, 5]
"""

from __future__ import annotations

import math
import numbers
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from caloforge.errors import GeometryError

__all__ = [
    "Material",
    "Slab",
    "Sampling",
    "Layer",
    "Geometry",
    "MATERIALS",
    "PRESETS",
    "load_geometry",
    "geometry_from_xml",
    "geometry_from_yaml",
]


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


# Effective mixtures.  Pure-element values from the PDG tables; mixtures are
# thickness-weighted harmonic means of X0 / λ_I (what a shower actually sees).
MATERIALS: dict[str, Material] = {
    m.name: m
    for m in [
        # ATLAS barrel EM accordion (Pb/steel absorber, LAr gaps), ~22 X0 in 470 mm
        Material("atlas-lar-pb", Z=62.0, X0=19.5, lambda_I=280.0, moliere_radius=40.0, critical_energy=9.5),
        # ATLAS presampler: LAr behind ~2 X0 of cryostat/solenoid
        Material("atlas-presampler", Z=26.0, X0=45.0, lambda_I=400.0, moliere_radius=45.0, critical_energy=20.0),
        # ATLAS Tile: steel / scintillator 4.7:1
        Material("atlas-tile-fe-scint", Z=25.0, X0=21.0, lambda_I=207.0, moliere_radius=20.0, critical_energy=22.0),
        # CaloChallenge DS2/DS3 readout layer: 2 × (1.4 mm W + 0.3 mm Si)
        Material("w-si-calochallenge", Z=72.0, X0=4.22, lambda_I=121.0, moliere_radius=11.3, critical_energy=8.6),
        # CaloGAN: Pb 2 mm / LAr 4 mm
        Material("calogan-pb-lar", Z=68.0, X0=15.6, lambda_I=470.0, moliere_radius=40.0, critical_energy=9.6),
        # CLIC ECAL-like Si-W (W 3.5 mm + Si/PCB per layer)
        Material("clic-w-si", Z=70.0, X0=5.0, lambda_I=142.0, moliere_radius=13.5, critical_energy=8.6),
        # ILD ECAL Si-W (2.1 mm W + 1.8 mm Si/PCB/air); the back part has 4.2 mm W
        Material("ild-w-si-front", Z=70.0, X0=6.3, lambda_I=180.0, moliere_radius=17.0, critical_energy=8.6),
        Material("ild-w-si-back", Z=72.0, X0=4.9, lambda_I=140.0, moliere_radius=13.0, critical_energy=8.3),
    ]
}


_G4_MATERIAL = re.compile(r"^G4_[A-Za-z0-9_-]+$")
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
        if not isinstance(self.material, str) or not _G4_MATERIAL.match(self.material):
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


# ----------------------------------------------------------------------------------
# CaloChallenge XML
# ----------------------------------------------------------------------------------
def _read_xml_layers(path: Path) -> tuple[str, list[tuple[int, tuple[float, ...], int]]]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise GeometryError(f"{path}: not a valid binning XML file ({exc})") from None
    except OSError as exc:
        raise GeometryError(f"{path}: cannot read ({exc.strerror})") from None
    bins = root.findall("Bin")
    if not bins:
        raise GeometryError(f"{path}: no <Bin> element (is this a CaloChallenge binning file?)")
    particle = bins[0].attrib.get("name", "")
    layers = []
    for el in bins[0].findall("Layer"):
        try:
            lid = int(el.attrib["id"])
            r_edges = tuple(float(s) for s in el.attrib["r_edges"].split(","))
            n_alpha = int(el.attrib.get("n_bin_alpha", "1"))
        except (KeyError, ValueError) as exc:
            raise GeometryError(f"{path}: malformed <Layer> element ({exc})") from None
        layers.append((lid, r_edges, n_alpha))
    layers.sort(key=lambda t: t[0])  # CaloChallenge orders voxels by layer id
    return particle, layers


def geometry_from_xml(
    path: str | Path,
    name: str | None = None,
    stack: Sequence[dict] | None = None,
    upstream_X0: float = 0.0,
    description: str = "",
) -> Geometry:
    """Build a polar geometry from a CaloChallenge binning XML file.

    ``stack`` gives per-layer depth/material (dicts with ``z_front``, ``thickness``,
    ``material``, ``sampling_fraction``, ``sampling_term``, ``name``), in layer-id
    order.  Without it every layer gets 1 X0 of the W–Si mixture, so a user's XML
    works out of the box.
    """
    path = Path(path)
    particle, xml_layers = _read_xml_layers(path)
    if stack is not None and len(stack) != len(xml_layers):
        raise GeometryError(f"{path}: {len(xml_layers)} layers in the XML but {len(stack)} in the material stack")
    layers = []
    z = 0.0
    default = MATERIALS["w-si-calochallenge"]
    for i, (lid, r_edges, n_alpha) in enumerate(xml_layers):
        spec = dict(stack[i]) if stack is not None else {}
        material = spec.pop("material", default)
        if isinstance(material, str):
            material = MATERIALS[material]
        thickness = spec.pop("thickness", material.X0)
        z_front = spec.pop("z_front", z)
        layers.append(
            Layer(
                id=lid,
                kind="polar",
                z_front=z_front,
                thickness=thickness,
                material=material,
                r_edges=r_edges if len(r_edges) > 1 else (),
                n_alpha=n_alpha,
                **spec,
            )
        )
        z = z_front + thickness
    return Geometry(
        name=name or path.stem,
        layers=tuple(layers),
        upstream_X0=upstream_X0,
        description=description,
        particle=particle,
        source=str(path),
    )


def _binning_file(fname: str) -> Path:
    return Path(str(resources.files("caloforge") / "data" / "binning" / fname))


# ----------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------
# Physical sampling structures (for the Geant4 engine).  Each readout layer keeps the
# thickness of its effective-material description above; the slabs below fill it.
# Materials are Geant4 NIST names; "*" in Sampling.describe() marks the active slabs.


def _fill(thickness: float, cell: Sequence[Slab]) -> Sampling:
    """The nominal ``cell`` repeated to fill ``thickness`` exactly.

    The number of cells is the nearest integer to thickness / cell; every slab is then
    scaled by the same factor (within a few per cent of 1), so the material ratios,
    hence the X0 per mm and the sampling fraction, stay those of the nominal cell.
    """
    nominal = math.fsum(s.thickness for s in cell)
    n = max(1, round(thickness / nominal))
    scale = thickness / (n * nominal)
    return Sampling(slabs=tuple(replace(s, thickness=s.thickness * scale) for s in cell), repeats=n)


# --- ATLAS barrel at |η| < 0.8, flattened ------------------------------------------
# The real EM barrel is an accordion: lead absorbers folded in zig-zags so that the
# sampling is uniform in φ, with the particle crossing absorbers and gaps obliquely;
# the path length inside each sampling layer differs from its radial depth.  Here every
# layer is a stack of flat slabs at normal incidence, which has the accordion's volume
# fractions, hence the same X0 per mm on average, but not its local zig-zag structure.
# Facts (ATLAS LAr TDR, CERN/LHCC 96-41; ATLAS detector paper, JINST 3 S08003):
#   absorber at |η| < 0.8: 1.53 mm Pb clad with 0.2 mm stainless steel on each side
#   (G4_Fe stands in for the steel: the NIST name G4_STAINLESS-STEEL is not a plain name;
#   the 0.15 mm of glue is left out); the 4.5 mm between absorbers is two 2.1 mm LAr drift
#   gaps on either side of the Cu/kapton readout electrode (~0.3 mm, here all G4_KAPTON).
#   Cell 6.43 mm → 0.3265 X0, i.e. X0_eff ≈ 19.7 mm (the effective atlas-lar-pb uses 19.5):
#   strips 84 mm ≈ 4.3 X0, middle 312 mm ≈ 15.8 X0, back 39 mm ≈ 2.0 X0, as ATLAS quotes.
_ATLAS_EM_CELL = (
    Slab("G4_Fe", 0.2), Slab("G4_Pb", 1.53), Slab("G4_Fe", 0.2),
    Slab("G4_lAr", 2.1, active=True), Slab("G4_KAPTON", 0.3), Slab("G4_lAr", 2.1, active=True),
)
# Presampler: an 11 mm LAr layer read out by electrodes (parallel to the particle in the
# real detector); modelled as 1 mm of passive electrode/support (G4_KAPTON for the FR4)
# in front of 10 mm of active LAr.  The cryostat and solenoid in front are `upstream`.
_ATLAS_PRESAMPLER_CELL = (Slab("G4_KAPTON", 1.0), Slab("G4_lAr", 10.0, active=True))
# Tile calorimeter: steel / plastic scintillator, 14 mm : 3 mm per period (volume ratio
# 4.7 : 1, ATLAS Tile TDR CERN/LHCC 96-42).  The real tiles are planes perpendicular to the
# beam, so a particle at η ≈ 0.2 runs almost along them; here they are flat slabs across
# its path with the same steel : scintillator ratio.
_ATLAS_TILE_CELL = (Slab("G4_Fe", 14.0), Slab("G4_POLYSTYRENE", 3.0, active=True))
# In front of the presampler at η ≈ 0.2: inner cryostat wall + solenoid ≈ 2 X0, modelled
# as 2 X0 of aluminium (X0(Al) = 88.97 mm, PDG).  The outer cryostat between EMB3 and
# Tile is not modelled (vacuum), nor is anything between the presampler and the strips.
_ATLAS_UPSTREAM = (Slab("G4_Al", 2 * 88.97),)
_ATLAS_NOTE = ("; Geant4: flat Pb/LAr and Fe/scintillator slabs at normal incidence instead of the accordion "
               "and the tiles (same material per mm on average), 2 X0 of Al upstream")


def _atlas_ds1_stack(n_layers: int) -> list[dict]:
    """ATLAS barrel at |η| ≈ 0.2: presampler, EMB1-3, (empty end-cap ids), Tile A/BC/D."""
    lar, ps, tile = MATERIALS["atlas-lar-pb"], MATERIALS["atlas-presampler"], MATERIALS["atlas-tile-fe-scint"]
    # depths [mm] measured from the presampler front; EMB ≈ 4.3 + 16 + 2 X0,
    # Tile A/BC/D ≈ 1.5 / 4.1 / 1.8 λ_I.  The gap between EMB3 and Tile holds the cryostat.
    barrel = {
        0: dict(name="PreSamplerB", z_front=0.0, thickness=11.0, material=ps, sampling_fraction=0.25, sampling_term=0.3),
        1: dict(name="EMB1", z_front=40.0, thickness=84.0, material=lar, sampling_fraction=0.18, sampling_term=0.10),
        2: dict(name="EMB2", z_front=124.0, thickness=312.0, material=lar, sampling_fraction=0.18, sampling_term=0.10),
        3: dict(name="EMB3", z_front=436.0, thickness=39.0, material=lar, sampling_fraction=0.18, sampling_term=0.10),
        12: dict(name="TileBar0", z_front=800.0, thickness=310.0, material=tile, sampling_fraction=0.034, sampling_term=0.28),
        13: dict(name="TileBar1", z_front=1110.0, thickness=850.0, material=tile, sampling_fraction=0.034, sampling_term=0.28),
        14: dict(name="TileBar2", z_front=1960.0, thickness=370.0, material=tile, sampling_fraction=0.034, sampling_term=0.28),
    }
    cells = {ps.name: _ATLAS_PRESAMPLER_CELL, lar.name: _ATLAS_EM_CELL, tile.name: _ATLAS_TILE_CELL}
    for spec in barrel.values():
        spec["sampling"] = _fill(spec["thickness"], cells[spec["material"].name])
    stack = []
    z = 0.0
    for lid in range(n_layers):
        if lid in barrel:
            spec = barrel[lid]
            z = spec["z_front"] + spec["thickness"]
        else:
            # end-cap / HEC ids are not crossed in the barrel: zero-thickness placeholders
            z_next = min((s["z_front"] for k, s in barrel.items() if k > lid), default=z)
            spec = dict(name=f"unused{lid}", z_front=z_next if lid > 3 else z, thickness=0.0, material=lar)
        stack.append(spec)
    # zero-thickness placeholders must not sit inside a real layer
    z_prev = 0.0
    for spec in stack:
        spec["z_front"] = max(spec["z_front"], z_prev)
        z_prev = spec["z_front"] + spec["thickness"]
    return stack


def _ds1(particle: str) -> Geometry:
    path = _binning_file(f"binning_dataset_1_{particle}.xml")
    n_layers = len(_read_xml_layers(path)[1])
    geo = geometry_from_xml(
        path,
        name=f"ds1-{particle}",
        stack=_atlas_ds1_stack(n_layers),
        upstream_X0=2.0,
        description=f"CaloChallenge dataset 1 ({particle}): ATLAS barrel at |η|≈0.2, LAr/Pb EM + Fe/scint Tile"
                    + _ATLAS_NOTE,
    )
    # the outermost radial bins of the ds1 binning reach r = 2000 mm: slabs as wide as that
    return replace(geo, upstream=_ATLAS_UPSTREAM, half_width=2000.0)


def _ds23(number: int) -> Geometry:
    path = _binning_file(f"binning_dataset_{number}.xml")
    mat = MATERIALS["w-si-calochallenge"]
    n_layers = len(_read_xml_layers(path)[1])
    # each readout layer = 2 × (1.4 mm W + 0.3 mm Si): 3.4 mm; the sampling fraction is the
    # CaloChallenge's own (its files are the Si energy divided by 0.033)
    # Physical structure: Geant4's Par04 example, the detector of CaloChallenge datasets 2/3
    # (CaloChallenge 2022 dataset description; Geant4 examples/extended/parameterisations/Par04):
    # a cylinder of inner radius 80 cm made of 90 sub-layers alternating 1.4 mm W (absorber)
    # and 0.3 mm Si (active), read out in 45 layers of two sub-layers each, in the particle's
    # frame.  45 × 2 × (1.4/3.504 + 0.3/93.7) ≈ 36.2 X0.  Flat slabs approximate the cylinder.
    cell = Sampling(slabs=(Slab("G4_W", 1.4), Slab("G4_Si", 0.3, active=True)), repeats=2)
    stack = [
        dict(name=f"L{i}", z_front=3.4 * i, thickness=3.4, material=mat, sampling_fraction=0.033, sampling_term=0.17,
             sampling=cell)
        for i in range(n_layers)
    ]
    geo = geometry_from_xml(
        path,
        name=f"ds{number}",
        stack=stack,
        description=f"CaloChallenge dataset {number}: 45 Si-W layers (1.4 mm W / 0.3 mm Si pairs), electrons; "
                    f"Geant4: flat slabs approximate Par04's cylinder (inner radius 80 cm)",
    )
    return replace(geo, readout_frame="particle")


def _cartesian(name: str, specs: Sequence[dict], description: str, upstream_X0: float = 0.0,
               **geometry_fields) -> Geometry:
    layers = []
    z = 0.0
    for i, spec in enumerate(specs):
        spec = dict(spec)
        spec.setdefault("z_front", z)
        if isinstance(spec["material"], str):
            spec["material"] = MATERIALS[spec["material"]]
        layers.append(Layer(id=i, kind="cartesian", **spec))
        z = spec["z_front"] + spec["thickness"]
    return Geometry(name=name, layers=tuple(layers), upstream_X0=upstream_X0, description=description,
                    **geometry_fields)


# CaloGAN's GEANT4 detector (Paganini, de Oliveira, Nachman, PRL 120 (2018) 042003 and
# PRD 97 (2018) 014021): a 480 mm cube of lead absorber and liquid-argon active medium,
# 2 mm Pb + 4 mm LAr per sampling cell, read out in layers 90 / 347 / 43 mm deep.
# 90 mm = 15 cells exactly; 347 and 43 mm are not multiples of 6 mm, so those layers hold
# 58 cells of 5.983 mm and 7 cells of 6.143 mm, Pb : LAr kept at 1 : 2 (_fill: < 2.5 % off
# the nominal 2 / 4 mm, same X0 per mm and sampling fraction).  A partial last cell would
# need the whole layer spelt out slab by slab (116 slabs), more than the Geant4
# application's 64 slabs per cell.
# Cell: 2/5.612 + 4/140 = 0.385 X0 → 30.8 X0 in all (the effective calogan-pb-lar: 480/15.6).
_CALOGAN_CELL = (Slab("G4_Pb", 2.0), Slab("G4_lAr", 4.0, active=True))


def _calogan() -> Geometry:
    # CaloGAN (Paganini et al. 2017): 480 × 480 mm LAr/Pb block, 3 layers of 90 / 347 / 43 mm
    common = dict(material="calogan-pb-lar", sampling_fraction=0.2, sampling_term=0.10)
    return _cartesian(
        "calogan",
        [
            dict(name="layer_0", thickness=90.0, nx=96, ny=3, cell_x=5.0, cell_y=160.0,
                 sampling=_fill(90.0, _CALOGAN_CELL), **common),
            dict(name="layer_1", thickness=347.0, nx=12, ny=12, cell_x=40.0, cell_y=40.0,
                 sampling=_fill(347.0, _CALOGAN_CELL), **common),
            dict(name="layer_2", thickness=43.0, nx=6, ny=12, cell_x=80.0, cell_y=40.0,
                 sampling=_fill(43.0, _CALOGAN_CELL), **common),
        ],
        "CaloGAN 3-layer LAr/Pb sampling calorimeter (3×96, 12×12, 12×6 cells)",
        half_width=240.0,  # the 480 mm cube: showers leak out of its sides as in CaloGAN
    )


def _atlas_4layer() -> Geometry:
    # ATLAS EM barrel images: Δη×Δφ cells projected at r ≈ 1.5 m (Δη 0.025 ≈ 37.5 mm, Δφ 0.1 ≈ 150 mm)
    lar, ps = "atlas-lar-pb", "atlas-presampler"
    return _cartesian(
        "atlas-4layer",
        [
            dict(name="presampler", z_front=0.0, thickness=11.0, nx=7, ny=3, cell_x=37.5, cell_y=150.0,
                 material=ps, sampling_fraction=0.25, sampling_term=0.3,
                 sampling=_fill(11.0, _ATLAS_PRESAMPLER_CELL)),
            dict(name="strips", z_front=40.0, thickness=84.0, nx=56, ny=3, cell_x=4.6875, cell_y=150.0,
                 material=lar, sampling_fraction=0.18, sampling_term=0.10, sampling=_fill(84.0, _ATLAS_EM_CELL)),
            dict(name="middle", thickness=312.0, nx=7, ny=7, cell_x=37.5, cell_y=37.5,
                 material=lar, sampling_fraction=0.18, sampling_term=0.10, sampling=_fill(312.0, _ATLAS_EM_CELL)),
            dict(name="back", thickness=39.0, nx=4, ny=7, cell_x=75.0, cell_y=37.5,
                 material=lar, sampling_fraction=0.18, sampling_term=0.10, sampling=_fill(39.0, _ATLAS_EM_CELL)),
        ],
        "ATLAS-like EM barrel: presampler 7×3, strips 56×3, middle 7×7, back 4×7 (266 cells)" + _ATLAS_NOTE,
        upstream_X0=2.0,
        upstream=_ATLAS_UPSTREAM,
    )


# 3DGAN's CLIC ECAL (Khattak, Vallecorsa et al., ACAT 2019: "1.5 m inner radius, 5 mm × 5 mm
# segmentation: 25 tungsten absorber layers + silicon sensors").  The paper gives no
# thicknesses; the CLIC detector model with those numbers (CLIC NDM ECAL barrel, CERN twiki
# CLIC/ClicNDM_ECal: inner r 1500 mm, 5.1 mm Si pads, 25 layers: 17 × 2.4 mm W then
# 8 × 4.8 mm W, ≈ 23 X0) sets the absorbers; 0.5 mm Si sensors as in CLICdet (CLICdp-Note-2017-001).
# The preset keeps its 25 uniform 5 mm readout layers, so:
#   front 17 layers: 2.4 W + 0.5 Si* + 0.2 G4_KAPTON (PCB) + 0.1 G4_Cu (traces) + 1.8 G4_AIR (gap)
#   back 8 layers:   4.4 W + 0.5 Si* + 0.1 G4_KAPTON — the W is 4.4 mm, not 4.8, to fit 5 mm.
# Total W 76 mm (as CLICdet's 40 × 1.9 mm); ≈ 22.0 X0 (the effective clic-w-si says 25).
_CLIC_FRONT = (Slab("G4_W", 2.4), Slab("G4_Si", 0.5, active=True), Slab("G4_KAPTON", 0.2), Slab("G4_Cu", 0.1),
               Slab("G4_AIR", 1.8))
_CLIC_BACK = (Slab("G4_W", 4.4), Slab("G4_Si", 0.5, active=True), Slab("G4_KAPTON", 0.1))


def _clic_layers(n: int) -> list[dict]:
    return [
        dict(name=f"L{i}", thickness=5.0, nx=n, ny=n, cell_x=5.0, cell_y=5.0,
             material="clic-w-si", sampling_fraction=0.013, sampling_term=0.17,
             sampling=Sampling(slabs=_CLIC_FRONT if i < 17 else _CLIC_BACK))
        for i in range(25)
    ]


def _clic() -> Geometry:
    return _cartesian(
        "clic",
        _clic_layers(25),
        "CLIC-like Si-W ECAL: 25 layers of 25×25 cells, 5 mm pitch (≈25 X0)",
    )


# BIB-AE's ILD Si-W ECAL (McKeown et al. 2023: "30 layers of alternating active (Si) and
# passive (W) material, 5×5 mm² silicon cells").  ILD's ECAL model (ILD LoI / DBD, ILD_l5):
# 20 layers with 2.1 mm W, then 10 with 4.2 mm W, 0.5 mm Si sensors; the rest of each
# readout layer (1.3 mm) is the slab's PCB, copper and air: 0.8 mm G4_KAPTON (FR4 stand-in),
# 0.1 mm G4_Cu, 0.4 mm G4_AIR.  3.9 = 2.1 + 1.8 and 6.0 = 4.2 + 1.8 mm; ≈ 24.4 X0.
_ILD_SERVICES = (Slab("G4_Si", 0.5, active=True), Slab("G4_KAPTON", 0.8), Slab("G4_Cu", 0.1), Slab("G4_AIR", 0.4))


def _ild() -> Geometry:
    specs = []
    for i in range(30):
        front = i < 20  # ILD: 20 layers with 2.1 mm W, then 10 with 4.2 mm W
        specs.append(
            dict(
                name=f"L{i}",
                thickness=3.9 if front else 6.0,
                nx=30,
                ny=30,
                cell_x=5.0,
                cell_y=5.0,
                material="ild-w-si-front" if front else "ild-w-si-back",
                sampling_fraction=0.012 if front else 0.007,
                sampling_term=0.17,
                sampling=Sampling(slabs=(Slab("G4_W", 2.1 if front else 4.2), *_ILD_SERVICES)),
            )
        )
    return _cartesian("ild", specs, "ILD-like Si-W ECAL: 30 layers of 30×30 cells, 5 mm pitch (≈24 X0)")


def _clic_angled() -> Geometry:
    # 3DGAN's angled CLIC sample (Vallecorsa et al., ACAT 2019): electrons at 60°–120° need a
    # wider transverse window, 51 × 51 cells of 5 mm, over the same 25 layers
    return _cartesian(
        "clic-angled",
        _clic_layers(51),
        "CLIC-like Si-W ECAL for inclined showers: 25 layers of 51×51 cells, 5 mm pitch (≈25 X0)",
    )


def _ild_angled() -> Geometry:
    # The BIB-AE multi-parameter grid (McKeown et al. 2023): angled photons projected onto
    # (x, y, z) = (30, 60, 30) cells; the polar angle tilts the shower along y (60 cells)
    base = _ild()
    layers = tuple(replace(layer, nx=30, ny=60) for layer in base.layers)
    return replace(base, name="ild-angled", layers=layers,
                   description="ILD-like Si-W ECAL for inclined photons: 30 layers of 60 (y) × 30 (x) cells, "
                               "5 mm pitch (≈24 X0); the polar angle tilts showers along y")


PRESETS = {
    "ds1-photons": lambda: _ds1("photons"),
    "ds1-pions": lambda: _ds1("pions"),
    "ds2": lambda: _ds23(2),
    "ds3": lambda: _ds23(3),
    "calogan": _calogan,
    "atlas-4layer": _atlas_4layer,
    "clic": _clic,
    "ild": _ild,
    "clic-angled": _clic_angled,
    "ild-angled": _ild_angled,
}


# ----------------------------------------------------------------------------------
# YAML / dict
# ----------------------------------------------------------------------------------
_LAYER_KEYS = set(Layer.__dataclass_fields__)
_MATERIAL_KEYS = {"Z", "X0", "lambda_I", "moliere_radius", "critical_energy"}


_INT_FIELDS = {"id", "n_alpha", "nx", "ny"}
_FLOAT_FIELDS = {"z_front", "thickness", "sampling_fraction", "sampling_term", "cell_x", "cell_y"}
_MAX_LAYER_BINS = 10**7  # per layer: beyond this a typo, not a calorimeter


def _number(where: str, key: str, value, integer: bool = False, positive: bool = False):
    """A finite number (an integer with ``integer``) from YAML, or GeometryError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GeometryError(f"{where}: {key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise GeometryError(f"{where}: {key} must be finite, got {value}")
    if positive and value <= 0:
        raise GeometryError(f"{where}: {key} must be positive, got {value}")
    if integer:
        if value != int(value) or abs(value) > _MAX_LAYER_BINS:
            raise GeometryError(f"{where}: {key} must be an integer up to {_MAX_LAYER_BINS}, got {value}")
        return int(value)
    return float(value)


def _text(where: str, key: str, value) -> str:
    if isinstance(value, (dict, list)):
        raise GeometryError(f"{where}: {key} must be text, got {value!r}")
    return "" if value is None else str(value)


def _layer_spec(where: str, raw: dict) -> dict:
    """A layer mapping with every field of the right type (YAML gives anything)."""
    spec = dict(raw)
    for key in _INT_FIELDS & set(spec):
        spec[key] = _number(where, key, spec[key], integer=True)
    for key in _FLOAT_FIELDS & set(spec):
        spec[key] = _number(where, key, spec[key])
    if "name" in spec:
        spec["name"] = _text(where, "name", spec["name"])
    if "kind" in spec and spec["kind"] not in ("polar", "cartesian"):
        raise GeometryError(f"{where}: kind must be 'polar' or 'cartesian', not {spec['kind']!r}")
    if "r_edges" in spec:
        edges = spec["r_edges"]
        if not isinstance(edges, list) or len(edges) > _MAX_LAYER_BINS:
            raise GeometryError(f"{where}: r_edges must be a list of radii in mm, got {edges!r}")
        spec["r_edges"] = tuple(_number(where, "r_edges", v) for v in edges)
    if spec.get("nx", 0) * spec.get("ny", 0) > _MAX_LAYER_BINS or spec.get("n_alpha", 1) * len(
            spec.get("r_edges", ())) > _MAX_LAYER_BINS:
        raise GeometryError(f"{where}: more than {_MAX_LAYER_BINS} voxels in one layer")
    if spec.get("sampling") is not None:
        spec["sampling"] = _sampling_spec(where, spec["sampling"])
    return spec


_SLAB_KEYS = {"material", "thickness", "active"}
_MAX_SLABS = 100_000  # slabs in one cell / repeats of a layer: beyond this a typo


def _slab_spec(where: str, raw) -> Slab:
    """One ``{material: G4_W, thickness: 1.4, active: false}`` mapping → :class:`Slab`."""
    if not isinstance(raw, dict):
        raise GeometryError(f"{where}: a slab must be a mapping like {{material: G4_W, thickness: 1.4}}, got {raw!r}")
    unknown = set(raw) - _SLAB_KEYS
    if unknown:
        raise GeometryError(f"{where}: unknown slab key(s) {sorted(unknown)} (use material, thickness, active)")
    for key in ("material", "thickness"):
        if key not in raw:
            raise GeometryError(f"{where}: every slab needs '{key}'")
    material = raw["material"]
    if not isinstance(material, str) or not _G4_MATERIAL.match(material):
        raise GeometryError(f"{where}: slab material must be a Geant4 NIST name like G4_W, not {material!r}")
    thickness = _number(where, "slab thickness", raw["thickness"], positive=True)
    active = raw.get("active", False)
    if not isinstance(active, bool):
        raise GeometryError(f"{where}: slab active must be true or false, got {active!r}")
    return Slab(material=material, thickness=thickness, active=active)


def _slab_list(where: str, raw, key: str) -> tuple[Slab, ...]:
    if not isinstance(raw, list) or len(raw) > _MAX_SLABS:
        raise GeometryError(f"{where}: {key} must be a list of slabs ({{material, thickness, active}}), got {raw!r}")
    return tuple(_slab_spec(where, item) for item in raw)


def _sampling_spec(where: str, raw) -> Sampling:
    """``{repeats: 2, slabs: [...]}`` → :class:`Sampling` (errors name ``where``)."""
    if isinstance(raw, Sampling):
        return raw
    if not isinstance(raw, dict):
        raise GeometryError(f"{where}: sampling must be a mapping {{repeats: N, slabs: [...]}}, got {raw!r}")
    unknown = set(raw) - {"repeats", "slabs"}
    if unknown:
        raise GeometryError(f"{where}: unknown sampling key(s) {sorted(unknown)} (use repeats, slabs)")
    if "slabs" not in raw:
        raise GeometryError(f"{where}: sampling needs 'slabs'")
    slabs = _slab_list(where, raw["slabs"], "sampling slabs")
    if not slabs:
        raise GeometryError(f"{where}: sampling slabs must not be empty")
    repeats = _number(where, "sampling repeats", raw.get("repeats", 1), integer=True)
    if repeats < 1 or repeats > _MAX_SLABS:
        raise GeometryError(f"{where}: sampling repeats must be an integer from 1 to {_MAX_SLABS}, got {repeats}")
    try:
        return Sampling(slabs=slabs, repeats=repeats)
    except GeometryError as exc:
        raise GeometryError(f"{where}: {exc}") from None


def geometry_from_dict(data: dict, where: str = "geometry") -> Geometry:
    """Build a :class:`Geometry` from plain data (the form :meth:`Geometry.to_dict` writes).

    Layers may omit ``z_front`` (stacked one after another) and ``id`` (numbered in
    order); materials are given by name from :data:`MATERIALS` or defined in a
    ``materials:`` block.  For the Geant4 engine a layer may declare its physical
    ``sampling:`` structure (``{repeats: N, slabs: [{material: G4_W, thickness: 1.4},
    {material: G4_Si, thickness: 0.3, active: true}]}``, N cells summing to the layer's
    thickness), and the geometry its ``upstream:`` slabs, ``half_width`` [mm] and
    ``readout_frame`` (``detector`` or ``particle``).
    """
    if not isinstance(data, dict):
        raise GeometryError(f"{where}: expected a mapping at the top level")
    unknown = set(data) - {"name", "description", "particle", "upstream_X0", "materials", "layers",
                           "upstream", "half_width", "readout_frame"}
    if unknown:
        raise GeometryError(f"{where}: unknown key(s) {sorted(unknown)}")
    materials = dict(MATERIALS)
    user_materials = data.get("materials") or {}
    if not isinstance(user_materials, dict):
        raise GeometryError(f"{where}: 'materials' must be a mapping of name → properties")
    for mname, props in user_materials.items():
        if not isinstance(props, dict) or set(props) != _MATERIAL_KEYS:
            raise GeometryError(f"{where}: material {mname!r} needs exactly {sorted(_MATERIAL_KEYS)}")
        mname = _text(where, "material name", mname)
        materials[mname] = Material(name=mname, **{k: _number(f"{where}: material {mname!r}", k, v, positive=True)
                                                   for k, v in props.items()})
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise GeometryError(f"{where}: 'layers' must be a non-empty list")
    layers = []
    z = 0.0
    for i, raw in enumerate(raw_layers):
        if not isinstance(raw, dict):
            raise GeometryError(f"{where}: layer {i} must be a mapping")
        unknown = set(raw) - _LAYER_KEYS
        if unknown:
            raise GeometryError(f"{where}: layer {i}: unknown key(s) {sorted(unknown)}")
        spec = _layer_spec(f"{where}: layer {i}", raw)
        spec.setdefault("id", i)
        spec.setdefault("z_front", z)
        mname = spec.get("material")
        if not isinstance(mname, str) or mname not in materials:
            raise GeometryError(f"{where}: layer {i}: unknown material {mname!r}")
        spec["material"] = materials[mname]
        if "thickness" not in spec:
            raise GeometryError(f"{where}: layer {i}: 'thickness' is required")
        if "kind" not in spec:
            spec["kind"] = "polar" if "r_edges" in spec else "cartesian"
        if "r_edges" in spec:
            spec["r_edges"] = tuple(float(v) for v in spec["r_edges"])
        try:
            layer = Layer(**spec)
        except TypeError as exc:
            raise GeometryError(f"{where}: layer {i}: {exc}") from None
        except GeometryError as exc:  # name the file too
            raise GeometryError(f"{where}: {exc}") from None
        layers.append(layer)
        z = layer.z_front + layer.thickness
    upstream = _slab_list(f"{where}: upstream", data.get("upstream") or [], "upstream")
    half_width = _number(where, "half_width", data.get("half_width", 1000.0), positive=True)
    readout_frame = data.get("readout_frame", "detector")
    if readout_frame not in READOUT_FRAMES:
        raise GeometryError(f"{where}: readout_frame must be 'detector' or 'particle', not {readout_frame!r}")
    try:
        return Geometry(
            name=_text(where, "name", data.get("name")) or "custom",
            layers=tuple(layers),
            upstream_X0=_number(where, "upstream_X0", data.get("upstream_X0", 0.0)),
            description=_text(where, "description", data.get("description")),
            particle=_text(where, "particle", data.get("particle")),
            source=where,
            upstream=upstream,
            half_width=half_width,
            readout_frame=readout_frame,
        )
    except GeometryError as exc:
        raise GeometryError(exc.args[0] if str(exc).startswith(where) else f"{where}: {exc}") from None


def geometry_from_yaml(path: str | Path) -> Geometry:
    """Read a user geometry from YAML (see :func:`geometry_from_dict` for the schema).

    Example file::

        name: my-ecal
        layers:
          - {thickness: 3.5, material: clic-w-si, nx: 10, ny: 10, cell_x: 5, cell_y: 5}
          - {thickness: 3.5, material: clic-w-si, r_edges: [0, 5, 10, 20], n_alpha: 8}

    With the physical structure the Geant4 engine needs::

        name: my-siw
        upstream: [{material: G4_Al, thickness: 10}]
        layers:
          - thickness: 3.4
            material: w-si-calochallenge
            nx: 10
            ny: 10
            cell_x: 5
            cell_y: 5
            sampling:
              repeats: 2
              slabs: [{material: G4_W, thickness: 1.4}, {material: G4_Si, thickness: 0.3, active: true}]
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise GeometryError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise GeometryError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return geometry_from_dict(data, where=str(path))


def load_geometry(spec: str | Path | Geometry) -> Geometry:
    """A preset name, a CaloChallenge ``.xml`` file or a ``.yaml`` file → :class:`Geometry`."""
    if isinstance(spec, Geometry):
        return spec
    text = str(spec)
    if text in PRESETS:
        return PRESETS[text]()
    path = Path(text)
    if path.suffix.lower() == ".xml":
        if not path.exists():
            raise GeometryError(f"{path}: no such file")
        return geometry_from_xml(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        if not path.exists():
            raise GeometryError(f"{path}: no such file")
        return geometry_from_yaml(path)
    raise GeometryError(f"unknown geometry {text!r}: use one of {', '.join(PRESETS)} or a .xml/.yaml file")


def with_layers(geometry: Geometry, **changes) -> Geometry:
    """Copy of ``geometry`` with every layer's fields changed (e.g. ``sampling_fraction=1``)."""
    return replace(geometry, layers=tuple(replace(layer, **changes) for layer in geometry.layers))
