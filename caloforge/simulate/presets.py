"""Seed datasets, reproduced in spirit: which energies, how many showers, which angles.

Each preset names the geometry it is made for and lists its parts per particle;
``scale`` multiplies every count (rounded, at least 1 per energy/part).

>>> p = PRESETS["ds1-photons"]
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

__all__ = ["Preset", "PRESETS", "DS1_ENERGIES", "get_preset", "preset_parts", "simulate_preset", "simulate_preset_to_file"]

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


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("ds1-photons", "ds1-photons", ("photon",),
               "15 DS1 energies 256 MeV … 4.2 TeV, 121k photons (10k per energy up to 262 GeV)",
               lambda part, s: _discrete(part, DS1_ENERGIES, DS1_PHOTON_COUNTS, s)),
        Preset("ds1-pions", "ds1-pions", ("pion",),
               "15 DS1 energies 256 MeV … 4.2 TeV, 120k pions",
               lambda part, s: _discrete(part, DS1_ENERGIES, DS1_PION_COUNTS, s)),
        Preset("calogan", "calogan", ("photon", "electron", "pion"),
               "e+, γ, π+ at 1–100 GeV uniform, perpendicular, 100k each",
               lambda part, s: [Part(part, EnergySpec.uniform(1 * GeV, 100 * GeV), _n(100_000, s))]),
        Preset("clic", "clic", ("photon", "electron", "pion"),
               "e−, γ, π at 10–500 GeV flat: 10k perpendicular + 10k with θ 60°–120°, each",
               _clic),
        Preset("ild", "ild", ("photon",),
               "photons 10–100 GeV flat with θ 30°–90°, 20k",
               lambda part, s: [Part(part, EnergySpec.uniform(10 * GeV, 100 * GeV), _n(20_000, s),
                                     theta=(math.radians(30), math.radians(90)), phi=0.0)]),
        Preset("atlas-4layer", "atlas-4layer", ("photon",),
               "photons at 1, 2, 4, 8, 16, 32, 65, 131, 262 GeV, 10k each",
               lambda part, s: _discrete(part, [1, 2, 4, 8, 16, 32, 65, 131, 262] * np.array(GeV), [10_000] * 9, s)),
    ]
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_parts(name: str, particle: str | None = None, scale: float = 1.0) -> list[Part]:
    return get_preset(name).parts(particle, scale)


def _plan(name: str, particle: str | None, scale: float, geometry) -> tuple[object, list[Part]]:
    """(geometry, parts) of a preset; ``geometry`` defaults to the preset's own."""
    p = get_preset(name)
    return geometry or p.geometry, p.parts(particle, scale)


def simulate_preset(name: str, seed: int = 0, scale: float = 1.0, workers: int | None = None,
                    particle: str | None = None, geometry=None, progress: bool = False) -> ShowerData:
    """Simulate a preset into memory (``particle`` defaults to the preset's photon / pion set;
    ``geometry`` defaults to the preset's own)."""
    return simulate_plan(*_plan(name, particle, scale, geometry), seed=seed, workers=workers, progress=progress)


def simulate_preset_to_file(path: str | Path, name: str, seed: int = 0, scale: float = 1.0,
                            workers: int | None = None, particle: str | None = None, geometry=None,
                            progress: bool = False, chunk: int = 4096) -> int:
    """Stream a preset into a CaloChallenge file; returns the number of showers."""
    return write_plan(path, *_plan(name, particle, scale, geometry), seed=seed, workers=workers,
                      progress=progress, chunk=chunk, attrs={"preset": name})


# --- issue 12: the ATLAS GAN photon set-up (Ghosh & Rousseau 2019) ------------------------------------
# Impact η uniform in 0.20–0.25, drawn as the impact x (the η direction of ``atlas-4layer``, 1500 mm per
# unit η at the middle layer); :mod:`caloforge.simulate.paper_data` stores it as the ``impact_eta`` condition.
ATLAS_GAN_ENERGIES_GEV = (1, 2, 4, 8, 16, 32, 65, 131, 262)
ATLAS_GAN_ETA_RANGE = (0.20, 0.25)
ATLAS_GAN_MM_PER_ETA = 1500.0
_ATLAS_GAN_X = tuple((eta - sum(ATLAS_GAN_ETA_RANGE) / 2) * ATLAS_GAN_MM_PER_ETA for eta in ATLAS_GAN_ETA_RANGE)


def _atlas_gan(part: str, energies_gev, count: int, scale: float) -> list[Part]:
    e = np.concatenate([np.full(_n(count, scale), v * GeV) for v in energies_gev])
    return [Part(part, e, len(e), impact=(_ATLAS_GAN_X, 0.0))]


PRESETS.update({
    p.name: p
    for p in [
        Preset("atlas-gan", "atlas-4layer", ("photon",),
               "ATLAS GAN photons at 1, 2, 4, 8, 16, 32, 65, 131, 262 GeV, impact η 0.20–0.25, 9.8k each (88k)",
               lambda part, s: _atlas_gan(part, ATLAS_GAN_ENERGIES_GEV, 9_800, s)),
        Preset("atlas-gan-25gev", "atlas-4layer", ("photon",),
               "ATLAS GAN photons at 25 GeV (never trained on: interpolation test), impact η 0.20–0.25, 10k",
               lambda part, s: _atlas_gan(part, (25,), 10_000, s)),
    ]
})
