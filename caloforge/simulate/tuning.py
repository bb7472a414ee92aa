"""Per-material corrections of the GFlash parametrisation, fitted to Geant4 showers.

The Grindhammer–Peters numbers (:mod:`caloforge.simulate.em`) describe homogeneous and
generic sampling media; a given sampling structure differs from them in depth, width and
hit occupancy.  The corrections are data: ``caloforge/data/gflash_tuning.json`` holds one
entry per effective :class:`~caloforge.geometry.Material` name, written by
``benchmarks/calibrate_gflash.py`` from Geant4 samples of a geometry made of that material,
with the sample and the fit recorded beside the numbers.  A material without an entry
uses the published parametrisation unchanged (:data:`NEUTRAL`).

Fields (all dimensionless):

* ``ln_T_shift``, ``ln_alpha_shift``: added to the means of ln T and ln α (shower
  maximum and longitudinal shape);
* ``r_core_scale``, ``r_tail_scale``: multiply the core and tail radii;
* ``spot_scale``: multiplies the number of energy spots (and the cap on them): finer
  spatial sampling of the deposit, hence more hit voxels at the shower's edges;
* ``spot_exponent_shift``: added to the exponent of the spot count's energy law
  (``N ∝ E^0.959`` in sampling media), pivoting at :data:`SPOT_PIVOT_MEV` so that it does not
  change the count there (Geant4's hit counts grow more slowly with energy than GFlash's spots);
* ``sampling_fraction_scale``: multiplies the layer's nominal sampling fraction (the
  visible energy; a calibrated file divides by the same product, so its scale is unchanged);
* ``sampling_term_scale``: multiplies the layer's stochastic term.

>>> tuning_for("no-such-material") == NEUTRAL
True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

__all__ = ["GFlashTuning", "NEUTRAL", "TUNING_FILE", "SPOT_PIVOT_MEV", "load_tuning", "tuning_for"]

SPOT_PIVOT_MEV = 1e4  # 10 GeV: the middle of the 1–50 GeV log-uniform calibration samples
TUNING_FILE = Path(__file__).resolve().parent.parent / "data" / "gflash_tuning.json"


@dataclass(frozen=True)
class GFlashTuning:
    ln_T_shift: float = 0.0
    ln_alpha_shift: float = 0.0
    r_core_scale: float = 1.0
    r_tail_scale: float = 1.0
    spot_scale: float = 1.0
    spot_exponent_shift: float = 0.0
    sampling_fraction_scale: float = 1.0
    sampling_term_scale: float = 1.0

    @classmethod
    def from_dict(cls, d: dict) -> "GFlashTuning":
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    def spot_factor(self, energy):
        """Multiplier of the physical spot count for showers of ``energy`` [MeV]."""
        if self.spot_exponent_shift == 0.0:
            return self.spot_scale
        import numpy as np

        e = np.maximum(np.asarray(energy, dtype=float), 1.0)
        return self.spot_scale * (e / SPOT_PIVOT_MEV) ** self.spot_exponent_shift


NEUTRAL = GFlashTuning()


@lru_cache(maxsize=None)
def load_tuning(path: str | None = None) -> dict[str, GFlashTuning]:
    """Material name → tuning, from the JSON table (``{"materials": {name: {field: value, ...}}}``)."""
    p = Path(path) if path else TUNING_FILE
    if not p.exists():
        return {}
    table = json.loads(p.read_text())
    return {name: GFlashTuning.from_dict(entry.get("parameters", entry))
            for name, entry in table.get("materials", {}).items()}


def tuning_for(material: str) -> GFlashTuning:
    return load_tuning().get(material, NEUTRAL)
