"""Distances between a reference and a generated sample of showers.

Everything here is a pure function of arrays:

* histogram metrics — :func:`common_bins`, :func:`histogram_counts`,
  :func:`separation_power` (CaloChallenge), :func:`histogram_chi2`,
  :func:`compare_feature` (both, inclusive);
* the CaloShowerGAN checkpoint metric :func:`total_energy_chi2` (χ² of
  ``E_tot / E_inc`` summed over incident-energy points) and
  :func:`total_energy_chi2_per_point`;
* :func:`energy_points` / :func:`assign_energy_points`, the incident-energy grouping
  used for every per-energy comparison;
* FPD and KPD with the JetNet definitions (:func:`fpd`, :func:`kpd`) and
  :func:`standardise` (CaloChallenge's reference scaling);
* :func:`memorisation`, the CaloGAN nearest-neighbour check.

Histograms always carry an underflow and an overflow bin (see
:func:`histogram_counts`), so generated values outside the reference range are
penalised instead of silently dropped.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from caloforge.errors import DataError

__all__ = [
    "common_bins",
    "histogram_counts",
    "separation_power",
    "histogram_chi2",
    "compare_feature",
    "energy_points",
    "assign_energy_points",
    "total_energy_chi2",
    "total_energy_chi2_per_point",
    "standardise",
    "frechet_distance",
    "fpd",
    "mmd_poly_unbiased",
    "kpd",
    "memorisation",
]

Binning = Literal["auto", "linear", "log", "quantile"]


# ----------------------------------------------------------------------------------
# binning and histograms
# ----------------------------------------------------------------------------------
def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def common_bins(reference: np.ndarray, n_bins: int = 30, mode: Binning = "auto") -> np.ndarray:
    """Bin edges for comparing samples, made from the reference alone.

    ``mode``: ``"linear"`` spans [min, max] of the reference; ``"log"`` spans the
    positive reference values log-uniformly (zeros and negatives fall into the
    underflow bin of :func:`histogram_counts`); ``"quantile"`` puts equal reference
    counts into each bin (ties merged); ``"auto"`` picks ``"log"`` for positive
    values spanning more than two decades (energies), else ``"linear"``.

    Always returns at least two strictly increasing finite edges.

    >>> common_bins(np.array([0.0, 1.0, 2.0]), n_bins=2)
    array([0., 1., 2.])
    >>> common_bins(np.array([1.0, 10.0, 1000.0]), n_bins=3)
    array([   1.,   10.,  100., 1000.])
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    ref = _finite(reference)
    if ref.size == 0:
        return np.array([0.0, 1.0])
    if mode == "auto":
        pos = ref[ref > 0]
        mode = "log" if pos.size and pos.size >= 0.5 * ref.size and pos.max() > 100 * pos.min() else "linear"
    if mode == "log":
        pos = ref[ref > 0]
        if pos.size == 0:
            mode = "linear"
        else:
            lo, hi = np.log10(pos.min()), np.log10(pos.max())
            edges = np.logspace(lo, hi, n_bins + 1) if hi > lo else np.array([])
    if mode == "quantile":
        edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, n_bins + 1)))
    elif mode == "linear":
        lo, hi = ref.min(), ref.max()
        edges = np.linspace(lo, hi, n_bins + 1) if hi > lo else np.array([])
    elif mode != "log":
        raise ValueError(f"unknown binning mode {mode!r}")
    if edges.size < 2:  # degenerate reference (a single value): one narrow bin around it
        v = float(ref[ref > 0].min()) if mode == "log" else float(ref.min())
        half = max(abs(v) * 1e-6, 1e-12)
        edges = np.array([v - half, v + half])
    return edges


def histogram_counts(values: np.ndarray, edges: np.ndarray, *, flow: bool = True) -> np.ndarray:
    """Counts of ``values`` in ``edges``; with ``flow`` an underflow bin is prepended and
    an overflow bin appended (length ``len(edges) + 1``).  Non-finite values are ignored.

    >>> histogram_counts(np.array([-1.0, 0.5, 0.5, 3.0]), np.array([0.0, 1.0, 2.0]))
    array([1., 2., 0., 1.])
    """
    v = _finite(values)
    edges = np.asarray(edges, dtype=np.float64)
    if flow:
        edges = np.concatenate([[-np.inf], edges, [np.inf]])
        # np.histogram puts the right edge into the last finite bin; keep that for
        # the real last bin and let only strictly larger values overflow.
        idx = np.searchsorted(edges, v, side="right") - 1
        idx = np.where(v == edges[-2], len(edges) - 3, idx)
        return np.bincount(idx, minlength=len(edges) - 1).astype(np.float64)
    return np.histogram(v, bins=edges)[0].astype(np.float64)


