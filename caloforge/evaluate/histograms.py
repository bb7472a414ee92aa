"""Stage 2 of the evaluation: histograms of every feature over common bins → :class:`FeatureHistogram`.

Two binnings, one per protocol:

* ``calochallenge`` – the official evaluator's fixed bins (:func:`caloforge.evaluate.calochallenge.feature_edges`),
  entries outside the range dropped from the separation power as the official code does;
* ``caloforge`` – pooled equal-count bins over both samples with an explicit zero bin
  (:func:`caloforge.evaluate.metrics.pooled_edges`), under- and overflow counted.

Every histogram carries its separation power and χ²/ndf, inclusive and per incident-energy point
(:class:`EnergyPoints`, made from the reference).  Also here: the voxel-energy spectrum and the
mean longitudinal and radial profiles the plots draw.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from caloforge.evaluate import calochallenge as CC
from caloforge.evaluate import metrics as M
from caloforge.evaluate.result import EnergyPoints, FeatureHistogram, SampleSummary, energy_label
from caloforge.evaluate.scan import VOXEL_SPECTRUM_EDGES
from caloforge.geometry import Geometry

__all__ = ["CONTINUOUS_ENERGY_BINS", "FeatureTable", "EnergyPoints", "energy_points", "feature_histograms", "feature_summary",
           "voxel_spectrum", "mean_profiles"]

# continuous incident-energy spectra are compared in this many log bins
CONTINUOUS_ENERGY_BINS = 6
# name → {"inclusive": stats, "per_energy": {point label: stats}}: the metrics' "features" table
FeatureTable = dict[str, dict[str, Any]]


def _n_bins(n_ref: int, n_gen: int) -> int:
    # enough entries per bin for a meaningful χ² on small samples, CaloChallenge-like 50 on large
    return int(np.clip(round(math.sqrt(min(n_ref, n_gen)) / 2), 8, 50))


def _histogram(name: str, ref: np.ndarray, gen: np.ndarray) -> FeatureHistogram | None:
    """caloforge protocol: bins over both samples (:func:`~caloforge.evaluate.metrics.pooled_edges`)."""
    ref = ref[np.isfinite(ref)]
    gen = gen[np.isfinite(gen)]
    if ref.size < 2 or gen.size < 2:
        return None
    edges = M.pooled_edges(ref, gen, _n_bins(ref.size, gen.size))
    stats = M.compare_feature(ref, gen, bins=edges)
    r, g = np.asarray(stats.pop("counts_reference")), np.asarray(stats.pop("counts_generated"))
    stats.pop("edges")
    stats["binning"] = "pooled"
    return FeatureHistogram(name, edges, r, g, stats)


def _histogram_official(name: str, ref: np.ndarray, gen: np.ndarray, dataset: str, geometry: Geometry,
                        edges: np.ndarray | None = None) -> FeatureHistogram | None:
    """CaloChallenge protocol: the official fixed bins and separation power (entries outside the
    range dropped, as the official code does; their fractions are reported); features the
    official code does not histogram fall back to the caloforge binning."""
    ref = ref[np.isfinite(ref)]
    gen = gen[np.isfinite(gen)]
    if ref.size < 2 or gen.size < 2:
        return None
    if edges is None:
        edges = CC.feature_edges(name, dataset, ref, geometry)
    if edges is None:
        return _histogram(name, ref, gen)
    values_r, values_g = ref, gen
    if name.startswith("sparsity_layer_"):  # the official plot histograms 1 − sparsity
        values_r, values_g = 1.0 - ref, 1.0 - gen
    stats = M.compare_feature(values_r, values_g, bins=edges)
    r, g = np.asarray(stats.pop("counts_reference")), np.asarray(stats.pop("counts_generated"))
    stats.pop("edges")
    stats.update(mean_reference=float(ref.mean()), mean_generated=float(gen.mean()),
                 std_reference=float(ref.std()), std_generated=float(gen.std()))
    stats["separation_power"] = CC.separation_power(values_r, values_g, edges)
    stats["binning"] = "calochallenge"
    stats["official_name"] = CC.official_name(name)
    # what the official histogram drops: a model can hide a tail outside the fixed range
    stats["outside_range_reference"] = float((r[0] + r[-1]) / max(r.sum(), 1.0))
    stats["outside_range_generated"] = float((g[0] + g[-1]) / max(g.sum(), 1.0))
    if values_r is not ref:  # counts of 1 − sparsity → counts of sparsity on the (symmetric) edges, for the plots
        r, g = (np.concatenate([[c[-1]], c[1:-1][::-1], [c[0]]]) for c in (r, g))
    return FeatureHistogram(name, edges, r, g, stats)


def _energy_grouping(ref_e: np.ndarray) -> tuple[np.ndarray, bool]:
    points, discrete = M.energy_points(ref_e, 30)
    if not discrete:
        points, discrete = M.energy_points(ref_e, CONTINUOUS_ENERGY_BINS)
    return points, discrete


def _point_table(points: np.ndarray, discrete: bool, ref_idx: np.ndarray, gen_idx: np.ndarray) -> list[dict[str, Any]]:
    out = []
    n_points = len(points) if discrete else len(points) - 1
    for i in range(n_points):
        # the centre is the key of the metrics' per-point results (the report joins on it)
        centre = M._point_label(points, discrete, i)
        if discrete:
            lo = hi = centre
            label = energy_label(centre)
        else:
            lo, hi = float(points[i]), float(points[i + 1])
            label = f"{energy_label(lo)}-{energy_label(hi)}"
        out.append({"label": label, "energy": centre, "lo": lo, "hi": hi,
                    "n_reference": int(np.sum(ref_idx == i)), "n_generated": int(np.sum(gen_idx == i))})
    return out


def _stats_dict(h: FeatureHistogram | None) -> dict[str, Any] | None:
    return None if h is None else dict(h.stats)


def _stats_dict(h: FeatureHistogram | None) -> dict[str, Any] | None:
    return None if h is None else dict(h.stats)


def feature_summary(table: FeatureTable) -> dict[str, Any]:
    """Mean and largest separation power, median and mean χ²/ndf and the worst feature of a table."""
    sp = {k: v["inclusive"]["separation_power"] for k, v in table.items() if v["inclusive"]}
    c2 = {k: v["inclusive"]["chi2_ndf"] for k, v in table.items() if v["inclusive"]}
    sp_f = {k: v for k, v in sp.items() if v is not None and math.isfinite(v)}
    c2_f = {k: v for k, v in c2.items() if v is not None and math.isfinite(v)}
    worst = max(c2_f, key=c2_f.get) if c2_f else None
    return {
        "n_features": len(table),
        "mean_separation_power": float(np.mean(list(sp_f.values()))) if sp_f else float("nan"),
        "max_separation_power": max(sp_f.values()) if sp_f else float("nan"),
        "median_chi2_ndf": float(np.median(list(c2_f.values()))) if c2_f else float("nan"),
        "mean_chi2_ndf": float(np.mean(list(c2_f.values()))) if c2_f else float("nan"),
        "worst_feature": worst,
        "worst_chi2_ndf": c2_f[worst] if worst else float("nan"),
    }


def energy_points(reference: SampleSummary, generated: SampleSummary) -> EnergyPoints:
    """The incident-energy points of the reference (discrete when it has ≤ 30 distinct energies,
    else :data:`CONTINUOUS_ENERGY_BINS` log bins) and every shower's point in both samples."""
    points, discrete = _energy_grouping(reference.incident_energy)
    ref_idx = M.assign_energy_points(reference.incident_energy, points, discrete)
    gen_idx = M.assign_energy_points(generated.incident_energy, points, discrete)
    return EnergyPoints(_point_table(points, discrete, ref_idx, gen_idx), bool(discrete), ref_idx, gen_idx)


