"""Distances between a reference and a generated sample of showers.

Everything here is a pure function of arrays:

* histogram metrics — :func:`common_bins`, :func:`histogram_counts`,
  :func:`separation_power` (CaloChallenge), :func:`histogram_chi2`,
  :func:`compare_feature` (both, inclusive) and :func:`compare_feature_per_energy`;
* the CaloShowerGAN checkpoint metric :func:`total_energy_chi2` (χ² of
  ``E_tot / E_inc`` summed over incident-energy points) and
  :func:`total_energy_chi2_per_point`;
* :func:`energy_points` / :func:`assign_energy_points`, the incident-energy grouping
  used for every per-energy comparison;
* FPD and KPD with JetNet's definitions (:func:`fpd`, :func:`kpd`): features divided
  by the reference's largest |x|, batches drawn with replacement, a degree-4 KPD
  kernel; the CaloChallenge protocol uses JetNet's official ``min_samples`` /
  ``batch_size`` (:mod:`caloforge.evaluate.calochallenge`);
* :func:`standardise`, the feature scaling of the memorisation check;
* :func:`memorisation`, the CaloGAN nearest-neighbour check.

Histograms always carry an underflow and an overflow bin (see
:func:`histogram_counts`), so generated values outside the reference range are
penalised instead of silently dropped.
"""

from __future__ import annotations

import math
from typing import Iterator, Literal

import numpy as np

from caloforge.errors import DataError

