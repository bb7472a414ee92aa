"""Compare a generated shower sample with a reference sample: every metric in one call.

:func:`compare` streams both samples chunk by chunk (so DS3-sized files fit in
bounded memory: only per-shower features, layer energies and radial profiles are
kept, never the voxels), then

* histograms every high-level feature with bins made from the reference and
  reports CaloChallenge separation power and χ²/ndf, inclusive and at every
  incident-energy point;
* computes the χ² of ``E_tot / E_inc`` summed over energy points (CaloShowerGAN);
* computes FPD and KPD on the CaloChallenge high-level feature matrix;
* optionally trains the CaloChallenge classifier (low- and high-level) on a random
  subsample of at most ``classifier_max`` showers per sample;
* accumulates mean showers, longitudinal and radial profiles and the voxel-energy
  spectrum for the plots.

The result's :attr:`EvaluationResult.metrics` is a nested plain dict with stable
keys, JSON-safe (NaN/inf become ``None``); :attr:`EvaluationResult.headline` holds
the three numbers a summary prints.

Example
-------
>>> import numpy as np
>>> from caloforge.io import ShowerData
>>> rng = np.random.default_rng(0)
>>> def toy(n):
...     e = rng.choice([1e3, 1e4], n)
...     return ShowerData(e, rng.exponential(1.0, (n, 368)) * e[:, None] / 368)
>>> result = compare(toy(400), toy(400), "ds1-photons", per_energy=False, fpd_kpd=False)
>>> result.headline["protocol"], sorted(result.headline)[:4]
('calochallenge', ['auc_high', 'auc_low', 'classifier_auc', 'etot_chi2_ndf'])
"""

from __future__ import annotations

import math
import sys
import threading
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from caloforge.errors import DataError
from caloforge.geometry import Geometry, load_geometry
from caloforge.io import ShowerData, count_showers, iter_showers

__all__ = ["FeatureHistogram", "SampleSummary", "EvaluationResult", "compare", "json_safe", "scan_sample"]

ShowerSource = ShowerData | str | Path

# voxel-energy spectrum: fixed log bins (MeV) so that chunks can be accumulated
VOXEL_SPECTRUM_EDGES = np.logspace(-3, 6, 91)
# continuous incident-energy spectra are compared in this many log bins
CONTINUOUS_ENERGY_BINS = 6
# the low-level classifier keeps at most this many bytes of voxels per sample (float32):
# all of DS1/DS2-sized samples up to 100k showers… ~3.3k showers of DS3
CLASSIFIER_MAX_BYTES = 512 << 20
# memorisation check: generated / reference showers compared with at most this many training showers
MEMORISATION_MAX = 5_000


# ----------------------------------------------------------------------------------
# result containers
# ----------------------------------------------------------------------------------
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
    hl_matrix: np.ndarray | None  # (N, F) CaloChallenge high-level features for FPD/KPD
    layer_energy: np.ndarray  # (N, n_layers)
    radial: np.ndarray  # (N, n_rbins) energy per ring [MeV]
    voxel_sum: np.ndarray  # (n_voxels,) Σ showers
    voxel_spectrum: np.ndarray  # counts over VOXEL_SPECTRUM_EDGES with under/overflow
    n_zero_voxels: int
    classifier_sample: ShowerData | None = None


@dataclass
class EvaluationResult:
    """Everything :func:`compare` computed: ``metrics`` (JSON-safe) plus plot inputs."""

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
            "etot_chi2_ndf": m["total_energy"]["chi2_ndf"],
            "classifier_auc": auc_low if auc_low is not None else auc_high,
            "fpd": fpd,
            "kpd": kpd,
            "fpd_x1e3": None if fpd is None else 1e3 * fpd,
            "kpd_x1e3": None if kpd is None else 1e3 * kpd,
            "auc_low": auc_low,
            "auc_high": auc_high,
        }