def feature_histograms(reference: SampleSummary, generated: SampleSummary, points: EnergyPoints, geometry: Geometry,
                       *, protocol: str, per_energy: bool = True,
                       advance: Callable[[float], None] = lambda n=1: None
                       ) -> tuple[dict[str, FeatureHistogram], FeatureTable]:
    """Histogram every feature both samples have: the histograms (for the plots) and the
    metrics' feature table (separation power, χ²/ndf … inclusive and per energy point)."""
    official = protocol == "calochallenge"
    dataset = CC.dataset_of(geometry)
    names = [k for k in reference.features if k in generated.features]
    ref_rows, gen_rows = points.rows("reference"), points.rows("generated")  # found once, not once per feature
    hists: dict[str, FeatureHistogram] = {}
    table: FeatureTable = {}
    for name in names:
        r, g = reference.features[name], generated.features[name]
        h = _histogram_official(name, r, g, dataset, geometry) if official else _histogram(name, r, g)
        entry: dict[str, Any] = {"inclusive": _stats_dict(h)}
        if per_energy and h is not None:
            if official:
                # the inclusive fixed bins at every energy (E_tot/E_inc: the official per-energy bins)
                h.per_energy = [_histogram_official(
                    name, r[ri], g[gi], dataset, geometry,
                    CC.per_energy_ratio_edges(dataset, p["energy"]) if name == "E_ratio" else h.edges)
                    for ri, gi, p in zip(ref_rows, gen_rows, points.table)]
            else:
                h.per_energy = [_histogram(name, r[ri], g[gi]) for ri, gi in zip(ref_rows, gen_rows)]
            entry["per_energy"] = {p["label"]: _stats_dict(ph) for p, ph in zip(points.table, h.per_energy)}
        if h is not None:
            hists[name] = h
        table[name] = entry
        advance(1)
    return hists, table


def voxel_spectrum(reference: SampleSummary, generated: SampleSummary) -> FeatureHistogram:
    """Non-zero voxel energies in the fixed bins :data:`~caloforge.evaluate.scan.VOXEL_SPECTRUM_EDGES`.
    Voxels of one shower are correlated, so only the separation power (no χ²) is meaningful."""
    return FeatureHistogram("voxel_energy", VOXEL_SPECTRUM_EDGES, reference.voxel_spectrum, generated.voxel_spectrum,
                            {"separation_power": M.separation_power(reference.voxel_spectrum,
                                                                    generated.voxel_spectrum)})


def mean_profiles(values: np.ndarray, index: np.ndarray, n_points: int) -> np.ndarray:
    """Mean of ``values`` (N, K) over all showers (row 0), then at each of ``n_points`` energy
    points (NaN rows where a point has no shower)."""
    rows = [values.mean(axis=0, dtype=np.float64)]
    for i in range(n_points):
        sel = values[index == i]
        rows.append(sel.mean(axis=0, dtype=np.float64) if len(sel) else np.full(values.shape[1], np.nan))
    return np.vstack(rows)
