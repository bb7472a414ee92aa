"""The CaloChallenge evaluation protocol: the official evaluator's definitions, reimplemented.

Numbers under this protocol are meant to be read against the published CaloChallenge 2022
table.  Written from reading the official code (``CaloChallenge/homepage``: ``code/evaluate.py``,
``code/HighLevelFeatures.py``, ``code/evaluate_plotting_helper.py``, and the FPD/KPD calls of
the post-2023 evaluator); every definition below is a fact of that code, not a choice of ours,
except where marked "caloforge choice" (the official code is silent there):

* **voxel cut**: voxels below 1 MeV are set to 0 for DS1, below 0.5 keV / 0.033 = 15.15 keV
  (the silicon readout threshold in file units) for DS2/DS3, before every metric;
* **high-level set** (FPD/KPD and ``cls-high``), 30 columns for DS1 photons: log10 E_inc,
  log10(E_layer + 1e-8) per layer, then for the α-binned layers the centres of energy in η and
  φ and the widths in η and φ divided by 100 mm, then log10(E_tot + 1e-8), the sparsity per
  layer, and the radial centre of energy and width per layer divided by 100 mm;
* **histograms for the separation power**: fixed ranges per feature (:func:`feature_edges`);
  entries outside the range are dropped (the official histograms are ``density=True`` over
  the range), separation power ½ Σ (p − q)² / (p + q + 1e-16) of the normalised histograms;
* **classifier**: 2 hidden layers of 2048 (LeakyReLU), raw inputs (``cls-low``: log10 E_inc and
  voxel / E_inc; ``cls-high``: the 30 columns), BCE, Adam, lr 2e-4, batch 1000, 50 epochs,
  60/20/20 split, float64; the epoch with the best accuracy on the second part is kept, the
  outputs are calibrated (isotonic) on that part and AUC / JSD quoted on the third;
* **FPD / KPD**: JetNet's ``fpd(..., min_samples=10000)`` and ``kpd(..., batch_size=10000)``.

>>> dataset_of("ds1-photons"), voxel_cut("2") == 0.5e-3 / 0.033
('1-photons', True)
>>> feature_edges("CE_phi_layer_2", "1-photons")[[0, -1]].tolist(), len(feature_edges("CE_phi_layer_2", "1-photons"))
([-100.0, 100.0], 101)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from caloforge.errors import ConfigError
from caloforge.geometry import Geometry

__all__ = [
    "PROTOCOLS", "DATASETS", "CLASSIFIER_SETTINGS", "FPD_SETTINGS", "KPD_SETTINGS", "HIST_MIN_ENERGY",
    "dataset_of", "default_protocol", "resolve_protocol", "voxel_cut", "apply_cut", "feature_edges",
    "per_energy_ratio_edges", "separation_power", "official_name", "classifier_settings", "describe_protocol",
    "write_official_outputs",
]

PROTOCOLS = ("calochallenge", "caloforge")
# caloforge geometry → the official evaluator's --dataset
DATASETS = {"ds1-photons": "1-photons", "ds1-pions": "1-pions", "ds2": "2", "ds3": "3"}
# the official DNN and its training (evaluate.py, with the 2048-node layers of the published table)
CLASSIFIER_SETTINGS: dict[str, Any] = {
    "n_layers": 2, "n_hidden": 2048, "dropout": 0.0, "batch_size": 1000, "epochs": 50, "lr": 2e-4,
    "split": (0.6, 0.2, 0.2), "standardise": False, "selection": "accuracy", "patience": None,
    "dtype": "float64",
}
FPD_SETTINGS: dict[str, Any] = {"min_samples": 10_000}  # jetnet.evaluation.fpd in evaluate.py
KPD_SETTINGS: dict[str, Any] = {"batch_size": 10_000}  # jetnet.evaluation.kpd in evaluate.py
# lower edge of the log-binned layer-energy and voxel-energy histograms [MeV]: the official
# evaluator's ``args.min_energy``, the same value as its voxel cut (1 MeV for DS1 since the
# evaluator of 2023-11; the 10 MeV of the 2022 evaluator shifted the E-layer separation powers)
HIST_MIN_ENERGY = {"1-photons": 1.0, "1-pions": 1.0, "2": 0.5e-3 / 0.033, "3": 0.5e-3 / 0.033}


def dataset_of(geometry: Geometry | str) -> str | None:
    """The official ``--dataset`` of a caloforge geometry, ``None`` for other geometries."""
    name = geometry if isinstance(geometry, str) else geometry.name
    return DATASETS.get(name)


def default_protocol(geometry: Geometry | str) -> str:
    """``"calochallenge"`` on the four CaloChallenge geometries, else ``"caloforge"``."""
    return "calochallenge" if dataset_of(geometry) else "caloforge"


def resolve_protocol(protocol: str | None, geometry: Geometry | str) -> str:
    """``protocol`` checked against the geometry (``None`` → :func:`default_protocol`)."""
    if protocol is None:
        return default_protocol(geometry)
    p = str(protocol).strip().lower()
    if p not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}: use calochallenge or caloforge")
    if p == "calochallenge" and dataset_of(geometry) is None:
        name = geometry if isinstance(geometry, str) else geometry.name
        raise ConfigError(f"protocol calochallenge needs a CaloChallenge geometry (ds1-photons, ds1-pions, ds2, "
                          f"ds3), not {name!r}; use --protocol caloforge")
    return p


def voxel_cut(dataset: str) -> float:
    """Voxel energy [MeV] below which the official evaluator sets voxels to 0."""
    return 1.0 if dataset.startswith("1") else 0.5e-3 / 0.033


def apply_cut(showers: np.ndarray, cut: float) -> np.ndarray:
    """Showers with voxels below ``cut`` set to 0 (a new float32 array; the input is untouched).

    >>> apply_cut(np.array([[0.5, 1.0, 3.0]]), 1.0).tolist()
    [[0.0, 1.0, 3.0]]
    """
    s = np.asarray(showers, dtype=np.float32)
    return np.where(s < cut, np.float32(0.0), s) if cut > 0 else s.copy()


_LAYER = re.compile(r"^(?P<stem>.+)_layer_(?P<layer>\d+)$")


def feature_edges(name: str, dataset: str, reference: np.ndarray | None = None,
                  geometry: Geometry | None = None) -> np.ndarray | None:
    """Fixed bin edges of the official histogram of a caloforge feature, or ``None`` when the
    official code has no histogram of it.

    * ``E_ratio`` (E_tot / E_inc): 0.5 … 1.5 in 100 bins;
    * ``E_layer_i``: 39 log bins from ``HIST_MIN_ENERGY`` to the reference maximum (the reference
      after the voxel cut; layer energies below the lower edge, zeros included, are dropped; the
      upper edge is 10 ** log10(max) with log10 in the reference's dtype, float32 for caloforge's
      features as for the official float32 layer sums);
    * ``CE_eta/CE_phi_layer_i``: ±30 mm (DS2/3), ±500 mm (DS1 layers 12, 13), ±100 mm, 100 bins;
    * ``width_eta/width_phi_layer_i``: 0 … 30 / 400 / 100 mm likewise;
    * ``sparsity_layer_i``: 0 … 1 in 19 bins (the official plot histograms 1 − sparsity);
    * ``CE_r/width_r_layer_i`` (caloforge choice: in the feature set, not plotted officially):
      0 … the layer's outer radius in 100 bins (``geometry`` needed, else ``None``).
    """
    if name == "E_ratio":
        return np.linspace(0.5, 1.5, 101)
    m = _LAYER.match(name)
    if m is None:
        return None
    stem, layer = m.group("stem"), int(m.group("layer"))
    si_w = dataset in ("2", "3")
    if stem == "E":  # E_layer_i
        if reference is None or not np.any(np.isfinite(reference)):
            return None
        # the maximum keeps the reference's dtype: the official evaluator takes log10 of the float32
        # layer energy, and that rounding moves the top edge (often just below the maximum itself)
        top = np.nanmax(np.asarray(reference))
        lo = HIST_MIN_ENERGY[dataset]
        return np.logspace(np.log10(lo), np.log10(top), 40) if top > lo else None
    if stem in ("CE_eta", "CE_phi"):
        lim = 30.0 if si_w else 500.0 if layer in (12, 13) else 100.0
        return np.linspace(-lim, lim, 101)
    if stem in ("width_eta", "width_phi"):
        lim = 30.0 if si_w else 400.0 if layer in (12, 13) else 100.0
        return np.linspace(0.0, lim, 101)
    if stem == "sparsity":
        return np.linspace(0.0, 1.0, 20)
    if stem in ("CE_r", "width_r") and geometry is not None:
        return np.linspace(0.0, float(geometry.layers[layer].outer_radius), 101)
    return None


def per_energy_ratio_edges(dataset: str, energy: float) -> np.ndarray:
    """Official bins of E_tot / E_inc at one DS1 energy: 0.4 … 1.4 in 20 bins, 0.9 … 1.1 for
    photons from 4 GeV up (``plot_Etot_Einc_discrete``); DS2/DS3 have no per-energy histogram,
    so the inclusive 0.5 … 1.5 bins are used (caloforge choice)."""
    if not dataset.startswith("1"):
        return np.linspace(0.5, 1.5, 101)
    if dataset == "1-photons" and energy >= 2.0**12 * (1 - 1e-6):
        return np.linspace(0.9, 1.1, 21)
    return np.linspace(0.4, 1.4, 21)


def histogram_in_range(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts inside ``edges`` only (``np.histogram``: last bin closed, outside dropped)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return np.histogram(v[np.isfinite(v)], bins=np.asarray(edges, dtype=np.float64))[0].astype(np.float64)


def separation_power(reference: np.ndarray, generated: np.ndarray, edges: np.ndarray) -> float:
    """Official separation power of two samples of values in fixed bins: each histogram
    normalised over the entries *inside* the range, then ½ Σ (p − q)² / (p + q + 1e-16).
    NaN when either sample has no entry in range (the official density is then NaN too).

    >>> e = np.linspace(0.0, 1.0, 3)
    >>> separation_power(np.array([0.2, 0.7]), np.array([0.2, 0.7, 5.0]), e)  # 5.0 is dropped
    0.0
    >>> separation_power(np.array([0.2]), np.array([0.7]), e)
    1.0
    """
    p = histogram_in_range(reference, edges)
    q = histogram_in_range(generated, edges)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    return float(0.5 * np.sum((p - q) ** 2 / (p + q + 1e-16)))


def official_name(name: str) -> str | None:
    """The label under which the official evaluator writes a feature's separation power
    (``histogram_chi2_<dataset>.txt``), or ``None``.

    >>> official_name("CE_phi_layer_2"), official_name("E_layer_12"), official_name("E_ratio")
    ('EC Phi layer 2', 'E layer 12', 'Etot / Einc')
    """
    if name == "E_ratio":
        return "Etot / Einc"
    m = _LAYER.match(name)
    if m is None:
        return None
    label = {"E": "E layer", "CE_eta": "EC Eta layer", "CE_phi": "EC Phi layer",
             "width_eta": "Width Eta layer", "width_phi": "Width Phi layer", "sparsity": "Sparsity layer",
             "CE_r": "EC R layer", "width_r": "Width R layer"}.get(m.group("stem"))
    return f"{label} {m.group('layer')}" if label else None


def classifier_settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The official classifier settings with ``overrides`` (e.g. fewer epochs for a quick run)."""
    out = dict(CLASSIFIER_SETTINGS)
    out.update(overrides or {})
    return out


