"""Seed datasets, reproduced in spirit: which energies, how many showers, which angles.

Each preset names the geometry it is made for and lists its parts per particle;
``scale`` multiplies every count (rounded, at least 1 per energy/part).  Each preset
writes energies in its dataset's convention (``energy_scale`` and ``convention``):

* ``ds1-photons`` / ``ds1-pions``: calibrated, as the CaloChallenge DS1 files (cell
  energies at the EM scale: E_tot / E_inc ≈ 1 minus leakage for photons, e/π-like below 1
  for pions);
* ``ds2`` / ``ds3``: calibrated, as the CaloChallenge Si-W files: the energy in the silicon
  divided by the sampling fraction 0.033 (E_tot / E_inc ≈ 1 minus leakage); the 0.5 keV
  silicon readout threshold is 15.15 keV in file units;
* ``calogan``: calibrated: the layer energies include the inactive material (CaloGAN PRL);
* ``atlas-4layer``: calibrated (ATLAS cells at the EM scale);
* ``clic`` and ``ild``: visible: the energy in the silicon cells (3DGAN shows the sampling
  fraction E_sum / E_p; BIB-AE the MIP peak of the hit spectrum).

>>> p = SIMULATION_PRESETS["ds1-photons"]
>>> p.geometry, p.default_particle, sum(part.n for part in p.parts("photon"))
('ds1-photons', 'photon', 121000)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from caloforge.errors import ConfigError
from caloforge.io import ShowerData

from .api import EnergySpec, Part, normalize_particle, simulate_plan, write_plan

__all__ = ["Preset", "SIMULATION_PRESETS", "DS1_ENERGIES", "get_preset", "preset_parts", "simulate_preset",
           "simulate_preset_to_file", "impact_eta_from_x"]

DS1_ENERGIES = 2.0 ** np.arange(8, 23)  # 256 MeV … 4.19 TeV
DS1_PHOTON_COUNTS = [10_000] * 11 + [5_000, 3_000, 2_000, 1_000]  # 121k
DS1_PION_COUNTS = [10_000] * 11 + [4_000, 3_000, 2_000, 1_000]  # 120k
GeV = 1e3


def _n(count: int, scale: float) -> int:
    return max(1, round(count * scale))


def _discrete(particle: str, energies, counts, scale: float) -> list[Part]:
    e = np.concatenate([np.full(_n(c, scale), v) for v, c in zip(energies, counts)])
    return [Part(particle, e, len(e))]


@dataclass(frozen=True)
class Preset:
    name: str
    geometry: str
    particles: tuple[str, ...]
    description: str
    build: Callable[[str, float], list[Part]] = field(repr=False)
    energy_scale: str = "calibrated"  # "visible" | "calibrated" (caloforge.simulate.api.ENERGY_SCALES)
    convention: str = ""  # the dataset's energy convention, in words
    # conditions the dataset stores besides the simulated ones (name → f(conditions)), e.g. impact_eta
    derived: dict = field(default_factory=dict, repr=False)

    @property
    def default_particle(self) -> str:
        return "photon" if "photon" in self.particles else self.particles[0]

    def parts(self, particle: str | None = None, scale: float = 1.0) -> list[Part]:
        particle = self.default_particle if particle is None else normalize_particle(particle)
        if particle not in self.particles:
            raise ConfigError(f"preset {self.name!r} has no {particle} showers (it has: {', '.join(self.particles)})")
        if not (scale > 0 and math.isfinite(scale)):
            raise ConfigError(f"preset scale must be positive, got {scale}")
        return self.build(particle, scale)


def _clic(particle: str, scale: float) -> list[Part]:
    spec = EnergySpec.uniform(10 * GeV, 500 * GeV)
    n = _n(10_000, scale)
    return [Part(particle, spec, n, theta=math.pi / 2, phi=0.0, impact=(0.0, 0.0)),
            Part(particle, spec, n, theta=(math.radians(60), math.radians(120)), phi=0.0)]


SIMULATION_PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("ds1-photons", "ds1-photons", ("photon",),
               "15 DS1 energies 256 MeV … 4.2 TeV, 121k photons (10k per energy up to 262 GeV)",
               lambda part, s: _discrete(part, DS1_ENERGIES, DS1_PHOTON_COUNTS, s),
               "calibrated", "CaloChallenge DS1: cell energies at the EM scale, E_tot/E_inc ≈ 1 minus leakage"),
        Preset("ds1-pions", "ds1-pions", ("pion",),
               "15 DS1 energies 256 MeV … 4.2 TeV, 120k pions",
               lambda part, s: _discrete(part, DS1_ENERGIES, DS1_PION_COUNTS, s),
               "calibrated", "CaloChallenge DS1: cell energies at the EM scale (pions: e/π < 1, leakage)"),
        Preset("ds2", "ds2", ("electron",),
               "CaloChallenge DS2: electrons 1 GeV … 1 TeV log-uniform, 100k",
               lambda part, s: [Part(part, EnergySpec.log_uniform(1 * GeV, 1e3 * GeV), _n(100_000, s))],
               "calibrated", "CaloChallenge Si-W: silicon energy / 0.033; 0.5 keV Si threshold = 15.15 keV"),
        Preset("ds3", "ds3", ("electron",),
               "CaloChallenge DS3: electrons 1 GeV … 1 TeV log-uniform, 100k",
               lambda part, s: [Part(part, EnergySpec.log_uniform(1 * GeV, 1e3 * GeV), _n(100_000, s))],
               "calibrated", "CaloChallenge Si-W: silicon energy / 0.033; 0.5 keV Si threshold = 15.15 keV"),
        Preset("calogan", "calogan", ("photon", "electron", "pion"),
               "e+, γ, π+ at 1–100 GeV uniform, perpendicular, 100k each",
               lambda part, s: [Part(part, EnergySpec.uniform(1 * GeV, 100 * GeV), _n(100_000, s))],
               "calibrated", "CaloGAN: layer energies include the inactive material"),
        Preset("clic", "clic", ("photon", "electron", "pion"),
               "e−, γ, π at 10–500 GeV flat: 10k perpendicular + 10k with θ 60°–120°, each",
               _clic, "visible", "CLIC (3DGAN): energy in the silicon cells"),
        Preset("ild", "ild", ("photon",),
               "photons 10–100 GeV flat with θ 30°–90°, 20k",
               lambda part, s: [Part(part, EnergySpec.uniform(10 * GeV, 100 * GeV), _n(20_000, s),
                                     theta=(math.radians(30), math.radians(90)), phi=0.0)],
               "visible", "ILD (BIB-AE): hit energies in the silicon (MIP peak)"),
        Preset("atlas-4layer", "atlas-4layer", ("photon",),
               "photons at 1, 2, 4, 8, 16, 32, 65, 131, 262 GeV, 10k each",
               lambda part, s: _discrete(part, [1, 2, 4, 8, 16, 32, 65, 131, 262] * np.array(GeV), [10_000] * 9, s),
               "calibrated", "ATLAS cells at the EM scale"),
    ]
}


def get_preset(name: str) -> Preset:
    if name not in SIMULATION_PRESETS:
        raise ConfigError(f"unknown preset {name!r}: use one of {', '.join(SIMULATION_PRESETS)}")
    return SIMULATION_PRESETS[name]


def preset_parts(name: str, particle: str | None = None, scale: float = 1.0) -> list[Part]:
    return get_preset(name).parts(particle, scale)


def _plan(name: str, particle: str | None, scale: float, geometry) -> tuple[object, list[Part]]:
    """(geometry, parts) of a preset; ``geometry`` defaults to the preset's own."""
    p = get_preset(name)
    return geometry or p.geometry, p.parts(particle, scale)


