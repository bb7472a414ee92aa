"""Compare a generated shower sample with a reference sample: every metric in one call.

:func:`compare` is the evaluation's stages composed:

1. scan (:mod:`~caloforge.evaluate.scan`): one streamed pass over each sample, side by side
   (DS3-sized files fit in bounded memory: features, layer energies and radial profiles are
   kept, never the voxels) → two :class:`~caloforge.evaluate.result.SampleSummary`;
2. histograms (:mod:`~caloforge.evaluate.histograms`): every feature over common bins;
3. distances (:mod:`~caloforge.evaluate.distances`): E_tot χ², FPD/KPD, memorisation;
4. classifier (:func:`~caloforge.evaluate.classifier.classifier_metrics`), when asked for;
5. the registered observable suites (:mod:`~caloforge.evaluate.suites`).

Together they

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

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from caloforge.errors import DataError
from caloforge.evaluate import calochallenge as CC
from caloforge.evaluate import distances as D
from caloforge.evaluate import histograms as H
from caloforge.evaluate.classifier import classifier_metrics, classifier_sample_size
from caloforge.evaluate.identity import sample_identity
from caloforge.evaluate.result import EvaluationResult, FeatureHistogram, SampleSummary, json_safe
from caloforge.evaluate.scan import (ShowerSource, count, load_source, radial_bins, random_rows, scan_pair,
                                     scan_sample)
from caloforge.evaluate.suites import SuiteInputs, run_suites
from caloforge.geometry import Geometry, load_geometry
from caloforge.runtime import Progress

__all__ = ["compare"]

Step = Callable[..., Any]  # (name, total=None, key=None) → a context manager yielding advance(n)


def _steps(progress: bool | Callable[[str], None], timings: dict[str, float]) -> Step:
    """One :class:`caloforge.runtime.Progress` per step (a bar on a terminal, plain lines in logs),
    or a callback taking step names, or nothing; a step's wall time lands in ``timings[key]``
    (``key``: the step's metrics name, default the step name)."""
    callback = progress if callable(progress) else None

    @contextmanager
    def step(name: str, total: float | None = None, key: str | None = None) -> Iterator[Callable[[float], None]]:
        if callback is not None:
            callback(name)
        n = int(total) if total else 1
        t0 = time.perf_counter()
        with Progress(name, n, enabled=progress is True, interval=10.0) as bar:
            if total is None:
                bar.update(0, "running", force=True)
            done = [0.0]

            def advance(k: float = 1) -> None:
                done[0] += k
                bar.update(int(done[0]))

            yield advance
            bar.update(n, "done", force=True)
        if key is not None or total is None:
            timings[key or name] = time.perf_counter() - t0

    return step


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
    geo = load_geometry(geometry)
    protocol = CC.resolve_protocol(protocol, geo)
    official = protocol == "calochallenge"
    cut = CC.voxel_cut(CC.dataset_of(geo)) if official else 0.0
    reference = load_source(reference, "reference", geo)
    generated = load_source(generated, "generated", geo)
    training = load_source(training, "training", geo) if training is not None else None
    timings: dict[str, float] = {}
    step = _steps(progress, timings)
    hl: bool | str = ("calochallenge" if official else True) if fpd_kpd or classifier or training is not None else False
    n_clf = classifier_sample_size(geo, classifier_max) if classifier else 0

    # 1. scan: one pass over each sample, side by side
    def scan(i: int, source: ShowerSource, cancel) -> SampleSummary:
        n_total = min(count(source), max_showers or 1 << 62)
        with step(f"reading {labels[i]}", n_total) as advance:
            return scan_sample(source, geo, max_showers=max_showers, chunk_size=chunk_size, hl_matrix=hl, cut=cut,
                               keep_rows=random_rows(n_total, n_clf, seed + i), advance=advance, cancel=cancel)

    t0 = time.perf_counter()
    ref, gen = scan_pair(reference, generated, geo, scan=scan)
    timings["features"] = time.perf_counter() - t0
    # 2. histograms
    points = H.energy_points(ref, gen)
    with step("histograms", len(ref.features), key="histograms") as advance:
        hists, table = H.feature_histograms(ref, gen, points, geo, protocol=protocol, per_energy=per_energy,
                                            advance=advance)
    spectrum = H.voxel_spectrum(ref, gen)
    metrics = _histogram_metrics(geo, protocol, cut, classifier_settings, labels, ref, gen, points, table, spectrum)
    # which file was the reference: reports compared side by side (a leaderboard) must share it
    metrics["reference_file"] = sample_identity(reference)
    # 3. distances and 4. the classifier; samples too small for one of them skip it with a note
    # instead of losing every other number
    notes: list[str] = []
    if fpd_kpd:
        with step("FPD / KPD", key="fpd_kpd"), _noted(notes, "FPD/KPD"):
            metrics.update(D.fpd_kpd(ref, gen, seed, official))
    if classifier:
        with step("classifier (low + high level)", key="classifier"), _noted(notes, "classifier"):
            metrics["classifier"] = classifier_metrics(ref, gen, geo, seed=seed, device=device, official=official,
                                                       settings=dict(classifier_settings or {}))
    if training is not None:
        t0 = time.perf_counter()
        with step("reading training sample", min(count(training), max_showers or 1 << 62)) as advance:
            train = scan_sample(training, geo, max_showers=max_showers, chunk_size=chunk_size, advance=advance,
                                hl_matrix=hl, cut=cut)
        metrics["memorisation"] = D.memorisation(train, ref, gen, seed)
        timings["memorisation"] = time.perf_counter() - t0
    # 5. the observable suites that apply to this geometry
    metrics.update(run_suites(SuiteInputs(reference, generated, geo, training=training, max_showers=max_showers,
                                          chunk_size=chunk_size, seed=seed), step=step))
    metrics.update(notes=notes, timings_s=timings)
    return _result(geo, metrics, hists, points, ref, gen, spectrum, labels, per_energy)


@contextmanager
def _noted(notes: list[str], what: str) -> Iterator[None]:
    """A :class:`~caloforge.errors.DataError` (e.g. a sample too small) becomes a note."""
    try:
        yield
    except DataError as exc:
        notes.append(f"{what} skipped: {exc}")


def _histogram_metrics(geo: Geometry, protocol: str, cut: float, classifier_settings: Mapping[str, Any] | None,
                       labels: tuple[str, str], ref: SampleSummary, gen: SampleSummary, points: H.EnergyPoints,
                       table: H.FeatureTable, spectrum: FeatureHistogram) -> dict[str, Any]:
    """The metrics of the scan and histogram stages; the later stages' keys start empty."""
    return {
        "protocol": CC.describe_protocol(protocol, CC.dataset_of(geo), cut, classifier_settings),
        "geometry": geo.name, "n_reference": ref.n, "n_generated": gen.n, "labels": list(labels),
        "energy_points": points.table, "energy_points_discrete": points.discrete,
        "total_energy": D.total_energy(ref, gen, points.discrete),
        "features": table, "summary": H.feature_summary(table),
        "sparsity": {"reference": ref.n_zero_voxels / (ref.n * geo.n_voxels),
                     "generated": gen.n_zero_voxels / (gen.n * geo.n_voxels)},
        "voxel_spectrum": dict(spectrum.stats),
        "fpd": None, "kpd": None, "classifier": None, "memorisation": None,
    }


def _result(geo: Geometry, metrics: dict[str, Any], hists: dict[str, FeatureHistogram], points: H.EnergyPoints,
            ref: SampleSummary, gen: SampleSummary, spectrum: FeatureHistogram, labels: tuple[str, str],
            per_energy: bool) -> EvaluationResult:
    """The plot inputs (mean shower, profiles per energy point) next to the JSON-safe metrics."""
    n_points = len(points.table) if per_energy else 0
    result = EvaluationResult(
        geometry=geo,
        metrics=json_safe(metrics),
        features=hists,
        energy_points=points.table,
        mean_shower={"reference": ref.voxel_sum / ref.n, "generated": gen.voxel_sum / gen.n},
        longitudinal={"reference": H.mean_profiles(ref.layer_energy, points.reference_index, n_points),
                      "generated": H.mean_profiles(gen.layer_energy, points.generated_index, n_points)},
        radial={"reference": H.mean_profiles(ref.radial, points.reference_index, n_points),
                "generated": H.mean_profiles(gen.radial, points.generated_index, n_points)},
        radial_edges=radial_bins(geo)[0],
        voxel_spectrum=spectrum,
        labels=tuple(labels),
    )
    result.metrics["headline"] = json_safe(result.headline)
    return result
