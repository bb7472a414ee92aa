"""The tuned gflash is closer to Geant4 than the published parametrisation (tiny samples, seconds).

Both engines simulate the same electrons (ds2, W/Si) and photons (calogan, Pb/LAr) at 8 GeV,
perpendicular, through the preset geometries; gflash runs twice, with the fitted table
(caloforge/data/gflash_tuning.json) and without it.  The observables are per-shower means:
hit voxels, longitudinal centre of gravity [layer index], energy-weighted RMS radius [mm].
Tolerances are the statistical errors of the Geant4 means at these sample sizes (stated
at each assertion) plus what the fit leaves (docs/geant4-reference.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from caloforge.geant4.build import require_geant4
from caloforge.geometry import load_geometry
from caloforge.simulate import simulate
from caloforge.simulate.api import Part, _tasks, simulate_block
from caloforge.simulate.deposit import Stack

_MISSING = require_geant4()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"Geant4 unavailable: {_MISSING}")

ENERGY = 8000.0  # MeV: ~65 ms of Geant4 CPU per W/Si electron


def _observe(geo, showers: np.ndarray) -> dict:
    x = np.asarray(showers, dtype=np.float64)
    e = x.sum(1)
    layer = geo.voxel_layer.astype(float)
    r = geo.voxel_centers["r"]
    return {"hits": (x > 0).sum(1).mean(), "cog": (x @ layer / e).mean(), "r_rms": np.sqrt(x @ (r * r) / e).mean(),
            "cog_err": (x @ layer / e).std() / np.sqrt(len(x))}


def _gflash(geo, particle: str, n: int, table) -> dict:
    stack = Stack.build(geo, tuning=table)
    part = Part(particle, np.full(n, ENERGY), n)
    x = np.concatenate([simulate_block(stack, t, 3).showers for t in _tasks([part], 512)])
    return _observe(geo, x)


@pytest.fixture(scope="module", params=[("ds2", "electron", 24), ("calogan", "photon", 24)], ids=["ds2", "calogan"])
def engines(request):
    name, particle, n = request.param
    geo = load_geometry(name)
    g4 = simulate(geo, particle, [ENERGY] * n, seed=5, engine="geant4", workers=1)
    return name, _observe(geo, g4.showers), _gflash(geo, particle, 400, {}), _gflash(geo, particle, 400, None)


@pytest.mark.slow
def test_tuned_hit_count_is_closer(engines):
    name, g4, bare, tuned = engines
    # the published spot count leaves too few hit voxels; the fitted spot_scale restores them
    # (Geant4 mean of 24 showers: ±3 %)
    assert abs(np.log(tuned["hits"] / g4["hits"])) < abs(np.log(bare["hits"] / g4["hits"])), (g4, bare, tuned)
    assert abs(tuned["hits"] / g4["hits"] - 1) < 0.15, (g4, tuned)


@pytest.mark.slow
def test_tuned_depth_is_closer(engines):
    name, g4, bare, tuned = engines
    # centre of gravity in layer indices; 3 standard errors of the Geant4 mean + 0.1 layer of fit residual
    tol = 3 * g4["cog_err"] + 0.1
    assert abs(tuned["cog"] - g4["cog"]) < tol, (g4, bare, tuned)
    assert abs(tuned["cog"] - g4["cog"]) <= abs(bare["cog"] - g4["cog"]) + g4["cog_err"], (g4, bare, tuned)


@pytest.mark.slow
def test_tuned_radial_width_is_close(engines):
    name, g4, bare, tuned = engines
    # energy-weighted RMS radius: within 10 % (a 24-shower mean scatters by ~3 %; the published
    # radii are 13 % too wide on calogan at 8 GeV) and no farther than the published one, ±3 %
    assert abs(tuned["r_rms"] / g4["r_rms"] - 1) < 0.10, (g4, bare, tuned)
    assert abs(tuned["r_rms"] - g4["r_rms"]) < abs(bare["r_rms"] - g4["r_rms"]) + 0.03 * g4["r_rms"], (g4, bare, tuned)
