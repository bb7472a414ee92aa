"""Stage 3 of the evaluation: distances between the two samples beyond single histograms.

* :func:`total_energy` – χ² of E_tot / E_inc summed over incident-energy points (CaloShowerGAN);
* :func:`fpd_kpd` – Fréchet and kernel physics distances on the high-level feature matrix;
* :func:`memorisation` – the CaloGAN nearest-training-shower check.

The per-feature separation powers and χ² are made with the histograms
(:mod:`caloforge.evaluate.histograms`); the classifier two-sample test is
:func:`caloforge.evaluate.classifier.classifier_metrics`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from caloforge.evaluate import calochallenge as CC
from caloforge.evaluate import metrics as M
from caloforge.evaluate.histograms import CONTINUOUS_ENERGY_BINS
from caloforge.evaluate.result import SampleSummary, energy_label

__all__ = ["MEMORISATION_MAX", "total_energy", "fpd_kpd", "memorisation"]

# memorisation check: generated / reference showers compared with at most this many training showers
MEMORISATION_MAX = 5_000


def total_energy(ref: SampleSummary, gen: SampleSummary, discrete: bool) -> dict[str, Any]:
    """χ² of E_tot / E_inc summed over the incident-energy points (CaloShowerGAN), its ndf,
    χ²/ndf (:data:`~caloforge.evaluate.result.ETOT_CHI2_NDF` in the headline) and every point's share."""
    ref_t = ref.layer_energy.sum(axis=1, dtype=np.float64)
    gen_t = gen.layer_energy.sum(axis=1, dtype=np.float64)
    # the same energy points as the feature tables (histograms.energy_points)
    per_point = M.total_energy_chi2_per_point(ref.incident_energy, ref_t, gen.incident_energy, gen_t,
                                              max_points=30 if discrete else CONTINUOUS_ENERGY_BINS)
    chi2 = float(sum(c for c, _ in per_point.values())) if per_point else float("inf")
    ndf = int(sum(n for _, n in per_point.values()))
    return {
        "chi2": chi2,
        "ndf": ndf,
        "chi2_ndf": chi2 / ndf if ndf else float("nan"),
        "per_point": [{"energy": e, "label": energy_label(e), "chi2": c, "ndf": n,
                       "chi2_ndf": c / n if n else float("nan")} for e, (c, n) in sorted(per_point.items())],
    }


def fpd_kpd(ref: SampleSummary, gen: SampleSummary, seed: int, official: bool = False) -> dict[str, Any]:
    """FPD and KPD on the high-level feature matrices (the official JetNet settings under the
    CaloChallenge protocol), with their errors and ×10³ values."""
    out: dict[str, Any] = {}
    fpd = M.fpd(ref.hl_matrix, gen.hl_matrix, seed=seed, **(CC.FPD_SETTINGS if official else {}))
    kpd = M.kpd(ref.hl_matrix, gen.hl_matrix, seed=seed, **(CC.KPD_SETTINGS if official else {}))
    for name, (value, error) in (("fpd", fpd), ("kpd", kpd)):
        out[name] = {"value": float(value), "error": float(error), "value_x1e3": 1e3 * float(value),
                     "error_x1e3": 1e3 * float(error)}
    return out


def memorisation(training: SampleSummary, ref: SampleSummary, gen: SampleSummary, seed: int) -> dict[str, Any]:
    """CaloGAN nearest-neighbour check on the standardised high-level features (cheap for any
    voxel count): generated → closest training shower vs. independent reference → closest
    training shower, on random subsamples."""
    rng = np.random.default_rng(seed + 7)

    def sub(x: np.ndarray, k: int) -> np.ndarray:
        return x[np.sort(rng.choice(len(x), size=min(k, len(x)), replace=False))]

    train = sub(training.hl_matrix, 4 * MEMORISATION_MAX)
    t, g = M.standardise(train, sub(gen.hl_matrix, MEMORISATION_MAX))
    _, r = M.standardise(train, sub(ref.hl_matrix, MEMORISATION_MAX))
    res = M.memorisation(t, g, r)
    out = {k: v for k, v in res.items() if np.isscalar(v)}
    out.update(n_training=len(t), n_generated=len(g), n_reference=len(r), space="standardised high-level features")
    return out