def simulate_preset(name: str, seed: int = 0, scale: float = 1.0, workers: int | None = None,
                    particle: str | None = None, geometry=None, progress: bool = False,
                    energy_scale: str | None = None) -> ShowerData:
    """Simulate a preset into memory (``particle`` defaults to the preset's photon / pion set;
    ``geometry`` defaults to the preset's own; ``energy_scale`` to the preset's convention);
    the preset's derived conditions (``atlas-gan``: ``impact_eta``) are included."""
    p = get_preset(name)
    return simulate_plan(*_plan(name, particle, scale, geometry), seed=seed, workers=workers, progress=progress,
                         energy_scale=energy_scale or p.energy_scale, derived=p.derived)


def simulate_preset_to_file(path: str | Path, name: str, seed: int = 0, scale: float = 1.0,
                            workers: int | None = None, particle: str | None = None, geometry=None,
                            progress: bool = False, chunk: int = 4096, energy_scale: str | None = None) -> int:
    """Stream a preset into a CaloChallenge file (with its derived conditions); returns the number of showers."""
    p = get_preset(name)
    return write_plan(path, *_plan(name, particle, scale, geometry), seed=seed, workers=workers,
                      progress=progress, chunk=chunk, attrs={"preset": name},
                      energy_scale=energy_scale or p.energy_scale, derived=p.derived)



# ----------------------------------------------------------------------------------
# Angled Si-W samples of the 3DGAN and BIB-AE papers
# ----------------------------------------------------------------------------------
# The BIB-AE photons enter at one fixed point; ours 80 mm below the centre of the 300 mm (y) face,
# so that showers from 30° (leaning +y) to 90° (straight) all stay on the 60-cell grid
ILD_IMPACT_MM = (0.0, -80.0)
# The BIB-AE test points (McKeown et al. 2023): 3 energies × 3 polar angles, away from the
# edges of the 10–100 GeV, 30°–90° training phase space
ILD_TEST_ENERGIES_GEV = (20.0, 50.0, 80.0)
ILD_TEST_THETAS_DEG = (40.0, 60.0, 80.0)


def _clic_angled(particle: str, scale: float) -> list[Part]:
    # 3DGAN's "more realistic sample": flat 10–500 GeV, θ uniform in 60°–120°, tilt along x
    return [Part(particle, EnergySpec.uniform(10 * GeV, 500 * GeV), _n(20_000, scale),
                 theta=(math.radians(60), math.radians(120)), phi=0.0)]


