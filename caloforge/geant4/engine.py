"""The Geant4 engine of :func:`caloforge.simulate.simulate`: blocks of showers from real transport.

A block is the same unit as for the parametrised engine: its incident energies,
angles and impact points are drawn from the block's own random stream exactly as
there (so a ``gflash`` and a ``geant4`` file with the same seed hold the same
conditions, row by row), then one 63-bit Geant4 seed per shower from the same
stream.  Every event is seeded on its own, so the showers do not depend on which
worker ran them or what it ran before.

Energy conventions: the application scores the energy in the active slabs
(``visible``); the readout threshold acts on it; a ``calibrated`` file divides each
layer by the sampling fraction *measured* for that layer's structure (:func:`sampling_fractions`).

Calibration, as an experiment does it with a test beam: for every distinct sampling
structure, :data:`CALIBRATION_EVENTS` electrons of :data:`CALIBRATION_ENERGY` enter a
block made of that structure alone, deep enough (≥ 40 X0, or 2 m) to contain the
shower; the sampling fraction is Σ E_active / Σ (E_active + E_passive) over all events.
The result is cached per (application build, structure, production cut) and recorded
in every calibrated file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caloforge.errors import EngineError
from caloforge.geometry import MATERIALS, Geometry, Layer, Sampling

from .build import Build, cache_dir, ensure_built
from .runner import DEFAULT_CUT_MM, G4Showers, Geant4Process

__all__ = ["Geant4Engine", "sampling_fractions", "gun_start", "CALIBRATION_ENERGY", "CALIBRATION_EVENTS",
           "PHYSICS_DIFFERENCES", "engine_attrs", "BLOCK_SIZE"]

CALIBRATION_ENERGY = 2000.0  # MeV
CALIBRATION_EVENTS = 200
# showers per piece: a block's draws (the random streams: caloforge.simulate.api.block_size) are made
# in pieces of this size, the unit of scheduling and of what a stopped run keeps
BLOCK_SIZE = 8
# radiation lengths [mm] of the NIST materials the presets use (PDG), to size the calibration block
NIST_X0_MM = {"G4_W": 3.504, "G4_Si": 93.70, "G4_Pb": 5.612, "G4_lAr": 140.0, "G4_Fe": 17.57, "G4_Cu": 14.36,
              "G4_Al": 88.97, "G4_POLYSTYRENE": 413.1, "G4_KAPTON": 285.7, "G4_AIR": 303900.0,
              "G4_Galactic": 1e30, "G4_STAINLESS-STEEL": 17.4, "G4_G10": 194.0}
CALIBRATION_DEPTH_X0 = 40.0
CALIBRATION_MAX_MM = 2000.0

# what the data-free electromagnetic list of the calzone build leaves out, compared with
# Geant4's G4EmStandardPhysics (recorded in every file it makes)
PHYSICS_DIFFERENCES = {
    "data-free-em": ("no Rayleigh scattering; Sandia-parametrised photoelectric effect instead of Livermore "
                     "EPICS2014; no fluorescence or Auger emission; Tsai screening (G4eBremsstrahlungRelModel) "
                     "instead of the Seltzer-Berger tables below 1 GeV; Urban multiple scattering below "
                     "100 MeV, WentzelVI above; only gamma, e-, e+ (no hadrons, no ions)"),
    "FTFP_BERT": "none: Geant4's reference physics list",
}


def _structure_key(sampling: Sampling) -> str:
    return f"{sampling.repeats}x" + "+".join(f"{s.thickness!r}mm {s.material}{'*' if s.active else ''}"
                                               for s in sampling.slabs)


def _x0_of(sampling: Sampling) -> float | None:
    """Radiation length [mm] of one sampling cell, or None if a material is not in the table."""
    try:
        x0 = sum(s.thickness / NIST_X0_MM[s.material] for s in sampling.slabs)
    except KeyError:
        return None
    return sum(s.thickness for s in sampling.slabs) / x0 if x0 > 0 else None


def _calibration_geometry(sampling: Sampling) -> Geometry:
    """A test-beam block of ``sampling`` alone, one readout cell, ≥ 40 X0 or 2 m deep."""
    cell = sum(s.thickness for s in sampling.slabs)
    x0 = _x0_of(sampling)
    depth = CALIBRATION_MAX_MM if x0 is None else min(CALIBRATION_MAX_MM, CALIBRATION_DEPTH_X0 * x0)
    n_cells = max(1, math.ceil(depth / cell))
    material = next(iter(MATERIALS.values()))  # the effective material is not used by Geant4
    one = Sampling(slabs=sampling.slabs, repeats=1)
    layers = tuple(Layer(id=i, kind="cartesian", z_front=i * cell, thickness=cell, material=material, nx=1, ny=1,
                         cell_x=2000.0, cell_y=2000.0, sampling=one) for i in range(n_cells))
    return Geometry(name="calibration", layers=layers, half_width=1000.0)


def _calibration_path(build: Build, key: str, cut_mm: float) -> Path:
    ident = json.dumps([str(build.executable), key, cut_mm, CALIBRATION_ENERGY, CALIBRATION_EVENTS]).encode()
    return cache_dir() / "geant4" / "calibration" / f"{hashlib.sha256(ident).hexdigest()[:20]}.json"


def measure_sampling_fraction(sampling: Sampling, build: Build, cut_mm: float = DEFAULT_CUT_MM) -> float:
    """Σ E_active / Σ E_deposited of electron showers in a block of ``sampling`` (cached)."""
    key = _structure_key(sampling)
    path = _calibration_path(build, key, cut_mm)
    try:
        return float(json.loads(path.read_text())["sampling_fraction"])
    except (OSError, ValueError, KeyError):
        pass
    rng = np.random.default_rng(np.random.SeedSequence([20261207, len(key)]))  # fixed: constants, not a run
    n = CALIBRATION_EVENTS
    seeds = rng.integers(1, 2**63 - 1, n, dtype=np.uint64)
    with Geant4Process(_calibration_geometry(sampling), cut_mm=cut_mm, build=build) as g4:
        out = g4.run("electron", seeds, np.full(n, CALIBRATION_ENERGY), np.tile([0.0, 0.0, -1.0], (n, 1)),
                     np.tile([0.0, 0.0, 1.0], (n, 1)))
    active, total = out.active.sum(), out.active.sum() + out.passive.sum()
    if not total > 0 or not active > 0:
        raise EngineError(f"calibration of the sampling structure {key}: no energy seen in its active slabs")
    fraction = float(active / total)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"structure": key, "sampling_fraction": fraction, "events": n,
                               "energy_mev": CALIBRATION_ENERGY, "particle": "e-", "cut_mm": cut_mm,
                               "geant4": build.info}, indent=1))
    os.replace(tmp, path)
    return fraction


def sampling_fractions(geometry: Geometry, build: Build | None = None, cut_mm: float = DEFAULT_CUT_MM) -> np.ndarray:
    """The measured sampling fraction of every layer, shape (n_layers,) (1 for layers without material)."""
    build = build or ensure_built()
    geometry.require_sampling()
    by_key: dict[str, float] = {}
    out = np.ones(geometry.n_layers)
    for i, layer in enumerate(geometry.layers):
        if layer.sampling is None or layer.thickness <= 0:
            continue
        key = _structure_key(layer.sampling)
        if key not in by_key:
            by_key[key] = measure_sampling_fraction(layer.sampling, build, cut_mm)
        out[i] = by_key[key]
    return out


def gun_start(geometry: Geometry, impact_x: np.ndarray, impact_y: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Gun positions (n, 3) [mm]: on the axis through ``(impact_x, impact_y)`` at the first readout
    layer's front, moved back along ``direction`` to 1 mm before any material."""
    z_entrance = next(L.z_front for L in geometry.layers if L.thickness > 0)
    z_start = z_entrance - sum(s.thickness for s in geometry.upstream) - 1.0
    back = (z_entrance - z_start) / direction[:, 2]
    return np.stack([impact_x - back * direction[:, 0], impact_y - back * direction[:, 1],
                     np.full(len(back), z_start)], axis=1)