# ----------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------
class _Progress:
    """Step-wise progress: one :class:`caloforge.runtime.Progress` per step (a bar on a terminal,
    plain lines in logs), a callback taking step names, or nothing.  ``task(name, total)``
    yields an ``advance(n)``."""

    def __init__(self, enabled: bool | Callable[[str], None]) -> None:
        self.callback = enabled if callable(enabled) else None
        self.enabled = enabled is True

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        pass

    @contextmanager
    def task(self, name: str, total: float | None) -> Iterator[Callable[[float], None]]:
        from caloforge.runtime import Progress

        if self.callback is not None:
            self.callback(name)
        n = int(total) if total else 1
        with Progress(name, n, enabled=self.enabled, interval=10.0) as bar:
            if total is None:
                bar.update(0, "running", force=True)
            done = [0.0]

            def advance(k: float = 1) -> None:
                done[0] += k
                bar.update(int(done[0]))

            yield advance
            bar.update(n, "done", force=True)


# ----------------------------------------------------------------------------------
# streaming pass
# ----------------------------------------------------------------------------------
def _count(source: ShowerSource) -> int:
    return len(source) if isinstance(source, ShowerData) else count_showers(source)


def _chunks(source: ShowerSource, geometry: Geometry, stop: int, chunk_size: int | None) -> Iterator[ShowerData]:
    if isinstance(source, ShowerData):
        geometry.check_voxels(source.n_voxels, "showers")
        step = chunk_size or max(1, (32 << 20) // (8 * geometry.n_voxels))
        for lo in range(0, stop, step):
            yield source.select(slice(lo, min(lo + step, stop)))
    else:
        yield from iter_showers(source, geometry, chunk_size=chunk_size, stop=stop)


def radial_bins(geometry: Geometry, n_cartesian: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Common radial bins of a geometry and the voxel → ring weight matrix.

    Polar voxels share their energy between rings in proportion to overlapping area
    (uniform density inside a voxel); Cartesian cells go to the ring of their
    centre.  Returns ``(edges, M)`` with ``M`` of shape (n_voxels, n_rings), so
    ``showers @ M`` is the energy per ring.
    """
    polar = [layer for layer in geometry.layers if layer.kind == "polar" and layer.n_voxels]
    r = geometry.voxel_centers["r"]
    if polar:
        edges = np.unique(np.concatenate([np.asarray(layer.r_edges, float) for layer in polar]))
        cart_max = max((layer.outer_radius for layer in geometry.layers
                        if layer.kind == "cartesian" and layer.n_voxels), default=0.0)
        if cart_max > edges[-1]:
            edges = np.append(edges, cart_max)
    else:
        edges = np.linspace(0.0, float(r.max()) * (1 + 1e-9) + 1e-9, n_cartesian + 1)
    weights = np.zeros((geometry.n_voxels, len(edges) - 1), dtype=np.float32)
    for layer, sl in zip(geometry.layers, geometry.layer_slices):
        if not layer.n_voxels:
            continue
        if layer.kind == "polar":
            re = np.asarray(layer.r_edges, float)
            lo = np.maximum(re[:-1, None], edges[None, :-1])
            hi = np.minimum(re[1:, None], edges[None, 1:])
            overlap = np.clip(hi**2 - lo**2, 0, None) * np.where(hi > lo, 1.0, 0.0)
            frac = overlap / (re[1:] ** 2 - re[:-1] ** 2)[:, None]  # (n_r, n_rings)
            weights[sl] = np.tile(frac, (layer.n_alpha, 1))
        else:
            idx = np.clip(np.searchsorted(edges, r[sl], side="right") - 1, 0, len(edges) - 2)
            weights[np.arange(sl.start, sl.stop), idx] = 1.0
    return edges, weights


class _Cancelled(Exception):
    """A streamed pass stopped because the other one failed."""


def scan_sample(
    source: ShowerSource,
    geometry: Geometry,
    *,
    max_showers: int | None = None,
    chunk_size: int | None = None,
    keep_rows: np.ndarray | None = None,
    hl_matrix: bool | str = True,
    advance: Callable[[float], None] = lambda n=1: None,
    cancel: "threading.Event | None" = None,
    cut: float = 0.0,
) -> SampleSummary:
    """One streamed pass over a sample: features and accumulators, chunk by chunk.

    ``keep_rows`` (sorted row indices) are kept with their voxels for the classifier.
    ``cut`` [MeV]: voxels below it are set to 0 first (the CaloChallenge protocol);
    ``hl_matrix="calochallenge"`` keeps its 30-column high-level set.
    Memory: one chunk of voxels plus O(N × n_features) floats.
    """
    from caloforge.evaluate import features as F

    n_total = _count(source)
    stop = n_total if max_showers is None else min(n_total, int(max_showers))
    if stop == 0:
        raise DataError(f"{source if not isinstance(source, ShowerData) else 'sample'}: no showers to evaluate")
    edges_r, ring_w = radial_bins(geometry)
    feats: dict[str, list[np.ndarray]] = {}
    energies, layer_e, radial, hl, kept = [], [], [], [], []
    voxel_sum = np.zeros(geometry.n_voxels, np.float64)
    spectrum = np.zeros(len(VOXEL_SPECTRUM_EDGES) + 1, np.float64)
    n_zero = 0
    offset = 0
    for chunk in _chunks(source, geometry, stop, chunk_size):
        if cancel is not None and cancel.is_set():  # the other sample failed or Ctrl-C: stop early
            raise _Cancelled()
        s = np.asarray(chunk.showers, dtype=np.float32)
        if cut > 0:
            s = np.where(s < cut, np.float32(0.0), s)
        e = chunk.incident_energy.astype(np.float64)
        # features, high-level matrix and layer energies share one pass over the voxels
        table, matrix, layer_energy = F.high_level_tables(s, e, geometry, matrix=hl_matrix)
        for name, col in table.items():
            feats.setdefault(name, []).append(col.astype(np.float32))
        if matrix is not None:
            hl.append(matrix.astype(np.float32))
        energies.append(e)
        layer_e.append(layer_energy.astype(np.float32))
        radial.append(s @ ring_w)
        voxel_sum += s.sum(axis=0, dtype=np.float64)
        nz = s[s > 0]
        n_zero += s.size - nz.size
        idx = np.searchsorted(VOXEL_SPECTRUM_EDGES, nz, side="right")
        spectrum += np.bincount(idx, minlength=len(spectrum))[: len(spectrum)]
        if keep_rows is not None:
            lo, hi = np.searchsorted(keep_rows, [offset, offset + len(e)])
            if hi > lo:
                rows = keep_rows[lo:hi] - offset
                kept.append(ShowerData(chunk.incident_energy[rows], s[rows]))  # after the cut
        offset += len(e)
        advance(len(e))
    columns = {k: np.concatenate(v) for k, v in feats.items()}
    return SampleSummary(
        n=offset,
        incident_energy=np.concatenate(energies),
        features=columns,
        hl_matrix=np.concatenate(hl) if hl else None,
        layer_energy=np.concatenate(layer_e),
        radial=np.concatenate(radial),
        voxel_sum=voxel_sum,
        voxel_spectrum=spectrum,
        n_zero_voxels=n_zero,
        classifier_sample=ShowerData.concatenate(kept) if kept else None,
    )


# ----------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------
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


def _n_bins(n_ref: int, n_gen: int) -> int:
    # enough entries per bin for a meaningful χ² on small samples, CaloChallenge-like 50 on large
    return int(np.clip(round(math.sqrt(min(n_ref, n_gen)) / 2), 8, 50))


def _histogram(name: str, ref: np.ndarray, gen: np.ndarray) -> FeatureHistogram | None:
    """caloforge protocol: bins over both samples (:func:`~caloforge.evaluate.metrics.pooled_edges`)."""
    from caloforge.evaluate import metrics as M

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
    from caloforge.evaluate import calochallenge as CC
    from caloforge.evaluate import metrics as M

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
    from caloforge.evaluate import metrics as M

    points, discrete = M.energy_points(ref_e, 30)
    if not discrete:
        points, discrete = M.energy_points(ref_e, CONTINUOUS_ENERGY_BINS)
    return points, discrete


def _energy_label(mev: float) -> str:
    for unit, scale in (("TeV", 1e6), ("GeV", 1e3)):
        if abs(mev) >= scale:
            return f"{mev / scale:.4g}{unit}"
    return f"{mev:.4g}MeV"


def _point_table(points: np.ndarray, discrete: bool, ref_idx, gen_idx) -> list[dict[str, Any]]:
    from caloforge.evaluate import metrics as M

    out = []
    n_points = len(points) if discrete else len(points) - 1
    for i in range(n_points):
        # the centre is the key of the metrics' per-point results (the report joins on it)
        centre = M._point_label(points, discrete, i)
        if discrete:
            lo = hi = centre
            label = _energy_label(centre)
        else:
            lo, hi = float(points[i]), float(points[i + 1])
            label = f"{_energy_label(lo)}-{_energy_label(hi)}"
        out.append({"label": label, "energy": centre, "lo": lo, "hi": hi,
                    "n_reference": int(np.sum(ref_idx == i)), "n_generated": int(np.sum(gen_idx == i))})
    return out


def _stats_dict(h: FeatureHistogram | None) -> dict[str, Any] | None:
    return None if h is None else dict(h.stats)


def _total_energy(ref: SampleSummary, gen: SampleSummary, discrete: bool) -> dict[str, Any]:
    from caloforge.evaluate import metrics as M

    ref_t = ref.layer_energy.sum(axis=1, dtype=np.float64)
    gen_t = gen.layer_energy.sum(axis=1, dtype=np.float64)
    # the same energy points as the feature tables (see _energy_grouping)
    per_point = M.total_energy_chi2_per_point(ref.incident_energy, ref_t, gen.incident_energy, gen_t,
                                              max_points=30 if discrete else CONTINUOUS_ENERGY_BINS)
    chi2 = float(sum(c for c, _ in per_point.values())) if per_point else float("inf")
    ndf = int(sum(n for _, n in per_point.values()))
    return {
        "chi2": chi2,
        "ndf": ndf,
        "chi2_ndf": chi2 / ndf if ndf else float("nan"),
        "per_point": [{"energy": e, "label": _energy_label(e), "chi2": c, "ndf": n,
                       "chi2_ndf": c / n if n else float("nan")} for e, (c, n) in sorted(per_point.items())],
    }


def _fpd_kpd(ref: SampleSummary, gen: SampleSummary, seed: int, official: bool = False) -> dict[str, Any]:
    from caloforge.evaluate import calochallenge as CC
    from caloforge.evaluate import metrics as M

    out: dict[str, Any] = {}
    fpd = M.fpd(ref.hl_matrix, gen.hl_matrix, seed=seed, **(CC.FPD_SETTINGS if official else {}))
    kpd = M.kpd(ref.hl_matrix, gen.hl_matrix, seed=seed, **(CC.KPD_SETTINGS if official else {}))
    for name, (value, error) in (("fpd", fpd), ("kpd", kpd)):
        out[name] = {"value": float(value), "error": float(error), "value_x1e3": 1e3 * float(value),
                     "error_x1e3": 1e3 * float(error)}
    return out


def _classifier(ref: SampleSummary, gen: SampleSummary, geometry: Geometry, seed: int, device: str,
                settings: Mapping[str, Any], official: bool = False) -> dict[str, Any]:
    """Low level on the kept voxel subsample, high level on every shower's feature matrix.
    ``official``: the CaloChallenge classifier (:data:`~caloforge.evaluate.calochallenge.CLASSIFIER_SETTINGS`,
    ``settings`` override it) with voxel / E_inc inputs."""
    from caloforge.evaluate import calochallenge as CC
    from caloforge.evaluate import classifier as C

    def scalars(res: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in res.items() if isinstance(v, (int, float, np.integer, np.floating, str))}

    settings = CC.classifier_settings(settings) if official else dict(settings)
    low_settings = dict(settings, percent=False) if official else settings
    low = C.classifier_test(ref.classifier_sample, gen.classifier_sample, geometry=geometry, mode="low", seed=seed,
                            device=device, **low_settings)
    high = C.classifier_test_arrays(ref.hl_matrix, gen.hl_matrix, seed=seed, device=device, **settings)
    high["mode"] = "high"
    return {"low": scalars(low), "high": scalars(high)}


def _memorisation(training: SampleSummary, ref: SampleSummary, gen: SampleSummary, seed: int) -> dict[str, Any]:
    """CaloGAN nearest-neighbour check on the standardised high-level features (cheap for any
    voxel count): generated → closest training shower vs. independent reference → closest
    training shower, on random subsamples."""
    from caloforge.evaluate import metrics as M

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


def _protocol_description(protocol: str, dataset: str | None, cut: float,
                          classifier_settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """What produced the numbers: stored with them and shown by the report."""
    from caloforge.evaluate import calochallenge as CC

    if protocol == "calochallenge":
        clf = CC.classifier_settings(classifier_settings)
        return {"name": protocol, "dataset": dataset, "voxel_cut_mev": cut, "hl_columns": "calochallenge (30 for DS1 γ)",
                "binning": "official fixed ranges; entries outside dropped from the separation power",
                "fpd": dict(CC.FPD_SETTINGS), "kpd": dict(CC.KPD_SETTINGS),
                "classifier": {k: list(v) if isinstance(v, tuple) else v for k, v in clf.items()},
                "official_classifier": all(clf[k] == v for k, v in CC.CLASSIFIER_SETTINGS.items())}
    return {"name": protocol, "dataset": dataset, "voxel_cut_mev": 0.0, "hl_columns": "caloforge (14 for DS1 γ)",
            "binning": "pooled equal-count bins, explicit zero bin", "fpd": {"min_samples": 20_000},
            "kpd": {"batch_size": 5_000}, "classifier": dict(classifier_settings or {}), "official_classifier": False}


def _load_source(source: ShowerSource, what: str, geometry: Geometry) -> ShowerSource:
    """Check a sample against the geometry up front, before any long step starts."""
    if isinstance(source, ShowerData):
        geometry.check_voxels(source.n_voxels, what)
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        for _ in iter_showers(path, geometry, chunk_size=1, stop=1):  # format, datasets, voxel count
            pass
        return path
    raise DataError(f"{what}: expected a ShowerData or a path to a shower file, got {type(source).__name__}")


def _random_rows(n: int, k: int, seed: int) -> np.ndarray | None:
    if k <= 0:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, k), replace=False))


def _summary(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
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


def compare(
    reference: ShowerSource,
    generated: ShowerSource,
    geometry: Geometry | str,
    *,
    per_energy: bool = True,
    classifier: bool = False,
    fpd_kpd: bool = True,
    seed: int = 0,
    device: str = "cpu",
    progress: bool | Callable[[str], None] = False,
    max_showers: int | None = None,
    chunk_size: int | None = None,
    classifier_max: int = 100_000,
    classifier_settings: Mapping[str, Any] | None = None,
    labels: tuple[str, str] = ("reference", "generated"),
    training: ShowerSource | None = None,
    protocol: str | None = None,
) -> EvaluationResult:
    """Evaluate ``generated`` showers against ``reference`` showers.

    ``reference`` / ``generated``: :class:`caloforge.io.ShowerData` or paths to shower
    files (streamed, never fully loaded).  ``max_showers`` caps each sample (first
    rows); the classifier uses a random subsample of at most ``classifier_max``
    showers per sample (fewer for very large voxel counts: at most 512 MiB of voxels
    each, ~3.3k showers of DS3).
    ``progress``: ``True`` for rich progress bars, or a callback taking step names.
    ``training``: the model's training sample, for the nearest-neighbour memorisation
    check (``reference`` must then be independent of it).

    ``protocol``: ``"calochallenge"`` (the official definitions, comparable with the published
    table: voxel cut, 30-column high-level set, fixed histogram ranges, the official classifier
    and FPD/KPD settings; see :mod:`caloforge.evaluate.calochallenge`) or ``"caloforge"``
    (no cut, pooled adaptive bins, a seeded standardised early-stopped classifier: better
    behaved on small samples).  ``None``: calochallenge on ds1-photons, ds1-pions, ds2 and
    ds3, caloforge elsewhere.  Under calochallenge, ``classifier_settings`` override the
    official ones (e.g. ``{"epochs": 5, "n_hidden": 256}`` for a quick run).
    """
    from caloforge.evaluate import calochallenge as CC

    geo = load_geometry(geometry)
    protocol = CC.resolve_protocol(protocol, geo)
    official = protocol == "calochallenge"
    dataset = CC.dataset_of(geo)
    cut = CC.voxel_cut(dataset) if official else 0.0
    reference = _load_source(reference, "reference", geo)
    generated = _load_source(generated, "generated", geo)
    n_ref_total = min(_count(reference), max_showers or 1 << 62)
    n_gen_total = min(_count(generated), max_showers or 1 << 62)
    n_clf = min(classifier_max, max(CLASSIFIER_MAX_BYTES // (4 * geo.n_voxels), 1000)) if classifier else 0
    training = _load_source(training, "training", geo) if training is not None else None
    need_hl: bool | str = fpd_kpd or classifier or training is not None
    if need_hl and official:
        need_hl = "calochallenge"
    timings: dict[str, float] = {}
    with _Progress(progress) as prog:
        t0 = time.perf_counter()

        cancel = threading.Event()

        def scan(i: int, source: ShowerSource, n_total: int) -> SampleSummary:
            with prog.task(f"reading {labels[i]}", n_total) as adv:
                return scan_sample(source, geo, max_showers=max_showers, chunk_size=chunk_size, hl_matrix=need_hl,
                                   keep_rows=_random_rows(n_total, n_clf, seed + i), advance=adv, cancel=cancel,
                                   cut=cut)

        # the two samples are independent: scan them side by side (numpy and the HDF5
        # decompression release the GIL); neither result depends on the other
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(scan, 0, reference, n_ref_total), pool.submit(scan, 1, generated, n_gen_total)]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # Ctrl-C: stop both passes at their next chunk
                cancel.set()
                raise
            errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
            if errors:  # a bad file: stop the other pass now rather than after its whole file
                cancel.set()
                raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])
            ref, gen = futures[0].result(), futures[1].result()
        timings["features"] = time.perf_counter() - t0

        # ---- incident-energy points (from the reference) ----
        points, discrete = _energy_grouping(ref.incident_energy)
        from caloforge.evaluate import metrics as M

        ref_idx = M.assign_energy_points(ref.incident_energy, points, discrete)
        gen_idx = M.assign_energy_points(gen.incident_energy, points, discrete)
        point_table = _point_table(points, discrete, ref_idx, gen_idx)

        # ---- histograms ----
        t0 = time.perf_counter()
        names = [k for k in ref.features if k in gen.features]
        # the rows of every energy point, found once rather than once per feature
        ref_rows = [np.flatnonzero(ref_idx == i) for i in range(len(point_table))]
        gen_rows = [np.flatnonzero(gen_idx == i) for i in range(len(point_table))]
        hists: dict[str, FeatureHistogram] = {}
        table: dict[str, dict[str, Any]] = {}
        with prog.task("histograms", len(names)) as adv:
            for name in names:
                r, g = ref.features[name], gen.features[name]
                h = _histogram_official(name, r, g, dataset, geo) if official else _histogram(name, r, g)
                entry: dict[str, Any] = {"inclusive": _stats_dict(h)}
                if per_energy and h is not None:
                    if official:
                        # the inclusive fixed bins at every energy (E_tot/E_inc: the official per-energy bins)
                        h.per_energy = [_histogram_official(
                            name, r[ri], g[gi], dataset, geo,
                            CC.per_energy_ratio_edges(dataset, p["energy"]) if name == "E_ratio" else h.edges)
                            for ri, gi, p in zip(ref_rows, gen_rows, point_table)]
                    else:
                        h.per_energy = [_histogram(name, r[ri], g[gi]) for ri, gi in zip(ref_rows, gen_rows)]
                    entry["per_energy"] = {p["label"]: _stats_dict(ph) for p, ph in zip(point_table, h.per_energy)}
                if h is not None:
                    hists[name] = h
                table[name] = entry
                adv(1)
        timings["histograms"] = time.perf_counter() - t0

        metrics: dict[str, Any] = {
            "protocol": _protocol_description(protocol, dataset, cut, classifier_settings),
            "geometry": geo.name,
            "n_reference": ref.n,
            "n_generated": gen.n,
            "labels": list(labels),
            "energy_points": point_table,
            "energy_points_discrete": bool(discrete),
            "total_energy": _total_energy(ref, gen, discrete),
            "features": table,
            "summary": _summary(table),
            "sparsity": {
                "reference": ref.n_zero_voxels / (ref.n * geo.n_voxels),
                "generated": gen.n_zero_voxels / (gen.n * geo.n_voxels),
            },
        }
        spec = FeatureHistogram("voxel_energy", VOXEL_SPECTRUM_EDGES, ref.voxel_spectrum, gen.voxel_spectrum,
                                {"separation_power": M.separation_power(ref.voxel_spectrum, gen.voxel_spectrum)})
        # voxels of one shower are correlated, so only the separation power (no χ²) is meaningful here
        metrics["voxel_spectrum"] = dict(spec.stats)

        # samples too small for FPD/KPD or the classifier skip that step with a note
        # instead of losing every other number
        notes: list[str] = []
        metrics["fpd"] = metrics["kpd"] = metrics["classifier"] = None
        if fpd_kpd:
            t0 = time.perf_counter()
            with prog.task("FPD / KPD", None):
                try:
                    metrics.update(_fpd_kpd(ref, gen, seed, official))
                except DataError as exc:
                    notes.append(f"FPD/KPD skipped: {exc}")
            timings["fpd_kpd"] = time.perf_counter() - t0

        if classifier:
            t0 = time.perf_counter()
            with prog.task("classifier (low + high level)", None):
                try:
                    clf = _classifier(ref, gen, geo, seed, device, dict(classifier_settings or {}), official)
                    clf["n_per_sample_low"] = min(len(ref.classifier_sample), len(gen.classifier_sample))
                    clf["n_per_sample_high"] = min(ref.n, gen.n)
                    metrics["classifier"] = clf
                except DataError as exc:
                    notes.append(f"classifier skipped: {exc}")
            timings["classifier"] = time.perf_counter() - t0
        metrics["memorisation"] = None
        if training is not None:
            t0 = time.perf_counter()
            with prog.task("reading training sample", min(_count(training), max_showers or 1 << 62)) as adv:
                train = scan_sample(training, geo, max_showers=max_showers, chunk_size=chunk_size, advance=adv,
                                    hl_matrix="calochallenge" if official else True, cut=cut)
            metrics["memorisation"] = _memorisation(train, ref, gen, seed)
            timings["memorisation"] = time.perf_counter() - t0
        from caloforge.evaluate import granular_observables as granular  # 3DGAN / BIB-AE observables

        if granular.applies(geo):
            t0 = time.perf_counter()
            with prog.task("granular observables", None):
                metrics["granular"] = granular.compare_sources(reference, generated, geo, max_showers=max_showers,
                                                               chunk_size=chunk_size)
            timings["granular"] = time.perf_counter() - t0

        # the CaloGAN / ATLAS GAN papers' own observables for their geometries (None otherwise)
        from caloforge.evaluate.paper_observables import paper_observables

        metrics["paper"] = paper_observables(reference, generated, geo, training=training,
                                             max_showers=max_showers or 50_000, seed=seed)
        metrics["notes"] = notes
        metrics["timings_s"] = timings

    n_pts = len(point_table)

    def profile(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
        rows = [values.mean(axis=0, dtype=np.float64)]
        for i in range(n_pts if per_energy else 0):
            sel = values[idx == i]
            rows.append(sel.mean(axis=0, dtype=np.float64) if len(sel) else np.full(values.shape[1], np.nan))
        return np.vstack(rows)

    result = EvaluationResult(
        geometry=geo,
        metrics=json_safe(metrics),
        features=hists,
        energy_points=point_table,
        mean_shower={"reference": ref.voxel_sum / ref.n, "generated": gen.voxel_sum / gen.n},
        longitudinal={"reference": profile(ref.layer_energy, ref_idx), "generated": profile(gen.layer_energy, gen_idx)},
        radial={"reference": profile(ref.radial, ref_idx), "generated": profile(gen.radial, gen_idx)},
        radial_edges=radial_bins(geo)[0],
        voxel_spectrum=spec,
        labels=tuple(labels),
    )
    result.metrics["headline"] = json_safe(result.headline)
    return result


class _CallableModule(types.ModuleType):
    """``caloforge.evaluate.compare`` names both this module and its function; whichever a
    given import machinery binds to the package attribute, calling it runs :func:`compare`."""

    def __call__(self, *args: Any, **kwargs: Any) -> EvaluationResult:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