def separation_power(p: np.ndarray, q: np.ndarray) -> float:
    """CaloChallenge separation power ½ Σ (p−q)²/(p+q) of two histograms.

    ``p`` and ``q`` are bin counts (or densities times bin widths) over the same bins;
    each is normalised to unit sum first.  0 for identical shapes, 1 for disjoint
    ones.

    >>> separation_power(np.array([1, 2, 3]), np.array([2, 4, 6]))
    0.0
    >>> separation_power(np.array([1, 0]), np.array([0, 5]))
    1.0
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in shape: {p.shape} vs {q.shape}")
    sp, sq = p.sum(), q.sum()
    if sp <= 0 or sq <= 0:
        return float("nan")
    p, q = p / sp, q / sq
    s = p + q
    nz = s > 0
    return float(0.5 * np.sum((p[nz] - q[nz]) ** 2 / s[nz]))


def _chi2_counts(r: np.ndarray, g: np.ndarray) -> tuple[float, int]:
    """χ² of generated counts ``g`` scaled to the reference total against ``r``.

    σ² is Poisson for both (the generated one scaled by the normalisation squared);
    ndf = non-empty bins − 1 because the normalisation is fixed by the data.
    """
    n_r, n_g = r.sum(), g.sum()
    if n_r <= 0 or n_g <= 0:
        return float("nan"), 0
    scale = n_r / n_g
    var = r + g * scale**2
    nz = var > 0
    chi2 = float(np.sum((r[nz] - g[nz] * scale) ** 2 / var[nz]))
    return chi2, max(int(nz.sum()) - 1, 0)


def histogram_chi2(reference: np.ndarray, generated: np.ndarray, bins: np.ndarray | int = 30,
                   *, flow: bool = True) -> tuple[float, int]:
    """χ² and degrees of freedom between two samples histogrammed in common bins.

    ``bins``: edges, or a number of bins for :func:`common_bins` on the reference.
    The generated histogram is normalised to the reference count; bins empty in both
    are skipped; ndf = used bins − 1.  Two identical samples give (0, ndf).

    >>> x = np.arange(100.0)
    >>> histogram_chi2(x, x, 5)
    (0.0, 4)
    """
    reference = _finite(reference)
    generated = _finite(generated)
    edges = common_bins(reference, bins) if np.isscalar(bins) else np.asarray(bins, dtype=np.float64)
    return _chi2_counts(histogram_counts(reference, edges, flow=flow), histogram_counts(generated, edges, flow=flow))


def compare_feature(reference: np.ndarray, generated: np.ndarray, *, bins: np.ndarray | int = 30,
                    mode: Binning = "auto") -> dict[str, float]:
    """Inclusive comparison of one feature: separation power, χ², ndf, χ²/ndf, means.

    Returns a dict with stable keys ``separation_power, chi2, ndf, chi2_ndf,
    mean_reference, mean_generated, std_reference, std_generated, n_reference,
    n_generated`` and the ``edges`` used (as a list, for plotting/JSON).

    >>> d = compare_feature(np.arange(50.0), np.arange(50.0), bins=5)
    >>> d["separation_power"], d["chi2"], d["ndf"]
    (0.0, 0.0, 4)
    """
    ref = _finite(reference)
    gen = _finite(generated)
    edges = common_bins(ref, bins, mode) if np.isscalar(bins) else np.asarray(bins, dtype=np.float64)
    r = histogram_counts(ref, edges)
    g = histogram_counts(gen, edges)
    chi2, ndf = _chi2_counts(r, g)
    return {
        "separation_power": separation_power(r, g) if r.sum() and g.sum() else float("nan"),
        "chi2": chi2,
        "ndf": ndf,
        "chi2_ndf": chi2 / ndf if ndf else float("nan"),
        "mean_reference": float(ref.mean()) if ref.size else float("nan"),
        "mean_generated": float(gen.mean()) if gen.size else float("nan"),
        "std_reference": float(ref.std()) if ref.size else float("nan"),
        "std_generated": float(gen.std()) if gen.size else float("nan"),
        "n_reference": int(ref.size),
        "n_generated": int(gen.size),
        "edges": edges.tolist(),
    }


# ----------------------------------------------------------------------------------
# incident-energy points
# ----------------------------------------------------------------------------------
def energy_points(incident_energy: np.ndarray, max_points: int = 30) -> tuple[np.ndarray, bool]:
    """Incident-energy grouping of a sample.

    Returns ``(values, discrete)``: the distinct energies (sorted) and ``True`` when a
    sample has at most ``max_points`` of them (e.g. DS1's 15 discrete energies);
    otherwise ``max_points + 1`` log-spaced bin edges spanning the sample and ``False``.

    >>> energy_points(np.array([1.0, 2.0, 2.0, 4.0]))
    (array([1., 2., 4.]), True)
    """
    e = _finite(incident_energy)
    if e.size == 0:
        raise DataError("incident energies: no finite values")
    distinct = np.unique(e)
    # energies written as float32 differ in the last bits; merge near-equal values
    keep = np.concatenate([[True], np.diff(distinct) > 1e-6 * np.abs(distinct[1:])])
    distinct = distinct[keep]
    if distinct.size <= max_points:
        return distinct, True
    lo, hi = distinct[0], distinct[-1]
    if lo > 0:
        edges = np.logspace(np.log10(lo), np.log10(hi), max_points + 1)
    else:
        edges = np.linspace(lo, hi, max_points + 1)
    return edges, False


def assign_energy_points(incident_energy: np.ndarray, points: np.ndarray, discrete: bool) -> np.ndarray:
    """Index of the energy point of every shower; -1 where none matches.

    Discrete points match within a relative 1e-4; binned points use the edges (the
    last bin closed), values outside the range get -1.
    """
    e = np.asarray(incident_energy, dtype=np.float64).ravel()
    if discrete:
        idx = np.clip(np.searchsorted(points, e), 0, len(points) - 1)
        left = np.clip(idx - 1, 0, len(points) - 1)
        nearer_left = np.abs(points[left] - e) < np.abs(points[idx] - e)
        idx = np.where(nearer_left, left, idx)
        ok = np.abs(points[idx] - e) <= 1e-4 * np.maximum(np.abs(points[idx]), 1e-12)
        return np.where(ok, idx, -1)
    idx = np.searchsorted(points, e, side="right") - 1
    idx = np.where(e == points[-1], len(points) - 2, idx)
    return np.where((idx >= 0) & (idx < len(points) - 1), idx, -1)


def _point_label(points: np.ndarray, discrete: bool, i: int) -> float:
    # binned points are labelled by their geometric (log) centre
    return float(points[i]) if discrete else float(math.sqrt(points[i] * points[i + 1]) if points[i] > 0
                                                    else 0.5 * (points[i] + points[i + 1]))


def total_energy_chi2_per_point(reference_incident: np.ndarray, reference_etot: np.ndarray,
                                generated_incident: np.ndarray, generated_etot: np.ndarray, *,
                                n_bins: int = 30, max_points: int = 30,
                                binning: Literal["quantile", "linear"] = "quantile",
                                ) -> dict[float, tuple[float, int]]:
    """χ² and ndf of the ``E_tot / E_inc`` distributions at every incident-energy point.

    Points come from the reference (:func:`energy_points`).  At each point the ratio
    is histogrammed in ``n_bins`` bins made from the reference (``"quantile"``: equal
    reference counts per bin, or ``"linear"`` over its range) plus under/overflow
    bins; the generated histogram is normalised to the reference count and
    χ² = Σ (r−g)²/(σ_r²+σ_g²) over non-empty bins.  Points where either sample has
    fewer than 2 showers are left out.  Keys are the point energies (MeV; the
    geometric bin centre for binned energies).
    """
    ref_e = np.asarray(reference_incident, dtype=np.float64).ravel()
    gen_e = np.asarray(generated_incident, dtype=np.float64).ravel()
    ref_t = np.asarray(reference_etot, dtype=np.float64).ravel()
    gen_t = np.asarray(generated_etot, dtype=np.float64).ravel()
    if ref_e.shape != ref_t.shape or gen_e.shape != gen_t.shape:
        raise DataError("total_energy_chi2: incident and total energy arrays differ in length")
    points, discrete = energy_points(ref_e, max_points)
    ref_idx = assign_energy_points(ref_e, points, discrete)
    gen_idx = assign_energy_points(gen_e, points, discrete)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref_ratio = ref_t / ref_e
        gen_ratio = gen_t / gen_e
    out: dict[float, tuple[float, int]] = {}
    n_points = len(points) if discrete else len(points) - 1
    for i in range(n_points):
        r = _finite(ref_ratio[ref_idx == i])
        g = _finite(gen_ratio[gen_idx == i])
        if r.size < 2 or g.size < 2:
            continue
        edges = common_bins(r, n_bins, binning)
        out[_point_label(points, discrete, i)] = _chi2_counts(histogram_counts(r, edges), histogram_counts(g, edges))
    return out


def total_energy_chi2(reference_incident: np.ndarray, reference_etot: np.ndarray,
                      generated_incident: np.ndarray, generated_etot: np.ndarray, *,
                      n_bins: int = 30, max_points: int = 30,
                      binning: Literal["quantile", "linear"] = "quantile") -> float:
    """The CaloShowerGAN checkpoint metric: Σ over incident-energy points of the χ² of
    ``E_tot / E_inc`` (see :func:`total_energy_chi2_per_point`).  Lower is better;
    0 for identical samples; ``inf`` if no point has showers in both samples.

    >>> rng = np.random.default_rng(0)
    >>> e = np.repeat([1e3, 1e4], 500)
    >>> t = e * rng.normal(0.9, 0.02, e.size)
    >>> total_energy_chi2(e, t, e, t)
    0.0
    >>> total_energy_chi2(e, t, e, 1.1 * t) > 1000
    True
    """
    per_point = total_energy_chi2_per_point(reference_incident, reference_etot, generated_incident,
                                            generated_etot, n_bins=n_bins, max_points=max_points,
                                            binning=binning)
    if not per_point:
        return float("inf")
    return float(sum(chi2 for chi2, _ in per_point.values()))