def engine_attrs(build: Build, cut_mm: float, fractions: np.ndarray | None) -> dict:
    """File attributes that say how a Geant4 file was made."""
    physics = build.info.get("physics", "")
    attrs = {"engine": "geant4", "geant4_version": str(build.info.get("geant4_version", "")),
             "geant4_physics_list": physics, "geant4_production_cut_mm": float(cut_mm),
             "geant4_source": str(build.info.get("source", "")),
             "geant4_physics_differences": PHYSICS_DIFFERENCES.get(physics, "")}
    if fractions is not None:
        attrs["geant4_sampling_fractions"] = np.asarray(fractions, dtype=np.float64)
        attrs["geant4_calibration"] = (f"sampling fraction per layer structure: sum E_active / sum E_deposited of "
                                       f"{CALIBRATION_EVENTS} electrons of {CALIBRATION_ENERGY / 1e3:g} GeV in a "
                                       f"block of that structure alone (>= {CALIBRATION_DEPTH_X0:g} X0)")
    return attrs


@dataclass
class Geant4Engine:
    """What a worker holds to simulate blocks with Geant4: the process and the constants."""

    geometry: Geometry
    process: Geant4Process
    fractions: np.ndarray | None  # per layer, for calibrated files
    threshold: float  # readout zero suppression [MeV visible]

    @classmethod
    def start(cls, geometry: Geometry, fractions: np.ndarray | None, threshold: float,
              cut_mm: float = DEFAULT_CUT_MM, build: Build | None = None,
              fast_model: str | Path | None = None) -> "Geant4Engine":
        """Start the application on ``geometry``; ``fractions`` (per layer) make calibrated showers;
        ``fast_model``: a TorchScript export that replaces the e±/γ showers (``caloforge-g4-fast``).
        A calibrated file's model generates calibrated energies: the application multiplies them by
        the fractions (visible energy, as transport scores it) and :meth:`showers` divides again."""
        build = build or ensure_built(fast=fast_model is not None)
        geometry.require_sampling()
        process = Geant4Process(geometry, cut_mm=cut_mm, build=build, fast_model=fast_model,
                                visible_scale=fractions)
        if fast_model is not None:  # one network call per block of BLOCK_SIZE events, not per event
            process.set_fast_batch("block")
        return cls(geometry, process, fractions, threshold)

    def showers(self, particle: str, seeds: np.ndarray, energy: np.ndarray, theta: np.ndarray, phi: np.ndarray,
                impact_x: np.ndarray, impact_y: np.ndarray) -> tuple[np.ndarray, G4Showers]:
        """(n, n_voxels) showers in the engine's convention, and the raw output."""
        direction = np.stack([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)], axis=1)
        start = gun_start(self.geometry, impact_x, impact_y, direction)
        raw = self.process.run(particle, seeds, energy, start, direction)
        showers = raw.voxels.copy()
        showers[showers < self.threshold] = 0.0
        if self.fractions is not None:
            showers /= self.fractions[self.geometry.voxel_layer].astype(np.float32)
        return showers, raw

    def close(self) -> None:
        self.process.close()