def _clic_perpendicular(particle: str, scale: float) -> list[Part]:
    # θ is stored (π/2 for every shower) so a model conditioned on it can mix both samples
    return [Part(particle, EnergySpec.uniform(10 * GeV, 500 * GeV), _n(20_000, scale), theta=math.pi / 2, phi=0.0)]


def _ild_angled(particle: str, scale: float) -> list[Part]:
    # BIB-AE training set: flat 10–100 GeV, θ uniform in 30°–90°, the tilt along y (φ = 90°)
    return [Part(particle, EnergySpec.uniform(10 * GeV, 100 * GeV), _n(50_000, scale),
                 theta=(math.radians(30), math.radians(90)), phi=math.pi / 2, impact=ILD_IMPACT_MM)]


def _ild_angled_test(particle: str, scale: float) -> list[Part]:
    n = _n(2_000, scale)
    parts = []
    for e in ILD_TEST_ENERGIES_GEV:
        for th in ILD_TEST_THETAS_DEG:
            parts.append(Part(particle, np.full(n, e * GeV), n, theta=math.radians(th), phi=math.pi / 2,
                              impact=ILD_IMPACT_MM))
    return parts



# --- the ATLAS GAN photon set-up (Ghosh & Rousseau 2019) ------------------------------------
# Impact η uniform in 0.20–0.25, drawn as the impact x (the η direction of ``atlas-4layer``, 1500 mm per
# unit η at the middle layer); :mod:`caloforge.simulate.paper_data` stores it as the ``impact_eta`` condition.
ATLAS_GAN_ENERGIES_GEV = (1, 2, 4, 8, 16, 32, 65, 131, 262)
ATLAS_GAN_ETA_RANGE = (0.20, 0.25)
ATLAS_GAN_MM_PER_ETA = 1500.0
_ATLAS_GAN_X = tuple((eta - sum(ATLAS_GAN_ETA_RANGE) / 2) * ATLAS_GAN_MM_PER_ETA for eta in ATLAS_GAN_ETA_RANGE)


def impact_eta_from_x(impact_x: np.ndarray) -> np.ndarray:
    """Impact x [mm] in ``atlas-4layer`` → impact η (the preset's centre 0.225, 1500 mm per unit η).

    >>> impact_eta_from_x(np.array([-37.5, 0.0, 37.5])).round(3).tolist()
    [0.2, 0.225, 0.25]
    """
    return sum(ATLAS_GAN_ETA_RANGE) / 2 + np.asarray(impact_x, dtype=np.float64) / ATLAS_GAN_MM_PER_ETA


_ATLAS_GAN_DERIVED = {"impact_eta": lambda cond: impact_eta_from_x(cond["impact_x"])}


def _atlas_gan(part: str, energies_gev, count: int, scale: float) -> list[Part]:
    e = np.concatenate([np.full(_n(count, scale), v * GeV) for v in energies_gev])
    return [Part(part, e, len(e), impact=(_ATLAS_GAN_X, 0.0))]


SIMULATION_PRESETS.update({
    p.name: p
    for p in [
        Preset("clic-perpendicular", "clic", ("electron",),
               "3DGAN perpendicular sample: electrons at 10–500 GeV flat, θ = 90° (stored), 20k, 25×25×25",
               _clic_perpendicular, energy_scale="visible",
               convention="visible energy in the silicon (as the clic preset)"),
        Preset("clic-angled", "clic-angled", ("electron",),
               "3DGAN angled sample: electrons at 10–500 GeV flat, θ 60°–120° (tilt along x), 20k, 51×51×25",
               _clic_angled, energy_scale="visible",
               convention="visible energy in the silicon (as the clic preset)"),
        Preset("ild-angled", "ild-angled", ("photon",),
               "BIB-AE sample: photons 10–100 GeV flat, θ 30°–90° (tilt along y, fixed entry point), 50k, "
               "30 layers × 60 × 30",
               _ild_angled, energy_scale="visible",
               convention="visible energy in the silicon (as the ild preset)"),
        Preset("ild-angled-test", "ild-angled", ("photon",),
               "BIB-AE test points: photons at 20, 50, 80 GeV × θ 40°, 60°, 80°, 2k each (18k)",
               _ild_angled_test, energy_scale="visible",
               convention="visible energy in the silicon (as the ild preset)"),
        Preset("atlas-gan", "atlas-4layer", ("photon",),
               "ATLAS GAN photons at 1, 2, 4, 8, 16, 32, 65, 131, 262 GeV, impact η 0.20–0.25, 9.8k each (88k)",
               lambda part, s: _atlas_gan(part, ATLAS_GAN_ENERGIES_GEV, 9_800, s), derived=_ATLAS_GAN_DERIVED),
        Preset("atlas-gan-25gev", "atlas-4layer", ("photon",),
               "ATLAS GAN photons at 25 GeV (never trained on: interpolation test), impact η 0.20–0.25, 10k",
               lambda part, s: _atlas_gan(part, (25,), 10_000, s), derived=_ATLAS_GAN_DERIVED),
    ]
})
