"""The validation observables of the CaloGAN and ATLAS GAN papers, for their geometries.

``calogan`` (Paganini et al., PRL 2018, Figs. 1–3): per layer E_i/E_tot, the total
energy, shower depth and depth width, lateral width per layer, the fraction of lit
cells per layer (the paper's "sparsity"), the average shower image per layer, the
nearest-neighbour memorisation check (the nearest training shower of generated
ones, shown side by side) and — with samples of several particle types — the
classification proxy: a fully connected particle classifier trained on reference
(simulator) showers and evaluated on generated ones, and vice versa.

``atlas-4layer`` (Ghosh & Rousseau 2019): per incident-energy point the total
(uncalibrated) energy — its mean, resolution σ/μ and χ² —, Eratio in the strips,
f3 (back-layer fraction), weta in the strips (weta1, strip units) and the energy in
every layer, and the average shower η against the particle's impact η
(``impact_eta`` condition) in the middle layer and in the strips.

Shower-shape code is :mod:`caloforge.evaluate.features`; this module picks the
papers' sets, bins them with :func:`caloforge.evaluate.metrics.compare_feature` and
draws the papers' plots.  :func:`paper_observables` returns ``None`` for other
geometries, so :func:`caloforge.evaluate.compare` can call it unconditionally.

>>> import numpy as np
>>> from caloforge.io import ShowerData
>>> rng = np.random.default_rng(0)
>>> toy = lambda n: ShowerData(np.full(n, 1e4), rng.exponential(1.0, (n, 504)))
>>> m = paper_observables(toy(200), toy(200), "calogan")
>>> sorted(m["features"])[:3], m["paper"]
(['etot_gev', 'frac_layer_0', 'frac_layer_1'], 'calogan')
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from caloforge.errors import DataError
from caloforge.evaluate import features as F
from caloforge.evaluate.metrics import compare_feature, memorisation
from caloforge.formatting import format_html
from caloforge.evaluate.render import figure_html, pyplot, save_figure
from caloforge.evaluate.suites import PlotRow, SuiteInputs
from caloforge.geometry import Geometry, load_geometry
from caloforge.io import ShowerData, read_showers

__all__ = ["PAPER_GEOMETRIES", "paper_observables", "calogan_observables", "atlas_observables",
           "nearest_neighbours", "particle_classifier_proxy", "write_paper_plots", "paper_html",
           "ETA_MM_PER_UNIT", "ETA_CENTRE", "PaperSuite", "SUITE"]

PAPER_GEOMETRIES = {"calogan": "calogan", "atlas-4layer": "atlas"}
ETA_MM_PER_UNIT = 1500.0  # atlas-4layer: 37.5 mm middle cell ≡ Δη 0.025
ETA_CENTRE = 0.225  # the ATLAS GAN preset's centre of 0.20 < η < 0.25
_HIST_KEYS = ("separation_power", "chi2_ndf", "mean_reference", "mean_generated", "std_reference", "std_generated")


def _load(source: ShowerData | str | Path, max_showers: int | None) -> ShowerData:
    data = source if isinstance(source, ShowerData) else read_showers(source, stop=max_showers)
    if max_showers is not None and len(data) > max_showers:
        data = ShowerData(data.incident_energy[:max_showers], data.showers[:max_showers],
                          {k: v[:max_showers] for k, v in data.conditions.items()})
    return data


def _feature(ref: np.ndarray, gen: np.ndarray, bins: int = 30) -> dict[str, Any]:
    return compare_feature(ref, gen, bins=bins)


# ----------------------------------------------------------------------------------
# CaloGAN
# ----------------------------------------------------------------------------------
def _calogan_features(data: ShowerData, geo: Geometry) -> dict[str, np.ndarray]:
    s = F.calogan_shapes(data.showers, geo)
    out = {"etot_gev": np.asarray(data.showers, np.float64).sum(1) / 1e3,
           "shower_depth": s["shower_depth"], "shower_depth_width": s["shower_depth_width"]}
    for i in range(geo.n_layers):
        out[f"frac_layer_{i}"] = s["frac"][:, i]
        out[f"lateral_width_layer_{i}"] = s["lateral_width"][:, i]
        out[f"sparsity_layer_{i}"] = s["nonzero_fraction"][:, i]
    return out


def nearest_neighbours(training: np.ndarray, generated: np.ndarray, n: int = 5, seed: int = 0) -> dict[str, Any]:
    """For ``n`` random generated showers, the nearest training shower (Euclidean, as the paper's Fig. 2)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(generated), size=min(n, len(generated)), replace=False))
    g = np.asarray(generated[pick], dtype=np.float64)
    t = np.asarray(training, dtype=np.float64)
    d2 = (g * g).sum(1)[:, None] + (t * t).sum(1)[None, :] - 2.0 * g @ t.T
    j = np.argmin(d2, axis=1)
    return {"generated_index": pick.tolist(), "training_index": j.tolist(),
            "distance": np.sqrt(((g - t[j]) ** 2).sum(1)).tolist(),
            "generated": g.tolist(), "training": t[j].tolist()}


def calogan_observables(reference: ShowerData, generated: ShowerData, geometry: Geometry | str = "calogan",
                        training: ShowerData | None = None, seed: int = 0) -> dict[str, Any]:
    """The CaloGAN paper's validation set; see the module docstring."""
    geo = load_geometry(geometry)
    fr, fg = _calogan_features(reference, geo), _calogan_features(generated, geo)
    out: dict[str, Any] = {"paper": "calogan", "features": {k: _feature(fr[k], fg[k]) for k in fr}}
    out["mean_images"] = {
        "reference": [x.mean(0).tolist() for x in geo.split(np.asarray(reference.showers, np.float64))],
        "generated": [x.mean(0).tolist() for x in geo.split(np.asarray(generated.showers, np.float64))]}
    if training is not None:
        mem = memorisation(training.showers, generated.showers, reference.showers)
        out["memorisation"] = {k: v for k, v in mem.items() if not isinstance(v, np.ndarray)}
        out["nearest_neighbours"] = nearest_neighbours(training.showers, generated.showers, seed=seed)
    return out


def particle_classifier_proxy(reference: Mapping[str, ShowerData], generated: Mapping[str, ShowerData], *,
                              seed: int = 0, epochs: int = 20, n_hidden: int = 128, n_layers: int = 5,
                              max_per_particle: int = 5000) -> dict[str, Any]:
    """The paper's classification proxy: a fully connected particle classifier (six linear layers,
    on log(1 + E_cell/MeV)) trained on one sample type and tested on the other.

    Returns accuracies ``train_reference_test_reference``, ``train_reference_test_generated``,
    ``train_generated_test_generated``, ``train_generated_test_reference`` (test parts never trained on).
    """
    import torch

    names = sorted(set(reference) & set(generated))
    if len(names) < 2:
        raise DataError("the classification proxy needs at least two particle types in both samples")

    def split(samples: Mapping[str, ShowerData]):
        xs, ys = [], []
        for k, name in enumerate(names):
            s = np.asarray(samples[name].showers[:max_per_particle], np.float64)
            xs.append(np.log1p(np.clip(s, 0, None)))
            ys.append(np.full(len(s), k))
        x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
        idx = np.random.default_rng(seed).permutation(len(x))
        cut = int(0.7 * len(x))
        return (x[idx[:cut]], y[idx[:cut]]), (x[idx[cut:]], y[idx[cut:]])

    def fit(x: np.ndarray, y: np.ndarray):
        torch.manual_seed(seed)
        dims = [x.shape[1]] + [n_hidden] * n_layers
        layers: list[torch.nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.LeakyReLU()]
        net = torch.nn.Sequential(*layers, torch.nn.Linear(n_hidden, len(names)))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for b in torch.randperm(len(xt), generator=gen).split(256):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
                opt.step()
        return net

    def accuracy(net, x: np.ndarray, y: np.ndarray) -> float:
        with torch.no_grad():
            return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())

    (rx, ry), (rtx, rty) = split(reference)
    (gx, gy), (gtx, gty) = split(generated)
    on_ref, on_gen = fit(rx, ry), fit(gx, gy)
    return {"particles": names,
            "train_reference_test_reference": accuracy(on_ref, rtx, rty),
            "train_reference_test_generated": accuracy(on_ref, gtx, gty),
            "train_generated_test_generated": accuracy(on_gen, gtx, gty),
            "train_generated_test_reference": accuracy(on_gen, rtx, rty)}


