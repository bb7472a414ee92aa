"""The data sets of the CaloGAN and ATLAS GAN papers from the reference simulator.

* CaloGAN (PRL 2018): e+, γ, π+ with E uniform in 1–100 GeV, perpendicular at the
  centre of the 3-layer ``calogan`` calorimeter (preset ``calogan``), written in
  the CaloGAN HDF5 layout (``energy`` in GeV, ``layer_0..2``) and/or the
  CaloChallenge layout (:func:`write_calogan_sets`).
* ATLAS GAN (2019): photons at {1, …, 262} GeV (preset ``atlas-gan``) and at the
  never-trained 25 GeV (``atlas-gan-25gev``), impact η uniform in 0.20–0.25, stored
  as the ``impact_eta`` condition (:func:`simulate_atlas_gan`; the presets derive it, so
  ``caloforge simulate --preset atlas-gan`` stores it too).  The simulator has no
  electronic noise, so no cell is negative; the model still sets negatives to 0.

>>> round(float(impact_eta_from_x(np.array([0.0]))[0]), 3)
0.225
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caloforge.io import ShowerData, write_calogan, write_showers

from .api import normalize_particle
from .presets import impact_eta_from_x, simulate_preset

__all__ = ["impact_eta_from_x", "with_impact_eta", "simulate_atlas_gan", "simulate_calogan", "write_calogan_sets",
           "CALOGAN_PARTICLES"]

CALOGAN_PARTICLES = {"positron": "eplus", "photon": "gamma", "pion": "piplus"}


def with_impact_eta(data: ShowerData) -> ShowerData:
    """``data`` with an ``impact_eta`` condition derived from its ``impact_x``."""
    cond = dict(data.conditions)
    cond["impact_eta"] = impact_eta_from_x(cond["impact_x"])
    return ShowerData(data.incident_energy, data.showers, cond)


def simulate_atlas_gan(preset: str = "atlas-gan", seed: int = 0, scale: float = 1.0,
                       workers: int | None = None) -> ShowerData:
    """The ATLAS GAN photons (``atlas-gan`` or ``atlas-gan-25gev``) with ``impact_eta`` (derived by the
    preset), negatives set to 0."""
    data = simulate_preset(preset, seed=seed, scale=scale, workers=workers, particle="photon")
    data.showers = np.clip(data.showers, 0.0, None)
    return data


def simulate_calogan(particle: str, seed: int = 0, scale: float = 1.0, workers: int | None = None) -> ShowerData:
    """CaloGAN showers (``positron``/``electron``, ``photon``, ``pion``) at 1–100 GeV uniform."""
    name = normalize_particle(particle)
    return simulate_preset("calogan", seed=seed, scale=scale, workers=workers, particle=name)


def write_calogan_sets(out_dir: str | Path, particle: str, seed: int = 0, scale: float = 1.0,
                       workers: int | None = None) -> dict[str, Path]:
    """Simulate one particle's CaloGAN set and write it in both layouts:
    ``{out_dir}/{eplus|gamma|piplus}.hdf5`` (CaloGAN) and ``…-calochallenge.h5``."""
    data = simulate_calogan(particle, seed=seed, scale=scale, workers=workers)
    key = "photon" if normalize_particle(particle) == "photon" else (
        "pion" if normalize_particle(particle) == "pion" else "positron")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"calogan": out / f"{CALOGAN_PARTICLES[key]}.hdf5",
             "calochallenge": out / f"{CALOGAN_PARTICLES[key]}-calochallenge.h5"}
    write_calogan(paths["calogan"], data.incident_energy, data.showers)
    write_showers(paths["calochallenge"], data.incident_energy, data.showers, data.conditions or None)
    return paths
