"""Observables of the 3DGAN and BIB-AE papers for highly granular Si-W grids (clic, ild, …-angled).

For geometries whose layers are all the same Cartesian grid (:func:`applies`), one streamed
pass per sample (:func:`summarise`) keeps, per shower:

==================  ==========================================================================
``visible_mip``     visible energy sum in MIP units of each cell's layer, cells ≥ 0.5 MIP (BIB-AE)
``n_hits``          cells ≥ 0.5 MIP (the readout threshold of the BIB-AE paper)
``sampling_frac``   all visible energy / primary energy (3DGAN's "sampling fraction")
``n_nonzero``       cells with any energy (3DGAN's "number of hits", no threshold)
``seg1..seg3``      visible energy in the front, middle and back third of the layers / total
                    (3DGAN's angle-dependence check)
``cog_x/y/z``       energy-weighted centre of gravity of the hits [mm]
``theta_reco``      polar angle of the shower's principal axis (energy-weighted PCA of the hit
                    positions), in the tilt plane of the incident azimuth [rad]
==================  ==========================================================================

and, summed over showers, the hit-energy spectrum in MIP units (with its MIP peak), the
longitudinal profile (MIP per layer) and the radial profile around each shower's x–y centre
of gravity.  :func:`compare_granular` turns two summaries into JSON-safe metrics: χ²/ndf and
separation power of every per-shower observable, inclusive and per (E, θ) point when the
reference has few distinct points (the BIB-AE test points), the depth-segment fractions at
θ ≈ 60°, 90°, 120° (3DGAN) and the angular response ⟨θ_reco⟩, σ(θ_reco) vs the true θ.

>>> from caloforge.geometry import load_geometry
>>> applies(load_geometry("ild-angled")), applies(load_geometry("ds1-photons"))
(True, False)
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from caloforge.evaluate.grid import grid_centres, grid_shape, mip_per_layer, regular_grid
from caloforge.formatting import format_html
from caloforge.evaluate.render import figures_html, pyplot, save_figure
from caloforge.evaluate.suites import PlotRow, SuiteInputs
from caloforge.geometry import Geometry, load_geometry
from caloforge.io import ShowerData, iter_showers

__all__ = ["HIT_THRESHOLD_MIP", "SPECTRUM_EDGES_MIP", "GranularSummary", "applies", "summarise",
           "compare_granular", "granular_html", "plot_granular", "SCALARS", "GranularSuite", "SUITE"]

HIT_THRESHOLD_MIP = 0.5
SPECTRUM_EDGES_MIP = np.logspace(-2, 4, 61)
RADIAL_EDGES_MM = np.arange(0.0, 155.0, 5.0)
SCALARS = ("visible_mip", "n_hits", "sampling_frac", "n_nonzero", "seg1", "seg2", "seg3", "cog_x", "cog_y", "cog_z",
           "theta_reco")
ANGLE_WINDOWS_DEG = (60.0, 90.0, 120.0, 40.0, 80.0)  # 3DGAN's three angles and the BIB-AE test angles
WINDOW_HALF_DEG = 3.0
MAX_POINTS = 20  # at most this many distinct (E, θ) points are treated as test points


def applies(geometry: Geometry) -> bool:
    """True for geometries whose readout layers are all the same Cartesian grid, ≥ 5 layers deep."""
    shape = regular_grid(geometry)
    return shape is not None and shape[0] >= 5


@dataclass
class GranularSummary:
    """What one pass over a sample keeps: per-shower observables and summed histograms/profiles."""

    n: int
    incident_energy: np.ndarray
    theta: np.ndarray  # true θ [rad]; π/2 when the file has none
    scalars: dict[str, np.ndarray]
    spectrum: np.ndarray  # hit-energy counts over SPECTRUM_EDGES_MIP (+ under/overflow)
    longitudinal: np.ndarray  # Σ MIP per layer (cells ≥ threshold)
    radial: np.ndarray  # Σ MIP per ring of RADIAL_EDGES_MM (+ overflow)
    extras: dict[str, Any] = field(default_factory=dict)


def _chunks(source, geometry, chunk_size: int | None, max_showers: int | None) -> Iterator[ShowerData]:
    if isinstance(source, ShowerData):
        stop = min(len(source), max_showers or len(source))
        step = chunk_size or max(1, (64 << 20) // (4 * geometry.n_voxels))
        for lo in range(0, stop, step):
            yield source.select(slice(lo, min(lo + step, stop)))
    else:
        kw = {"stop": max_showers} if max_showers else {}
        yield from iter_showers(source, geometry, chunk_size=chunk_size, **kw)


def summarise(source: ShowerData | str | Path, geometry, *, threshold_mip: float = HIT_THRESHOLD_MIP,
              max_showers: int | None = None, chunk_size: int | None = None) -> GranularSummary:
    """Stream ``source`` once (memory: one chunk of ~64 MiB) and compute the observables above."""
    geo = load_geometry(geometry)
    Z, Y, X = grid_shape(geo, "evaluate")
    z, y, x = grid_centres(geo)
    mip = mip_per_layer(geo)
    seg = np.array_split(np.arange(Z), 3)
    energies, thetas, cols = [], [], {k: [] for k in SCALARS}
    spectrum = np.zeros(len(SPECTRUM_EDGES_MIP) + 1)
    longitudinal = np.zeros(Z)
    radial = np.zeros(len(RADIAL_EDGES_MM))
    for part in _chunks(source, geo, chunk_size, max_showers):
        n = len(part)
        e = np.asarray(part.incident_energy, dtype=np.float64)
        th = np.asarray(part.conditions.get("incident_theta", np.full(n, math.pi / 2)), dtype=np.float64)
        phi = np.asarray(part.conditions.get("incident_phi", np.zeros(n)), dtype=np.float64)
        img = np.asarray(part.showers, dtype=np.float32).reshape(n, Z, Y, X)
        cells = img / mip[None, :, None, None].astype(np.float32)
        hit = cells >= threshold_mip
        w = np.where(hit, cells, np.float32(0.0))
        total = img.reshape(n, -1).sum(1, dtype=np.float64)
        # projections of the hit energies: every moment below is a contraction of one of them
        w_yx = w.sum(1, dtype=np.float64)  # (n, Y, X)
        w_zx = w.sum(2, dtype=np.float64)  # (n, Z, X)
        w_zy = w.sum(3, dtype=np.float64)  # (n, Z, Y)
        wz, wy, wx = w_zy.sum(2), w_yx.sum(2), w_yx.sum(1)
        vis = wz.sum(1)
        cols["visible_mip"].append(vis)
        cols["n_hits"].append(hit.reshape(n, -1).sum(1).astype(np.float64))
        cols["sampling_frac"].append(total / e)
        cols["n_nonzero"].append(np.count_nonzero(img.reshape(n, -1), axis=1).astype(np.float64))
        layer = img.sum((2, 3), dtype=np.float64)
        for i, s in enumerate(seg, start=1):
            cols[f"seg{i}"].append(layer[:, s].sum(1) / np.where(total > 0, total, np.nan))
        sw = np.where(vis > 0, vis, np.nan)
        mx, my, mz = (wx @ x) / sw, (wy @ y) / sw, (wz @ z) / sw
        cols["cog_x"].append(mx)
        cols["cog_y"].append(my)
        cols["cog_z"].append(mz)
        # energy-weighted second moments → principal axis
        sxx, syy, szz = (wx @ x**2) / sw, (wy @ y**2) / sw, (wz @ z**2) / sw
        sxy = np.einsum("nyx,y,x->n", w_yx, y, x) / sw
        sxz = np.einsum("nzx,z,x->n", w_zx, z, x) / sw
        syz = np.einsum("nzy,z,y->n", w_zy, z, y) / sw
        cov = np.stack([np.stack([sxx - mx * mx, sxy - mx * my, sxz - mx * mz], -1),
                        np.stack([sxy - mx * my, syy - my * my, syz - my * mz], -1),
                        np.stack([sxz - mx * mz, syz - my * mz, szz - mz * mz], -1)], -2)
        ok = np.all(np.isfinite(cov), axis=(1, 2))
        theta_reco = np.full(n, np.nan)
        if ok.any():
            _, vecs = np.linalg.eigh(cov[ok])
            v = vecs[:, :, -1]  # largest eigenvalue
            v = v * np.where(v[:, 2:3] < 0, -1.0, 1.0)
            along = v[:, 0] * np.cos(phi[ok]) + v[:, 1] * np.sin(phi[ok])
            theta_reco[ok] = np.arctan2(v[:, 2], along)
        cols["theta_reco"].append(theta_reco)
        nonzero = cells[cells > 0]
        spectrum += np.bincount(np.searchsorted(SPECTRUM_EDGES_MIP, nonzero, side="right"),
                                minlength=len(SPECTRUM_EDGES_MIP) + 1)
        longitudinal += wz.sum(0)
        xx, yy = np.meshgrid(x, y)  # (Y, X)
        r = np.hypot(xx[None] - np.nan_to_num(mx)[:, None, None], yy[None] - np.nan_to_num(my)[:, None, None])
        ring = np.minimum(np.searchsorted(RADIAL_EDGES_MM, r, side="right") - 1, len(RADIAL_EDGES_MM) - 1)
        radial += np.bincount(ring.ravel(), weights=w_yx.ravel(), minlength=len(RADIAL_EDGES_MM))
        energies.append(e)
        thetas.append(th)
    cat = (lambda v: np.concatenate(v) if v else np.zeros(0))
    return GranularSummary(sum(len(v) for v in energies), cat(energies), cat(thetas),
                           {k: cat(v) for k, v in cols.items()}, spectrum, longitudinal, radial,
                           {"threshold_mip": threshold_mip, "mip_mev": mip.tolist()})


def _points(e: np.ndarray, th: np.ndarray) -> np.ndarray | None:
    """Distinct (E, θ) pairs of the reference, or None when they are more than MAX_POINTS (continuous)."""
    pairs = np.unique(np.round(np.stack([e, np.degrees(th)], 1), 3), axis=0)
    return pairs if len(pairs) <= MAX_POINTS else None


def _feature(ref: np.ndarray, gen: np.ndarray) -> dict[str, Any] | None:
    from caloforge.evaluate import metrics as M

    ref, gen = ref[np.isfinite(ref)], gen[np.isfinite(gen)]
    if ref.size < 2 or gen.size < 2:
        return None
    n_bins = int(np.clip(round(math.sqrt(min(ref.size, gen.size)) / 2), 8, 50))
    lo, hi = np.percentile(ref, [0.5, 99.5])
    if not hi > lo:
        lo, hi = ref.min() - 0.5, ref.max() + 0.5
    s = M.compare_feature(ref, gen, bins=np.linspace(lo, hi, n_bins + 1))
    return {k: s[k] for k in ("chi2_ndf", "separation_power", "mean_reference", "mean_generated", "std_reference",
                              "std_generated", "n_reference", "n_generated")} | {
        "edges": s["edges"], "counts_reference": s["counts_reference"], "counts_generated": s["counts_generated"]}


def _angular(ref: GranularSummary, gen: GranularSummary, rsel: np.ndarray, gsel: np.ndarray) -> dict[str, float]:
    def stats(s: GranularSummary, sel):
        d = np.degrees(s.scalars["theta_reco"][sel] - s.theta[sel])
        d = d[np.isfinite(d)]
        return (float(np.mean(d)) if d.size else math.nan, float(np.std(d)) if d.size else math.nan)

    (rb, rs), (gb, gs) = stats(ref, rsel), stats(gen, gsel)
    return {"bias_deg_reference": rb, "resolution_deg_reference": rs, "bias_deg_generated": gb,
            "resolution_deg_generated": gs}


def _group_metrics(ref: GranularSummary, gen: GranularSummary, rsel, gsel) -> dict[str, Any]:
    out: dict[str, Any] = {"n_reference": int(rsel.sum()), "n_generated": int(gsel.sum())}
    for k in ("visible_mip", "n_hits", "cog_x", "cog_y", "cog_z", "theta_reco", "seg1", "seg2", "seg3",
              "sampling_frac"):
        r, g = ref.scalars[k][rsel], gen.scalars[k][gsel]
        out[k] = {"mean_reference": float(np.nanmean(r)) if r.size else math.nan,
                  "mean_generated": float(np.nanmean(g)) if g.size else math.nan,
                  "std_reference": float(np.nanstd(r)) if r.size else math.nan,
                  "std_generated": float(np.nanstd(g)) if g.size else math.nan}
    out["angular_response"] = _angular(ref, gen, rsel, gsel)
    return out


def compare_granular(ref: GranularSummary, gen: GranularSummary) -> dict[str, Any]:
    """JSON-safe metrics of two summaries; see the module docstring."""
    from caloforge.evaluate import metrics as M

    out: dict[str, Any] = {"threshold_mip": ref.extras.get("threshold_mip"), "features": {}}
    for k in SCALARS:
        f = _feature(ref.scalars[k], gen.scalars[k])
        if f is not None:
            out["features"][k] = f
    out["hit_spectrum"] = {"edges_mip": SPECTRUM_EDGES_MIP.tolist(), "reference": ref.spectrum.tolist(),
                           "generated": gen.spectrum.tolist(),
                           "separation_power": M.separation_power(ref.spectrum, gen.spectrum)}
    out["longitudinal_mip"] = {"reference": (ref.longitudinal / max(ref.n, 1)).tolist(),
                               "generated": (gen.longitudinal / max(gen.n, 1)).tolist()}
    out["radial_mip"] = {"edges_mm": RADIAL_EDGES_MM.tolist(), "reference": (ref.radial / max(ref.n, 1)).tolist(),
                         "generated": (gen.radial / max(gen.n, 1)).tolist()}
    pts = _points(ref.incident_energy, ref.theta)
    groups: list[dict[str, Any]] = []
    if pts is not None:  # test points: match generated rows to the same (E, θ)
        for e, th in pts:
            rsel = (np.abs(ref.incident_energy - e) <= 1e-6 * e) & (np.abs(np.degrees(ref.theta) - th) < 1e-3)
            gsel = (np.abs(gen.incident_energy - e) <= 1e-6 * e) & (np.abs(np.degrees(gen.theta) - th) < 1e-3)
            groups.append({"label": f"{e / 1e3:g} GeV, {th:g}°", "energy_mev": float(e), "theta_deg": float(th),
                           **_group_metrics(ref, gen, rsel, gsel)})
    else:  # continuous θ: windows around the papers' angles
        for th in ANGLE_WINDOWS_DEG:
            rsel = np.abs(np.degrees(ref.theta) - th) < WINDOW_HALF_DEG
            gsel = np.abs(np.degrees(gen.theta) - th) < WINDOW_HALF_DEG
            if rsel.sum() >= 2 and gsel.sum() >= 2:
                groups.append({"label": f"θ {th:g}° ± {WINDOW_HALF_DEG:g}°", "theta_deg": th,
                               **_group_metrics(ref, gen, rsel, gsel)})
    out["points"] = groups
    out["angular_response"] = _angular(ref, gen, np.ones(ref.n, bool), np.ones(gen.n, bool))
    return out


def compare_sources(reference, generated, geometry, *, max_showers: int | None = None,
                    chunk_size: int | None = None) -> dict[str, Any]:
    """:func:`summarise` both samples and :func:`compare_granular` them."""
    ref = summarise(reference, geometry, max_showers=max_showers, chunk_size=chunk_size)
    gen = summarise(generated, geometry, max_showers=max_showers, chunk_size=chunk_size)
    return compare_granular(ref, gen)


# ----------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------
_LABELS = {"visible_mip": "visible energy [MIP]", "n_hits": "hits ≥ threshold", "sampling_frac": "E_vis / E_inc",
           "n_nonzero": "non-zero cells", "seg1": "front third / total", "seg2": "middle third / total",
           "seg3": "back third / total", "cog_x": "CoG x [mm]", "cog_y": "CoG y [mm]", "cog_z": "CoG z [mm]",
           "theta_reco": "θ principal axis [rad]"}


def granular_html(metrics: Mapping[str, Any]) -> str:
    """The report section for ``metrics['granular']`` (empty when absent)."""
    g = metrics.get("granular")
    if not g:
        return ""
    rows = "".join(
        f"<tr><td class='name'>{html.escape(_LABELS.get(k, k))}</td><td>{format_html(v['mean_reference'], 3)}</td>"
        f"<td>{format_html(v['mean_generated'], 3)}</td><td>{format_html(v['chi2_ndf'], 3)}</td><td>{format_html(v['separation_power'], 3)}</td></tr>"
        for k, v in g["features"].items())
    pts = "".join(
        f"<tr><td class='name'>{html.escape(p['label'])}</td><td>{p['n_reference']}/{p['n_generated']}</td>"
        f"<td>{format_html(p['visible_mip']['mean_reference'], 3)}/{format_html(p['visible_mip']['mean_generated'], 3)}</td>"
        f"<td>{format_html(p['n_hits']['mean_reference'], 3)}/{format_html(p['n_hits']['mean_generated'], 3)}</td>"
        f"<td>{format_html(p['seg1']['mean_reference'], 3)}/{format_html(p['seg1']['mean_generated'], 3)}</td>"
        f"<td>{format_html(p['seg3']['mean_reference'], 3)}/{format_html(p['seg3']['mean_generated'], 3)}</td>"
        f"<td>{format_html(p['angular_response']['bias_deg_reference'], 3)}/{format_html(p['angular_response']['bias_deg_generated'], 3)}</td>"
        f"<td>{format_html(p['angular_response']['resolution_deg_reference'], 3)}/"
        f"{format_html(p['angular_response']['resolution_deg_generated'], 3)}</td></tr>"
        for p in g["points"])
    ang = g["angular_response"]
    return (
        f"<h2>Highly granular observables (3DGAN / BIB-AE)</h2>"
        f"<p class='meta'>Cells in MIP units of their layer; hits ≥ {format_html(g['threshold_mip'], 3)} MIP. Hit-spectrum "
        f"separation power {format_html(g['hit_spectrum']['separation_power'], 3)}. Angular response (θ of the principal axis − "
        f"true θ): bias {format_html(ang['bias_deg_reference'], 3)}° / {format_html(ang['bias_deg_generated'], 3)}°, resolution "
        f"{format_html(ang['resolution_deg_reference'], 3)}° / {format_html(ang['resolution_deg_generated'], 3)}° (reference / generated).</p>"
        "<table><tr><th class='name'>observable</th><th>mean ref</th><th>mean gen</th><th>χ²/ndf</th>"
        f"<th>separation</th></tr>{rows}</table>"
        + ("<h3>Per point (reference / generated)</h3><table><tr><th class='name'>point</th><th>showers</th>"
           "<th>visible [MIP]</th><th>hits</th><th>front third</th><th>back third</th><th>θ bias [°]</th>"
           f"<th>θ resolution [°]</th></tr>{pts}</table>" if pts else ""))


def plot_granular(metrics: Mapping[str, Any], out_dir: str | Path, labels=("reference", "generated")
                  ) -> list[tuple[str, str, str]]:
    """PNG figures (hit spectrum, longitudinal and radial profiles, CoG and angle histograms) for the report:
    ``(section, title, file name)`` rows."""
    g = metrics.get("granular")
    if not g:
        return []
    plt = pyplot()
    out_dir = Path(out_dir)
    rows = []

    def step(ax, edges, counts, label, density=True):
        c = np.asarray(counts, dtype=np.float64)
        if density and c.sum() > 0:
            c = c / c.sum()
        ax.stairs(c, edges, label=label)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    hs = g["hit_spectrum"]
    edges = np.asarray(hs["edges_mip"])
    for key, lab in zip(("reference", "generated"), labels):
        step(axes[0], edges, np.asarray(hs[key])[1:-1], lab)
    axes[0].set(xscale="log", yscale="log", xlabel="cell energy [MIP]", ylabel="fraction of cells")
    axes[0].axvline(g["threshold_mip"], ls=":", c="grey")
    for key, lab in zip(("reference", "generated"), labels):
        lp = np.asarray(g["longitudinal_mip"][key])
        axes[1].stairs(lp, np.arange(len(lp) + 1), label=lab)
        rp = np.asarray(g["radial_mip"][key])
        axes[2].stairs(rp, np.asarray(g["radial_mip"]["edges_mm"] + [g["radial_mip"]["edges_mm"][-1] + 5]), label=lab)
    axes[1].set(yscale="log", xlabel="layer", ylabel="mean energy [MIP]")
    axes[2].set(yscale="log", xlabel="radius from CoG [mm]", ylabel="mean energy [MIP]")
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, out_dir / "granular_profiles.png", tight=False)
    rows.append(("profiles", "hit spectrum [MIP], longitudinal and radial profiles", "granular_profiles.png"))

    names = [k for k in SCALARS if k in g["features"]]
    fig, axes = plt.subplots(2, math.ceil(len(names) / 2), figsize=(3.2 * math.ceil(len(names) / 2), 6))
    for ax, k in zip(np.ravel(axes), names):
        f = g["features"][k]
        e = np.asarray(f["edges"])
        for key, lab in (("counts_reference", labels[0]), ("counts_generated", labels[1])):
            step(ax, e, np.asarray(f[key])[1:-1], lab)
        ax.set_xlabel(_LABELS.get(k, k), fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_dir / "granular_features.png", tight=False)
    rows.append(("features", "granular observables (3DGAN / BIB-AE)", "granular_features.png"))
    return rows


class GranularSuite:
    """The 3DGAN / BIB-AE observables as an observable suite (``metrics["granular"]``)."""

    key = "granular"
    title = "granular observables"

    def applies(self, geometry: Geometry, data: SuiteInputs) -> bool:
        return applies(geometry)

    def compute(self, source: ShowerData | str | Path, data: SuiteInputs) -> GranularSummary:
        return summarise(source, data.geometry, max_showers=data.max_showers, chunk_size=data.chunk_size)

    def compare(self, reference: GranularSummary, generated: GranularSummary, data: SuiteInputs) -> dict[str, Any]:
        return compare_granular(reference, generated)

    def plot(self, section: Mapping[str, Any], geometry: Geometry | str, out_dir: Path,
             labels: Sequence[str]) -> list[PlotRow]:
        return plot_granular({"granular": section}, out_dir, tuple(labels))

    def html(self, section: Mapping[str, Any] | None, plots: Sequence[PlotRow], out_dir: Path | None) -> str:
        return granular_html({"granular": section}) + figures_html(plots, out_dir) if section else ""


SUITE = GranularSuite()