# ----------------------------------------------------------------------------------
# ATLAS
# ----------------------------------------------------------------------------------
def _points(e: np.ndarray) -> np.ndarray:
    return np.unique(np.round(np.asarray(e, np.float64), 3))


def shower_eta(showers: np.ndarray, geometry: Geometry, layer: str = "middle") -> np.ndarray:
    """Energy-weighted η of a layer (its x over the η scale of ``atlas-4layer``, about the preset's centre)."""
    pos = F.atlas_layers(geometry)
    i = pos[layer]
    lay = geometry.layers[i]
    block = np.asarray(showers[:, geometry.layer_slices[i]], np.float64).reshape(len(showers), lay.ny, lay.nx)
    x = (np.arange(lay.nx) - 0.5 * (lay.nx - 1)) * lay.cell_x
    prof = block.sum(1)
    tot = prof.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ETA_CENTRE + np.where(tot > 0, (prof * x).sum(1) / np.where(tot > 0, tot, 1), 0.0) / ETA_MM_PER_UNIT


def _eta_profile(eta: np.ndarray, shower: np.ndarray, edges: np.ndarray) -> list[float | None]:
    idx = np.digitize(eta, edges) - 1
    return [float(shower[idx == b].mean()) if np.any(idx == b) else None for b in range(len(edges) - 1)]


