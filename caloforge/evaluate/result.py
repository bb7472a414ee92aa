"""What the evaluation stages hand to each other and to the report: plain typed containers.

* :class:`SampleSummary` – one streamed pass over a sample (features, accumulators, no voxels);
* :class:`FeatureHistogram` – one feature's two histograms over common bins, with their distances;
* :class:`EnergyPoints` – the incident-energy points every per-energy comparison groups by;
* :class:`EvaluationResult` – everything :func:`caloforge.evaluate.compare` returns.

This module imports nothing else of :mod:`caloforge.evaluate`, so every stage, plot and report
module can name these types without an import cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from caloforge.geometry import Geometry
from caloforge.io import ShowerData

__all__ = ["FeatureHistogram", "SampleSummary", "EnergyPoints", "EvaluationResult", "ETOT_CHI2_NDF",
           "etot_chi2_ndf", "json_safe", "energy_label"]

# The one name of the total-energy χ²/ndf (E_tot / E_inc, χ² summed over incident-energy points,
# divided by the summed ndf) in flat outputs: the headline, summaries, leaderboards.
ETOT_CHI2_NDF = "etot_chi2_ndf"


@dataclass
class FeatureHistogram:
    """One feature's reference and generated histograms over common bins.

    ``reference`` and ``generated`` are counts with an underflow and an overflow bin
    (length ``len(edges) + 1``, the :func:`caloforge.evaluate.metrics.histogram_counts`
    convention); ``stats`` holds separation power, χ², ndf, χ²/ndf and the means.
    """

    name: str
    edges: np.ndarray
    reference: np.ndarray
    generated: np.ndarray
    stats: dict[str, float]
    per_energy: list["FeatureHistogram | None"] = field(default_factory=list)


@dataclass
class SampleSummary:
    """What one streamed pass over a sample keeps (no voxels)."""

    n: int
    incident_energy: np.ndarray  # (N,)
    features: dict[str, np.ndarray]  # name → (N,) float32
    hl_matrix: np.ndarray | None  # (N, F) high-level feature matrix for FPD/KPD, cls-high, memorisation
    layer_energy: np.ndarray  # (N, n_layers)
    radial: np.ndarray  # (N, n_rbins) energy per ring [MeV]
    voxel_sum: np.ndarray  # (n_voxels,) Σ showers
    voxel_spectrum: np.ndarray  # counts over VOXEL_SPECTRUM_EDGES with under/overflow
    n_zero_voxels: int
    classifier_sample: ShowerData | None = None


@dataclass
class EnergyPoints:
    """Incident-energy points (from the reference) and which rows of each sample fall in each.

    ``table`` rows: ``label``, ``energy`` (the centre, the key of per-point results), ``lo``,
    ``hi``, ``n_reference``, ``n_generated``; ``reference_index`` / ``generated_index`` give
    every shower's point (−1: none)."""

    table: list[dict[str, Any]]
    discrete: bool
    reference_index: np.ndarray
    generated_index: np.ndarray

    def rows(self, which: str) -> list[np.ndarray]:
        """Row indices of ``"reference"`` or ``"generated"`` showers at each point."""
        idx = self.reference_index if which == "reference" else self.generated_index
        return [np.flatnonzero(idx == i) for i in range(len(self.table))]


@dataclass
class EvaluationResult:
    """Everything :func:`caloforge.evaluate.compare` computed: ``metrics`` (JSON-safe) plus plot inputs."""

    geometry: Geometry
    metrics: dict[str, Any]
    features: dict[str, FeatureHistogram]
    energy_points: list[dict[str, Any]]
    mean_shower: dict[str, np.ndarray]  # "reference"/"generated" → (n_voxels,) mean energy per voxel
    longitudinal: dict[str, np.ndarray]  # "reference"/"generated" → (n_points + 1, n_layers); row 0 inclusive
    radial: dict[str, np.ndarray]  # same layout, energy per ring
    radial_edges: np.ndarray
    voxel_spectrum: FeatureHistogram  # non-zero voxel energies, bins VOXEL_SPECTRUM_EDGES
    labels: tuple[str, str] = ("reference", "generated")  # display names of the two samples

    @property
    def headline(self) -> dict[str, Any]:
        """The numbers a summary prints: χ²/ndf of E_tot/E_inc summed over energy points,
        classifier AUC (low-level, ``None`` when not run), FPD and KPD (``None`` when not run),
        and — to read against the published CaloChallenge table — FPD and KPD ×10³, the low- and
        high-level AUCs and the ``protocol`` that produced them (``"calochallenge"``: the
        official definitions; ``"caloforge"``: not comparable with the table)."""
        m = self.metrics
        clf = m.get("classifier") or {}
        auc_low = (clf.get("low") or {}).get("auc")
        auc_high = (clf.get("high") or {}).get("auc")
        fpd = (m.get("fpd") or {}).get("value")
        kpd = (m.get("kpd") or {}).get("value")
        return {
            "protocol": (m.get("protocol") or {}).get("name", "caloforge"),
            ETOT_CHI2_NDF: m["total_energy"]["chi2_ndf"],
            "classifier_auc": auc_low if auc_low is not None else auc_high,
            "fpd": fpd,
            "kpd": kpd,
            "fpd_x1e3": None if fpd is None else 1e3 * fpd,
            "kpd_x1e3": None if kpd is None else 1e3 * kpd,
            "auc_low": auc_low,
            "auc_high": auc_high,
        }


def etot_chi2_ndf(metrics: Mapping[str, Any]) -> float | None:
    """The total-energy χ²/ndf of a ``metrics.json`` (or its headline / a summary row), whichever
    layout wrote it: ``etot_chi2_ndf`` (flat or under ``headline``), ``total_energy.chi2_ndf``,
    or the older flat ``chi2_etot``.  ``None`` when absent.

    >>> etot_chi2_ndf({"total_energy": {"chi2_ndf": 1.5}}), etot_chi2_ndf({"chi2_etot": 2.0})
    (1.5, 2.0)
    """
    for record in (metrics, metrics.get("headline") or {}):
        if record.get(ETOT_CHI2_NDF) is not None:
            return float(record[ETOT_CHI2_NDF])
    total = metrics.get("total_energy")
    if isinstance(total, Mapping) and total.get("chi2_ndf") is not None:
        return float(total["chi2_ndf"])
    return None if metrics.get("chi2_etot") is None else float(metrics["chi2_etot"])


def json_safe(obj: Any) -> Any:
    """Nested dicts/lists of numbers → plain Python, NaN/inf → None (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def energy_label(mev: float) -> str:
    """An incident energy as the reports print it.

    >>> energy_label(256.0), energy_label(65536.0), energy_label(4.2e6)
    ('256MeV', '65.54GeV', '4.2TeV')
    """
    for unit, scale in (("TeV", 1e6), ("GeV", 1e3)):
        if abs(mev) >= scale:
            return f"{mev / scale:.4g}{unit}"
    return f"{mev:.4g}MeV"