def describe_protocol(protocol: str, dataset: str | None, cut: float,
                      overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """What produced the numbers (``overrides``: the classifier settings asked for): stored
    with them and shown by the report."""
    if protocol == "calochallenge":
        clf = classifier_settings(overrides)
        return {"name": protocol, "dataset": dataset, "voxel_cut_mev": cut, "hl_columns": "calochallenge (30 for DS1 γ)",
                "binning": "official fixed ranges; entries outside dropped from the separation power",
                "fpd": dict(FPD_SETTINGS), "kpd": dict(KPD_SETTINGS),
                "classifier": {k: list(v) if isinstance(v, tuple) else v for k, v in clf.items()},
                "official_classifier": all(clf[k] == v for k, v in CLASSIFIER_SETTINGS.items())}
    return {"name": protocol, "dataset": dataset, "voxel_cut_mev": 0.0, "hl_columns": "caloforge (14 for DS1 γ)",
            "binning": "pooled equal-count bins, explicit zero bin", "fpd": {"min_samples": 20_000},
            "kpd": {"batch_size": 5_000}, "classifier": dict(overrides or {}), "official_classifier": False}


def write_official_outputs(metrics: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """The official evaluator's text outputs, from a calochallenge-protocol ``metrics`` dict:
    ``histogram_chi2_<dataset>.txt`` (separation power per histogram, under the official
    labels), ``fpd_kpd_<dataset>.txt`` (FPD and KPD ×10³ with errors) and
    ``classifier_cls-low_<dataset>.txt`` / ``classifier_cls-high_<dataset>.txt`` (AUC / JSD).
    Returns the paths written (none for the caloforge protocol)."""
    from caloforge.io import atomic_path

    proto = metrics.get("protocol") or {}
    if proto.get("name") != "calochallenge":
        return []
    ds, out = proto["dataset"], Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    lines = ["List of separation powers of the histograms (caloforge, CaloChallenge protocol).", ""]
    for name, entry in (metrics.get("features") or {}).items():
        inc = entry.get("inclusive") or {}
        if inc.get("official_name") and inc.get("separation_power") is not None:
            lines += [f"{inc['official_name']}: ", str(inc["separation_power"]), ""]
    files[f"histogram_chi2_{ds}.txt"] = "\n".join(lines) + "\n"
    if metrics.get("fpd") and metrics.get("kpd"):
        f, k = metrics["fpd"], metrics["kpd"]
        files[f"fpd_kpd_{ds}.txt"] = (f"FPD (x10^3): {f['value_x1e3']:.4f} ± {f['error_x1e3']:.4f}\n"
                                      f"KPD (x10^3): {k['value_x1e3']:.4f} ± {k['error_x1e3']:.4f}\n")
    for mode in ("low", "high"):
        res = (metrics.get("classifier") or {}).get(mode) or {}
        if res.get("auc") is not None and res.get("jsd") is not None:
            files[f"classifier_cls-{mode}_{ds}.txt"] = ("Final result of classifier test (AUC / JSD):\n"
                                                        f"{res['auc']:.4f} / {res['jsd']:.4f}\n\n")
    paths = []
    for fname, text in files.items():
        with atomic_path(out / fname) as tmp:
            tmp.write_text(text)
        paths.append(out / fname)
    return paths