def atlas_observables(reference: ShowerData, generated: ShowerData, geometry: Geometry | str = "atlas-4layer",
                      eta_bins: int = 10) -> dict[str, Any]:
    """The ATLAS GAN slides' validation set per energy point; see the module docstring."""
    geo = load_geometry(geometry)
    if F.atlas_layers(geo) is None:
        raise DataError(f"{geo.name}: the ATLAS observables need strips and back layers")

    def feats(d: ShowerData) -> dict[str, np.ndarray]:
        sh = np.clip(np.asarray(d.showers, np.float64), 0, None)
        a = F.atlas_shapes(sh, geo)
        le = geo.layer_energy(sh)
        out = {"etot_gev": sh.sum(1) / 1e3, "Eratio": a["Eratio"], "f3": a["f3"], "weta1": a["weta1"]}
        for i, layer in enumerate(geo.layers):
            out[f"e_{layer.name}_gev"] = le[:, i] / 1e3
        return out

    fr, fg = feats(reference), feats(generated)
    points = []
    for e in _points(reference.incident_energy):
        r = np.isclose(reference.incident_energy, e, rtol=1e-6)
        g = np.isclose(generated.incident_energy, e, rtol=1e-6)
        if not g.any():
            continue
        row: dict[str, Any] = {"energy_gev": e / 1e3, "n_reference": int(r.sum()), "n_generated": int(g.sum())}
        for k in fr:
            row[k] = _feature(fr[k][r], fg[k][g], bins=20)
        et_r, et_g = fr["etot_gev"][r], fg["etot_gev"][g]
        row["resolution_reference"] = float(et_r.std() / et_r.mean()) if et_r.mean() > 0 else None
        row["resolution_generated"] = float(et_g.std() / et_g.mean()) if et_g.mean() > 0 else None
        points.append(row)
    out: dict[str, Any] = {"paper": "atlas", "energy_points": points}
    if "impact_eta" in reference.conditions and "impact_eta" in generated.conditions:
        lo, hi = np.percentile(reference.conditions["impact_eta"], [0, 100])
        edges = np.linspace(lo, hi + 1e-9, eta_bins + 1)
        out["eta_profile"] = {"edges": edges.tolist()}
        for layer in ("middle", "strips"):
            out["eta_profile"][layer] = {
                "reference": _eta_profile(reference.conditions["impact_eta"], shower_eta(reference.showers, geo, layer),
                                          edges),
                "generated": _eta_profile(generated.conditions["impact_eta"], shower_eta(generated.showers, geo, layer),
                                          edges)}
    return out


