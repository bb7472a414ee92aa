"""A small DS1-photon-shaped training file for tests that train (fault, tune): 300 showers of 368
voxels at 1, 8 and 65 GeV, sparse gamma-distributed cells scaled to about a tenth of the incident
energy.  Imported by name (``import toy_data``), like ``toy_family``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caloforge.io import write_showers


def write_toy_ds1(path: Path) -> Path:
    """Write the file to ``path`` (seeded: the same showers every time) and return ``path``."""
    rng = np.random.default_rng(0)
    e = np.repeat([1024.0, 8192.0, 65536.0], 100)
    showers = rng.gamma(0.5, 1.0, (300, 368)) * (rng.random((300, 368)) < 0.4)
    showers *= (0.1 * rng.normal(1.0, 0.2, 300) * e / np.maximum(showers.sum(1), 1e-9))[:, None]
    write_showers(path, e, showers)
    return path