__all__ = [
    "common_bins",
    "reference_edges",
    "pooled_edges",
    "histogram_counts",
    "separation_power",
    "histogram_chi2",
    "compare_feature",
    "compare_feature_per_energy",
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
    counts into each bin (ties merged); ``"auto"`` picks ``"log"`` for non-negative
    values whose positive part spans more than two decades (energies), else
    ``"linear"``.

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
        mode = "log" if ref.min() >= 0 and pos.size and pos.max() > 100 * pos.min() else "linear"
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


def reference_edges(reference: np.ndarray, n_bins: int) -> np.ndarray:
    """The evaluator's binning before pooled bins (kept for comparison): edges from the
    reference alone — one bin per value for small integer ranges, log bins over the central
    99.8 % of the positive values when they span more than two decades and make up half the
    sample, else linear bins over the reference's central 99.8 %.  Zeros share a bin with the
    smallest values, and a generated tail beyond the reference lands in one overflow bin."""
    ref = _finite(reference)
    lo, hi = float(ref.min()), float(ref.max())
    if hi > lo and hi - lo <= 2 * n_bins and np.all(ref == np.round(ref)):
        return np.arange(lo - 0.5, hi + 1.0, 1.0)
    pos = ref[ref > 0]
    if lo >= 0 and pos.size >= 0.5 * ref.size:
        p_lo, p1, p99, p_hi = np.quantile(pos, [0.001, 0.01, 0.99, 0.999])
        if p1 > 0 and p99 > 100 * p1 and p_hi > p_lo:
            return np.logspace(np.log10(p_lo), np.log10(p_hi), n_bins + 1)
    q_lo, q_hi = np.quantile(ref, [0.001, 0.999])
    if q_hi > q_lo:
        return np.linspace(q_lo, q_hi, n_bins + 1)
    return common_bins(ref, n_bins, "linear")


# a feature with at least this fraction of exact zeros (empty layers, sparsity …) gets a bin of its own for them
ZERO_BIN_FRACTION = 0.01


def pooled_edges(reference: np.ndarray, generated: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges that cannot hide a tail or a wrong fraction of zeros: equal-count bins of the
    *pooled* sample (so both samples' ranges and tails are binned, not lumped into an overflow
    bin or squeezed into a wide reference bin), one bin per value for small integer ranges, and
    when ≥ 1 % of the pooled values are exactly 0 an explicit bin that holds only the zeros.

    >>> e = pooled_edges(np.array([0.0, 0.0, 1.0, 2.0, 3.0]), np.array([0.0, 2.5, 7.5, 9.0]), 4)
    >>> e[:2].tolist(), float(e[-1])  # [-0.5, 0.5) holds only the zeros; the top covers 9
    ([-0.5, 0.5], 9.0)
    """
    x = np.concatenate([_finite(reference), _finite(generated)])
    if x.size == 0:
        return np.array([0.0, 1.0])
    lo, hi = float(x.min()), float(x.max())
    if hi > lo and hi - lo <= 2 * n_bins and np.all(x == np.round(x)):
        return np.arange(lo - 0.5, hi + 1.0, 1.0)
    nonzero = x[x != 0]
    zero_bin = nonzero.size < x.size and (x.size - nonzero.size) >= ZERO_BIN_FRACTION * x.size
    body = nonzero if zero_bin and nonzero.size else x
    levels = np.linspace(0.0, 1.0, max(n_bins - int(zero_bin), 1) + 1)
    # finer bins in both tails (down to 0.1 % of the pooled sample, ≥ 10 entries each), so a tail
    # that is wrong in shape or position gets bins of its own instead of sharing one with the bulk
    tails = np.array([q for q in (0.001, 0.003, 0.01) if q * body.size >= 10])
    levels = np.concatenate([levels, tails, 1.0 - tails])
    edges = np.quantile(body, np.sort(levels))
    # each sample's own range ends at an edge, so values beyond the other sample's range get bins
    # of their own (never shared with, and averaged against, the other sample's extremes)
    r, g = _finite(reference), _finite(generated)
    ends = [np.nextafter(v.max(), np.inf) for v in (r, g) if v.size] + [np.nextafter(v.min(), -np.inf) for v in (r, g)
                                                                          if v.size]
    edges = np.unique(np.concatenate([edges, [e for e in ends if e < edges[-1] and e > edges[0]]]))
    if zero_bin and nonzero.size:
        half = 0.5 * float(np.abs(nonzero).min())  # no non-zero value lies within ±half of 0
        edges = np.unique(np.concatenate([edges[np.abs(edges) > half], [-half, half]]))
    elif zero_bin:  # all zeros
        edges = np.array([-0.5, 0.5])
    if edges.size < 2:
        edges = common_bins(x, n_bins, "linear")
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
    n_generated``, the ``edges`` used and the histograms ``counts_reference`` and
    ``counts_generated`` (:func:`histogram_counts`, with flow bins) as lists, for
    plotting/JSON.

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
        "separation_power": separation_power(r, g),  # NaN when either histogram is empty
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
        "counts_reference": r.tolist(),
        "counts_generated": g.tolist(),
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
    # logspace's end point can round below the largest energy; pin it exactly
    edges[0], edges[-1] = lo, hi
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


def _check_pair(values: np.ndarray, incident: np.ndarray, what: str) -> None:
    if values.shape != incident.shape:
        raise DataError(f"{what}: {values.size} values but {incident.size} incident energies")


def _split_by_energy(reference: np.ndarray, reference_incident: np.ndarray, generated: np.ndarray,
                     generated_incident: np.ndarray, max_points: int, min_count: int, what: str
                     ) -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
    """``(point label, finite reference values, finite generated values)`` at every
    incident-energy point of the reference (:func:`energy_points`) where both samples
    have at least ``min_count`` finite values."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    gen = np.asarray(generated, dtype=np.float64).ravel()
    ref_e = np.asarray(reference_incident, dtype=np.float64).ravel()
    gen_e = np.asarray(generated_incident, dtype=np.float64).ravel()
    _check_pair(ref, ref_e, what)
    _check_pair(gen, gen_e, what)
    points, discrete = energy_points(ref_e, max_points)
    ref_idx = assign_energy_points(ref_e, points, discrete)
    gen_idx = assign_energy_points(gen_e, points, discrete)
    for i in range(len(points) if discrete else len(points) - 1):
        r, g = _finite(ref[ref_idx == i]), _finite(gen[gen_idx == i])
        if r.size >= min_count and g.size >= min_count:
            yield _point_label(points, discrete, i), r, g


def compare_feature_per_energy(reference: np.ndarray, reference_incident: np.ndarray,
                               generated: np.ndarray, generated_incident: np.ndarray, *,
                               n_bins: int = 30, mode: Binning = "auto", max_points: int = 30,
                               min_count: int = 2) -> dict[float, dict[str, float]]:
    """:func:`compare_feature` at every incident-energy point of the reference
    (:func:`energy_points`), with bins made from that point's reference values.

    Keys are the point energies (geometric bin centre for binned energies); points
    where either sample has fewer than ``min_count`` finite values are left out.

    >>> e = np.repeat([1e3, 1e4], 100)
    >>> x = np.tile(np.arange(100.0), 2)
    >>> sorted(compare_feature_per_energy(x, e, x, e, n_bins=5))
    [1000.0, 10000.0]
    """
    return {label: compare_feature(r, g, bins=n_bins, mode=mode)
            for label, r, g in _split_by_energy(reference, reference_incident, generated, generated_incident,
                                                max_points, min_count, "compare_feature_per_energy")}


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
    what = "total_energy_chi2"
    _check_pair(ref_t, ref_e, what)
    _check_pair(gen_t, gen_e, what)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref_ratio, gen_ratio = ref_t / ref_e, gen_t / gen_e
    out: dict[float, tuple[float, int]] = {}
    for label, r, g in _split_by_energy(ref_ratio, ref_e, gen_ratio, gen_e, max_points, 2, what):
        edges = common_bins(r, n_bins, binning)
        out[label] = _chi2_counts(histogram_counts(r, edges), histogram_counts(g, edges))
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


# ----------------------------------------------------------------------------------
# FPD / KPD (JetNet definitions)
# ----------------------------------------------------------------------------------
def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise DataError(f"{what}: expected a (n_samples, n_features) array, got shape {x.shape}")
    return x


def standardise(reference: np.ndarray, generated: np.ndarray | None = None,
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale features by the reference: subtract its mean, divide by its standard
    deviation (features constant in the reference are only shifted).  Non-finite
    entries become 0 after scaling, i.e. the reference mean.

    >>> r, g = standardise(np.array([[0.0, 5.0], [2.0, 5.0]]), np.array([[4.0, 6.0]]))
    >>> r.tolist(), g.tolist()
    ([[-1.0, 0.0], [1.0, 0.0]], [[3.0, 1.0]])
    """
    ref = _as_matrix(reference, "reference features")
    with np.errstate(invalid="ignore"):
        finite = np.where(np.isfinite(ref), ref, np.nan)
        mean = np.nan_to_num(np.nanmean(finite, axis=0)) if ref.size else np.zeros(ref.shape[1])
        std = np.nan_to_num(np.nanstd(finite, axis=0)) if ref.size else np.ones(ref.shape[1])
    std = np.where(std > 0, std, 1.0)

    def scale(x: np.ndarray) -> np.ndarray:
        out = (x - mean) / std
        return np.where(np.isfinite(out), out, 0.0)

    gen = None if generated is None else scale(_as_matrix(generated, "generated features"))
    return scale(ref), gen


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance ‖μ₁−μ₂‖² + Tr(C₁ + C₂ − 2 (C₁ C₂)^½) between two Gaussians.

    Tr (C₁C₂)^½ is computed as Σ √λ of the symmetric matrix C₁^½ C₂ C₁^½ (same
    eigenvalues), which is stable for near-singular covariances.

    >>> frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2))
    2.0
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)
    w, v = np.linalg.eigh(cov1)
    sqrt1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(sqrt1 @ cov2 @ sqrt1)
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean)


def _prepare_pair(reference: np.ndarray, generated: np.ndarray, normalise: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    x = _as_matrix(reference, "reference features")
    y = _as_matrix(generated, "generated features")
    if x.shape[1] != y.shape[1]:
        raise DataError(f"reference has {x.shape[1]} features, generated {y.shape[1]}")
    x, y = np.nan_to_num(x), np.nan_to_num(y)
    if normalise:
        x, y = max_abs_scale(x, y)
    return x, y


def max_abs_scale(reference: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """JetNet's FPD/KPD normalisation: divide every feature by its largest absolute value
    in the reference (features that are 0 throughout are left alone).

    >>> r, g = max_abs_scale(np.array([[2.0, 0.0], [-4.0, 0.0]]), np.array([[8.0, 1.0]]))
    >>> r.tolist(), g.tolist()
    ([[0.5, 0.0], [-1.0, 0.0]], [[2.0, 1.0]])
    """
    scale = np.max(np.abs(reference), axis=0) if len(reference) else np.ones(reference.shape[1])
    scale = np.where(scale > 0, scale, 1.0)
    return reference / scale, generated / scale


def fpd(reference: np.ndarray, generated: np.ndarray, *, min_samples: int = 20_000,
        max_samples: int = 50_000, num_batches: int = 20, num_points: int = 10,
        normalise: bool = True, seed: int = 42) -> tuple[float, float]:
    """Fréchet physics distance with the JetNet definition (arXiv:2211.10295) and its uncertainty.

    Features are divided by their largest absolute value in the reference
    (:func:`max_abs_scale`, ``normalise``).  The Fréchet distance is averaged over
    ``num_batches`` batches drawn with replacement for ``num_points`` batch sizes N
    evenly spaced in 1/N between ``min_samples`` and ``max_samples``; a straight line in
    1/N (intercept and slope ≥ 0) extrapolates it to N → ∞.  Returns (intercept, its fit
    error).  For samples of ≥ 50k showers this is JetNet's computation; smaller samples
    cap the batch sizes at the smaller sample (``min_samples`` at half of that), with a
    larger bias error.

    >>> rng = np.random.default_rng(1)
    >>> a, b = rng.normal(size=(4000, 3)), rng.normal(size=(4000, 3))
    >>> value, error = fpd(a, b, min_samples=500, max_samples=2000)
    >>> value < 5 * error + 1e-3
    True
    >>> shifted, _ = fpd(a, b + 1.0, min_samples=500, max_samples=2000)
    >>> shifted > 100 * max(value, error)
    True
    """
    from scipy.optimize import curve_fit

    x, y = _prepare_pair(reference, generated, normalise)
    n_max = min(max_samples, len(x), len(y))
    n_min = min(min_samples, n_max // 2)
    if n_min < x.shape[1] + 2:
        raise DataError(f"FPD needs at least {2 * (x.shape[1] + 2)} showers per sample for "
                        f"{x.shape[1]} features, got {min(len(x), len(y))}")
    sizes = np.unique((1.0 / np.linspace(1.0 / n_min, 1.0 / n_max, num_points)).astype(np.int64))
    rng = np.random.default_rng(seed)
    values = []
    for n in sizes:
        batch = []
        for _ in range(num_batches):
            a = x[rng.choice(len(x), size=n)]  # with replacement, as JetNet
            b = y[rng.choice(len(y), size=n)]
            batch.append(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))
        values.append(np.mean(batch))
    inv = 1.0 / sizes.astype(np.float64)
    params, cov = curve_fit(lambda t, c, s: c + s * t, inv, np.asarray(values),
                            p0=[max(min(values), 0.0), 0.0], bounds=([0.0, 0.0], [np.inf, np.inf]))
    return float(params[0]), float(np.sqrt(max(cov[0, 0], 0.0)))


def _kernel_sum(a: np.ndarray, b: np.ndarray, degree: int, gamma: float, coef0: float,
                chunk: int) -> float:
    """Σ_ij k(a_i, b_j) for k = (γ a·b + c)^degree, computed in row chunks."""
    total = 0.0
    for i in range(0, len(a), chunk):
        base = a[i:i + chunk] @ b.T
        base *= gamma
        base += coef0
        total += float(_int_power(base, degree).sum())
    return total


def _int_power(base: np.ndarray, degree: int) -> np.ndarray:
    # repeated multiplication: np.power with an integer exponent is several times slower
    if degree == 1:
        return base
    out = base * base
    for _ in range(degree - 2):
        out *= base
    return out


def mmd_poly_unbiased(x: np.ndarray, y: np.ndarray, *, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0, chunk: int = 1024) -> float:
    """Unbiased MMD² with the polynomial kernel k(a, b) = (γ a·b + c)^degree
    (γ = 1 / n_features by default, as in KID/KPD), in row chunks to bound memory.

    >>> a = np.random.default_rng(0).normal(size=(300, 2))
    >>> abs(mmd_poly_unbiased(a[:150], a[150:])) < 0.05
    True
    """
    x = _as_matrix(x, "x")
    y = _as_matrix(y, "y")
    m, n = len(x), len(y)
    if degree < 1:
        raise ValueError(f"kernel degree must be >= 1, got {degree}")
    if m < 2 or n < 2:
        raise DataError("MMD needs at least two samples on each side")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    diag_x = float(_int_power(np.einsum("ij,ij->i", x, x) * g + coef0, degree).sum())
    diag_y = float(_int_power(np.einsum("ij,ij->i", y, y) * g + coef0, degree).sum())
    kxx = (_kernel_sum(x, x, degree, g, coef0, chunk) - diag_x) / (m * (m - 1))
    kyy = (_kernel_sum(y, y, degree, g, coef0, chunk) - diag_y) / (n * (n - 1))
    kxy = _kernel_sum(x, y, degree, g, coef0, chunk) / (m * n)
    return float(kxx + kyy - 2.0 * kxy)


def kpd(reference: np.ndarray, generated: np.ndarray, *, num_batches: int = 10, batch_size: int = 5_000,
        degree: int = 4, normalise: bool = True, seed: int = 42) -> tuple[float, float]:
    """Kernel physics distance with the JetNet definition (arXiv:2211.10295): median over
    ``num_batches`` batches (drawn with replacement, capped at the smaller sample) of the
    unbiased MMD² with the polynomial kernel (x·y/d + 1)^``degree`` (JetNet: 4), and half
    the 16–84 % inter-quantile range as its uncertainty.  ``normalise`` divides the
    features by their largest absolute value in the reference (:func:`max_abs_scale`).

    >>> rng = np.random.default_rng(2)
    >>> a, b = rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3))
    >>> value, error = kpd(a, b, batch_size=1000)
    >>> abs(value) < 3 * error + 1e-3
    True
    >>> kpd(a, b + 1.0, batch_size=1000)[0] > 20 * error
    True
    """
    x, y = _prepare_pair(reference, generated, normalise)
    # batches drawn with replacement (as JetNet), so they differ even when a batch is as
    # large as the sample; capped at the smaller sample
    size = max(min(batch_size, len(x), len(y)), 2)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_batches):
        a = x[rng.choice(len(x), size=size)]
        b = y[rng.choice(len(y), size=size)]
        values.append(mmd_poly_unbiased(a, b, degree=degree))
    lo, hi = np.percentile(values, [16.275, 83.725])
    return float(np.median(values)), float((hi - lo) / 2.0)


# ----------------------------------------------------------------------------------
# memorisation
# ----------------------------------------------------------------------------------
def _nearest_distance(queries: np.ndarray, pool: np.ndarray, chunk_elements: int) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance of every query row to its nearest pool row, and that row's index."""
    pool_sq = np.einsum("ij,ij->i", pool, pool)
    rows = max(1, chunk_elements // max(len(pool), 1))
    dist = np.empty(len(queries))
    index = np.empty(len(queries), dtype=np.int64)
    for i in range(0, len(queries), rows):
        q = queries[i:i + rows]
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + pool_sq[None, :] - 2.0 * (q @ pool.T)
        j = np.argmin(d2, axis=1)
        index[i:i + rows] = j
        # recompute the winner exactly: the expanded form loses precision near 0 (copies)
        dist[i:i + rows] = np.sqrt(np.sum((q - pool[j]) ** 2, axis=1))
    return dist, index


def memorisation(train: np.ndarray, generated: np.ndarray, reference2: np.ndarray, *,
                 chunk_elements: int = 4_000_000, copy_tolerance: float = 1e-6) -> dict:
    """CaloGAN nearest-neighbour memorisation check.

    For every generated shower the Euclidean distance to the closest training
    shower, compared with the same distance for an independent reference sample
    (``reference2``, not used in training).  A model that copies its training set
    has generated distances far below the reference ones.  Distances are computed
    in chunks of ``chunk_elements`` pairs (4M × 8 B = 32 MB of scratch), so
    10k × 10k × 368 fits easily.

    Returns ``generated_distance`` and ``reference_distance`` (arrays),
    ``nearest_train_index`` (for the generated showers), their medians,
    ``median_ratio`` (generated / reference; ≈ 1 when nothing is memorised),
    ``fraction_below_reference_1pct`` (share of generated showers closer than the
    1st percentile of reference distances; ≈ 0.01 without memorisation) and
    ``n_copies`` (distance ≤ ``copy_tolerance`` × the reference median).
    """
    t = _as_matrix(train, "training showers")
    g = _as_matrix(generated, "generated showers")
    r = _as_matrix(reference2, "reference showers")
    if not (t.shape[1] == g.shape[1] == r.shape[1]):
        raise DataError(f"memorisation: feature counts differ ({t.shape[1]}, {g.shape[1]}, {r.shape[1]})")
    if len(t) == 0 or len(g) == 0 or len(r) == 0:
        raise DataError("memorisation: every sample needs at least one shower")
    gen_d, gen_idx = _nearest_distance(g, t, chunk_elements)
    ref_d, _ = _nearest_distance(r, t, chunk_elements)
    med_g, med_r = float(np.median(gen_d)), float(np.median(ref_d))
    cut = float(np.percentile(ref_d, 1.0))
    return {
        "generated_distance": gen_d,
        "reference_distance": ref_d,
        "nearest_train_index": gen_idx,
        "median_generated": med_g,
        "median_reference": med_r,
        "median_ratio": med_g / med_r if med_r > 0 else float("nan"),
        "fraction_below_reference_1pct": float(np.mean(gen_d < cut)),
        "n_copies": int(np.sum(gen_d <= copy_tolerance * max(med_r, 1e-300))),
    }