# ----------------------------------------------------------------------------------
# dispatch, plots, HTML
# ----------------------------------------------------------------------------------
def paper_observables(reference: ShowerData | str | Path, generated: ShowerData | str | Path,
                      geometry: Geometry | str, *, training: ShowerData | str | Path | None = None,
                      max_showers: int | None = 50_000, seed: int = 0) -> dict[str, Any] | None:
    """The paper observables of ``geometry`` (``calogan`` or ``atlas-4layer``), else ``None``."""
    geo = load_geometry(geometry)
    kind = PAPER_GEOMETRIES.get(geo.name)
    if kind is None:
        return None
    ref, gen = _load(reference, max_showers), _load(generated, max_showers)
    if kind == "calogan":
        train = _load(training, max_showers) if training is not None else None
        return calogan_observables(ref, gen, geo, train, seed)
    return atlas_observables(ref, gen, geo)


def write_paper_plots(m: Mapping[str, Any], geometry: Geometry | str, out_dir: str | Path,
                      labels: tuple[str, str] = ("reference", "generated")) -> list[tuple[str, str]]:
    """PNGs of the paper's figures into ``out_dir``; returns (title, file name) pairs."""
    plt = pyplot()
    geo = load_geometry(geometry)
    out_dir = Path(out_dir)
    rows: list[tuple[str, str]] = []

    def hist_grid(feats: Mapping[str, Any], name: str, title: str) -> None:
        keys = list(feats)
        cols = 4
        nrow = -(-len(keys) // cols)
        fig, axes = plt.subplots(nrow, cols, figsize=(4 * cols, 3 * nrow), squeeze=False)
        for ax, k in zip(axes.flat, keys):
            f = feats[k]
            edges = np.asarray(f["edges"])
            for c, lab, ls in (("counts_reference", labels[0], "-"), ("counts_generated", labels[1], "--")):
                counts = np.asarray(f[c][1:-1], np.float64) if len(f[c]) == len(edges) + 1 else np.asarray(f[c])
                ax.stairs(counts / max(counts.sum(), 1), edges, label=lab, linestyle=ls)
            ax.set_title(f"{k}  χ²/ndf {f['chi2_ndf']:.2f}" if f.get("chi2_ndf") is not None else k, fontsize=9)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(title)
        save_figure(fig, out_dir / name)
        rows.append((title, name))

    if m.get("paper") == "calogan":
        hist_grid(m["features"], "paper_calogan_shapes.png", "CaloGAN shower shapes (PRL 2018, Fig. 3)")
        imgs = m["mean_images"]
        fig, axes = plt.subplots(2, geo.n_layers, figsize=(4 * geo.n_layers, 5), squeeze=False)
        for i in range(geo.n_layers):
            for r, key in enumerate(("reference", "generated")):
                a = np.asarray(imgs[key][i])
                axes[r, i].imshow(np.log10(a + 1e-3), aspect="auto", cmap="viridis")
                axes[r, i].set_title(f"{labels[r]} layer {i}", fontsize=9)
        fig.suptitle("Average shower per layer, log10(E/MeV) (PRL 2018, Fig. 1)")
        save_figure(fig, out_dir / "paper_calogan_mean_images.png")
        rows.append(("Average shower per layer", "paper_calogan_mean_images.png"))
        nn_ = m.get("nearest_neighbours")
        if nn_:
            k = len(nn_["generated"])
            fig, axes = plt.subplots(2 * geo.n_layers, k, figsize=(2.4 * k, 1.6 * 2 * geo.n_layers), squeeze=False)
            for j in range(k):
                g = geo.split(np.asarray(nn_["generated"][j])[None])
                t = geo.split(np.asarray(nn_["training"][j])[None])
                for i in range(geo.n_layers):
                    for r, (img, lab) in enumerate(((g[i][0], "generated"), (t[i][0], "nearest training"))):
                        ax = axes[2 * i + r, j]
                        ax.imshow(np.log10(img + 1e-3), aspect="auto", cmap="viridis")
                        ax.set_xticks([]), ax.set_yticks([])
                        if j == 0:
                            ax.set_ylabel(f"L{i} {lab}", fontsize=7)
            fig.suptitle("Generated showers and their nearest training showers (PRL 2018, Fig. 2)")
            save_figure(fig, out_dir / "paper_calogan_nearest.png")
            rows.append(("Nearest training shower of generated ones", "paper_calogan_nearest.png"))
    elif m.get("paper") == "atlas":
        for key in ("etot_gev", "Eratio", "f3", "weta1"):
            feats = {f"{p['energy_gev']:g} GeV": p[key] for p in m["energy_points"]}
            hist_grid(feats, f"paper_atlas_{key}.png", f"ATLAS GAN: {key} per energy point")
        prof = m.get("eta_profile")
        if prof:
            edges = np.asarray(prof["edges"])
            mid = 0.5 * (edges[1:] + edges[:-1])
            fig, axes = plt.subplots(1, 2, figsize=(10, 4))
            for ax, layer in zip(axes, ("middle", "strips")):
                for key, mk in (("reference", "o"), ("generated", "s")):
                    y = np.array([np.nan if v is None else v for v in prof[layer][key]])
                    ax.plot(mid, y, mk, label=labels[0] if key == "reference" else labels[1])
                ax.plot(mid, mid, "k:", lw=1)
                ax.set_xlabel("particle impact η"), ax.set_ylabel(f"average shower η ({layer})")
            axes[0].legend()
            save_figure(fig, out_dir / "paper_atlas_eta.png")
            rows.append(("Average η vs particle η", "paper_atlas_eta.png"))
    return rows


def paper_html(m: Mapping[str, Any] | None, plots: list[tuple[str, str]] = (), out_dir=None) -> str:
    """The report section of the paper observables (empty for other geometries)."""
    if not m:
        return ""
    parts = []
    if m.get("paper") == "calogan":
        parts.append("<h2>CaloGAN paper observables</h2><table><tr><th class='name'>observable</th>"
                     "<th>χ²/ndf</th><th>separation</th><th>mean ref</th><th>mean gen</th></tr>")
        for k, f in m["features"].items():
            parts.append(f"<tr><td class='name'>{html.escape(k)}</td><td>{format_html(f.get('chi2_ndf'), 3)}</td>"
                         f"<td>{format_html(f.get('separation_power'), 3)}</td><td>{format_html(f.get('mean_reference'), 3)}</td>"
                         f"<td>{format_html(f.get('mean_generated'), 3)}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<h2>ATLAS GAN paper observables (χ²/ndf per energy point)</h2><table><tr>"
                     "<th class='name'>E [GeV]</th><th>E_tot</th><th>σ/μ ref</th><th>σ/μ gen</th><th>Eratio</th>"
                     "<th>f3</th><th>weta1</th></tr>")
        for p in m["energy_points"]:
            parts.append(f"<tr><td class='name'>{p['energy_gev']:g}</td>"
                         + "".join(f"<td>{format_html(v, 3)}</td>" for v in (
                             p["etot_gev"].get("chi2_ndf"), p["resolution_reference"], p["resolution_generated"],
                             p["Eratio"].get("chi2_ndf"), p["f3"].get("chi2_ndf"), p["weta1"].get("chi2_ndf")))
                         + "</tr>")
        parts.append("</table>")
    for title, f in plots:  # embedded, like every plot of the report: report.html travels alone
        parts.append(figure_html(title, f, out_dir))
    return "".join(parts)


class PaperSuite:
    """The CaloGAN / ATLAS GAN papers' own observables as an observable suite (``metrics["paper"]``)."""

    key = "paper"
    title = "paper observables"
    max_showers = 50_000  # showers per sample when the evaluation sets no limit (they are loaded whole)

    def applies(self, geometry: Geometry, data: SuiteInputs) -> bool:
        return geometry.name in PAPER_GEOMETRIES

    def compute(self, source: ShowerData | str | Path, data: SuiteInputs) -> ShowerData:
        return _load(source, data.max_showers or self.max_showers)

    def compare(self, reference: ShowerData, generated: ShowerData, data: SuiteInputs) -> dict[str, Any] | None:
        if PAPER_GEOMETRIES[data.geometry.name] == "atlas":
            return atlas_observables(reference, generated, data.geometry)
        training = self.compute(data.training, data) if data.training is not None else None
        return calogan_observables(reference, generated, data.geometry, training, data.seed)

    def plot(self, section: Mapping[str, Any], geometry: Geometry | str, out_dir: Path,
             labels: Sequence[str]) -> list[PlotRow]:
        return [(self.key, title, f) for title, f in write_paper_plots(section, geometry, out_dir, tuple(labels))]

    def html(self, section: Mapping[str, Any] | None, plots: Sequence[PlotRow], out_dir: Path | None) -> str:
        return paper_html(section, [(title, f) for _, title, f in plots], out_dir)


SUITE = PaperSuite()

