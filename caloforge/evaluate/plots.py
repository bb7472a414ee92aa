"""PNG plots of an :class:`~caloforge.evaluate.result.EvaluationResult` (matplotlib Agg, mplhep style).

* feature histograms with a generated/reference ratio panel, grouped per layer;
* per-incident-energy grids of the same;
* average shower images per layer (polar plots for r–α layers, cell maps for
  Cartesian ones) with the generated/reference ratio;
* longitudinal and radial profiles, inclusive and per energy point;
* the voxel-energy spectrum.

:func:`plot_all` writes everything and returns ``(section, title, filename)`` rows
for the HTML report.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from caloforge.evaluate.render import pyplot, save_figure
from caloforge.evaluate.result import EvaluationResult, FeatureHistogram

__all__ = ["plot_all", "feature_axis", "ratio_limits", "feature_grid", "per_energy_grid", "mean_images", "profiles", "group_features"]

REF_COLOUR = "#4a6fa5"
GEN_COLOUR = "#d1495b"
MAX_PANELS = 48  # per figure


_RC = {"font.size": 11, "axes.labelsize": 11, "axes.titlesize": 11, "legend.fontsize": 9,
       "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.dpi": 80, "savefig.dpi": 80,
       "xtick.minor.visible": False, "ytick.minor.visible": False}


def _styled(fn):
    """Run a plotting function inside the mplhep ROOT style without touching global rcParams."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        plt = pyplot()
        import mplhep

        with plt.style.context([mplhep.style.ROOT, _RC]):
            return fn(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------------
# grouping
# ----------------------------------------------------------------------------------
_LAYER_RE = re.compile(r"^(?P<stem>.*?)(?:_?layer)?_?(?P<idx>\d+)$", re.IGNORECASE)


def group_features(names: Iterable[str]) -> dict[str, list[str]]:
    """Group per-layer features (``E_layer_3``, ``width_eta_12``, …) by their stem.

    Features without a trailing index form a group of their own.

    >>> group_features(["E_layer_0", "E_layer_1", "Etot_Einc"])
    {'E': ['E_layer_0', 'E_layer_1'], 'Etot_Einc': ['Etot_Einc']}
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        m = _LAYER_RE.match(name)
        key = m.group("stem") if m and m.group("stem") else name
        groups.setdefault(key, []).append(name)
    # a "group" of one indexed feature reads better under its own name
    return {(k if len(v) > 1 else v[0]): v for k, v in groups.items()}


# ----------------------------------------------------------------------------------
# histograms
# ----------------------------------------------------------------------------------
def _plot_edges(h: "FeatureHistogram") -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Edges and normalised densities with the under/overflow folded into the end bins."""
    edges = np.asarray(h.edges, float)
    out = []
    for counts in (h.reference, h.generated):
        c = np.asarray(counts, float).copy()
        if len(c) == len(edges) + 1:  # fold flow bins so nothing disappears from the plot
            c[1] += c[0]
            c[-2] += c[-1]
            c = c[1:-1]
        total = c.sum()
        out.append(c / total if total > 0 else c)
    widths = np.diff(edges)
    log = edges[0] > 0 and edges[-1] / edges[0] > 100 and not np.allclose(widths, widths[0])
    return edges, out[0], out[1], log


# (pattern, axis label, unit): the features of caloforge.evaluate.features and their units
_FEATURE_AXES = [
    (r"E_tot", "E_tot", "MeV"),
    (r"E_ratio", "E_tot / E_inc", ""),
    (r"E_layer_(\d+)", "E in layer {0}", "MeV"),
    (r"sparsity_layer_(\d+)", "sparsity in layer {0}", ""),
    (r"CE_eta_layer_(\d+)", "centre of energy x (η) in layer {0}", "mm"),
    (r"CE_phi_layer_(\d+)", "centre of energy y (φ) in layer {0}", "mm"),
    (r"CE_r_layer_(\d+)", "centre of energy r in layer {0}", "mm"),
    (r"width_eta_layer_(\d+)", "width in x (η) in layer {0}", "mm"),
    (r"width_phi_layer_(\d+)", "width in y (φ) in layer {0}", "mm"),
    (r"width_r_layer_(\d+)", "width in r in layer {0}", "mm"),
    (r"n_hits", "number of hits (cells > 0)", ""),
    (r"CoG_([xyz])", "centre of gravity {0}", "mm"),
    (r"frac_layer_(\d+)", "energy fraction in layer {0}", ""),
    (r"depth_weighted_energy", "Σ layer × E_layer", "MeV"),
    (r"shower_depth", "shower depth", "layers"),
    (r"shower_depth_width", "shower depth width", "layers"),
    (r"lateral_width_layer_(\d+)", "lateral width in layer {0}", "mm"),
    (r"nonzero_fraction_layer_(\d+)", "fraction of non-empty cells in layer {0}", ""),
    (r"atlas_Eratio", "E_ratio (strips)", ""),
    (r"atlas_f([13])", "f{0}", ""),
    (r"atlas_weta1", "w_η1", "strips"),
    (r"atlas_weta2", "w_η2", "mm"),
]


def feature_axis(name: str) -> tuple[str, str]:
    """``(label, unit)`` of a feature for plot axes; unit ``""`` when dimensionless.

    >>> feature_axis("E_layer_3"), feature_axis("E_ratio"), feature_axis("mystery")
    (('E in layer 3', 'MeV'), ('E_tot / E_inc', ''), ('mystery', ''))
    """
    for pattern, label, unit in _FEATURE_AXES:
        m = re.fullmatch(pattern, name)
        if m:
            return label.format(*m.groups()), unit
    return name, ""


def _with_unit(label: str, unit: str) -> str:
    return f"{label} [{unit}]" if unit else label


def ratio_limits(ratio: np.ndarray, err: np.ndarray | None = None) -> tuple[float, float]:
    """y range of a gen/ref panel chosen from the data: symmetric about 1, covering the
    points (their 90th percentile deviation, so a lone empty-bin outlier does not flatten
    the rest), at least 1 ± 0.1 and at most 0 … 4.

    >>> ratio_limits(np.array([0.98, 1.01, 1.03]))
    (0.9, 1.1)
    >>> lo, hi = ratio_limits(np.array([0.2, 1.0, 1.9])); bool(lo < 0.3 and hi > 1.8)
    True
    """
    r = np.asarray(ratio, float)
    dev = np.abs(r[np.isfinite(r)] - 1.0)
    if err is not None:  # a point's error bar should fit too, when it is not huge
        e = np.asarray(err, float)[np.isfinite(r)]
        dev = np.maximum(dev, np.where(np.isfinite(e) & (e < 1.0), dev + e, dev))
    # few points (profiles): all of them; many: all but the wildest tenth
    span = float(np.percentile(dev, 90) if dev.size >= 10 else dev.max(initial=0.0)) * 1.15 if dev.size else 0.1
    span = float(np.clip(span, 0.1, 3.0))
    return round(max(0.0, 1.0 - span), 3), round(1.0 + span, 3)


def _ratio_panel(rax, x, ratio, err=None, stairs_edges=None) -> None:
    """gen/ref with a data-driven range; points beyond it are drawn as arrows at the edge."""
    lo, hi = ratio_limits(ratio, err)
    if stairs_edges is not None:
        rax.stairs(np.clip(ratio, lo, hi), stairs_edges, color=GEN_COLOUR, lw=1.2, baseline=None)
    else:
        inside = np.isfinite(ratio) & (ratio >= lo) & (ratio <= hi)
        rax.errorbar(x[inside], ratio[inside], yerr=None if err is None else np.where(np.isfinite(err), err, 0)[inside],
                     fmt="o", ms=2, color=GEN_COLOUR, lw=0.8)
        above, below = np.isfinite(ratio) & (ratio > hi), np.isfinite(ratio) & (ratio < lo)
        rax.plot(x[above], np.full(above.sum(), hi), "^", ms=4, color=GEN_COLOUR, clip_on=False)
        rax.plot(x[below], np.full(below.sum(), lo), "v", ms=4, color=GEN_COLOUR, clip_on=False)
    rax.axhline(1.0, color="grey", lw=0.8)
    rax.set_ylim(lo, hi)
    half = 0.5 * (hi - lo)  # ticks inside the panel: they never touch the main panel's labels
    rax.set_yticks([1.0 - 0.5 * half, 1.0, 1.0 + 0.5 * half], [f"{1.0 - 0.5 * half:.3g}", "1", f"{1.0 + 0.5 * half:.3g}"])
    rax.set_ylabel("gen/ref", fontsize=8)


def _headroom(ax, log: bool, fraction: float = 0.3) -> None:
    """Leave the top ``fraction`` of a panel free for text (nothing covers the bars)."""
    lo, hi = ax.get_ylim()
    if log:
        ax.set_ylim(lo, lo * (hi / lo) ** (1 / (1 - fraction)))
    else:
        ax.set_ylim(lo, lo + (hi - lo) / (1 - fraction))


def _hist_panel(ax, rax, h: "FeatureHistogram", labels: Sequence[str], title: str, legend: bool = False,
                xlabel: str | None = None) -> None:
    from matplotlib.ticker import MaxNLocator

    edges, r, g, log = _plot_edges(h)
    widths = np.diff(edges)
    ax.stairs(r / widths, edges, fill=True, color=REF_COLOUR, alpha=0.35, label=labels[0])
    ax.stairs(r / widths, edges, color=REF_COLOUR, lw=1.0)
    ax.stairs(g / widths, edges, color=GEN_COLOUR, lw=1.5, label=labels[1])
    if log:
        ax.set_xscale("log")
        rax.set_xscale("log")
    log_y = (r > 0).sum() > 2 and (r[r > 0].max() / r[r > 0].min()) > 1e3
    if log_y:
        ax.set_yscale("log")
    _headroom(ax, log_y)
    sp = h.stats.get("separation_power")
    c2 = h.stats.get("chi2_ndf")
    txt = []
    if c2 is not None and math.isfinite(c2):
        txt.append(f"χ²/ndf {c2:.3g}")
    if sp is not None and math.isfinite(sp):
        txt.append(f"sep. {sp:.2g}")
    ax.set_title(title, fontsize=10)
    if txt:  # in the free band at the top, clear of the bars
        ax.text(0.97, 0.95, "   ".join(txt), transform=ax.transAxes, ha="right", va="top", fontsize=8)
    if legend:
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    label, unit = feature_axis(h.name)
    ax.set_ylabel(f"1/N dN/dx [1/{unit}]" if unit else "1/N dN/dx", fontsize=9)
    ax.yaxis.set_major_locator(MaxNLocator(5, prune="lower")) if not log_y else None
    # ratio generated / reference with Poisson errors of both (per-bin counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(r > 0, g / r, np.nan)
        n_r = max(float(np.sum(h.reference)), 1.0)
        n_g = max(float(np.sum(h.generated)), 1.0)
        err = ratio * np.sqrt(1.0 / np.maximum(r * n_r, 1e-12) + 1.0 / np.maximum(g * n_g, 1e-12))
    centres = np.sqrt(edges[:-1] * edges[1:]) if log else 0.5 * (edges[:-1] + edges[1:])
    _ratio_panel(rax, centres, ratio, err)
    rax.set_xlabel(xlabel or _with_unit(label, unit), fontsize=9)
    ax.tick_params(labelbottom=False)


@_styled
def feature_grid(hists: Sequence["FeatureHistogram"], path: Path, title: str = "",
                 labels: Sequence[str] = ("reference", "generated"), panel_titles: Sequence[str] | None = None,
                 ncols: int | None = None) -> Path:
    """Histograms (with ratio panels) of several features in one figure; one legend above them."""
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D

    plt = pyplot()
    n = len(hists)
    ncols = ncols or min(n, 5)
    nrows = math.ceil(n / ncols)
    top = 1.15 if title else 0.75  # inches above the panels: title, legend, panel titles
    fig = plt.figure(figsize=(3.6 * ncols + 0.5, 3.9 * nrows + top))
    # main, ratio and a spacer row (x label, then the next row's title) per feature row
    gs = fig.add_gridspec(nrows * 3, ncols, height_ratios=[3, 1, 0.85] * nrows, hspace=0.08, wspace=0.38)
    for i, h in enumerate(hists):
        row, col = divmod(i, ncols)
        ax = fig.add_subplot(gs[3 * row, col])
        rax = fig.add_subplot(gs[3 * row + 1, col], sharex=ax)
        _hist_panel(ax, rax, h, labels, panel_titles[i] if panel_titles else h.name,
                    xlabel=_with_unit(*feature_axis(h.name)) if panel_titles else None)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.1 / height, top=1 - top / height)
    # one legend for all panels, above them: it covers no data
    handles = [Patch(facecolor=REF_COLOUR, alpha=0.35, edgecolor=REF_COLOUR, label=labels[0]),
               Line2D([], [], color=GEN_COLOUR, lw=1.5, label=labels[1]),
               Line2D([], [], color=GEN_COLOUR, marker="o", ms=3, lw=0, label=f"{labels[1]} / {labels[0]}")]
    fig.legend(handles=handles, loc="upper center", ncol=3, frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 1 - (0.42 if title else 0.05) / height))
    if title:
        fig.suptitle(title, fontsize=13, y=1 - 0.12 / height)
    save_figure(fig, path, tight=False)
    return path


def per_energy_grid(h: "FeatureHistogram", energy_points: Sequence[dict], path: Path,
                    labels: Sequence[str] = ("reference", "generated")) -> Path | None:
    """One feature at every incident-energy point (the grids that catch energy-point-specific bugs)."""
    pairs = [(p, ph) for p, ph in zip(energy_points, h.per_energy) if ph is not None]
    if not pairs:
        return None
    return feature_grid([ph for _, ph in pairs], path, title=f"{h.name} per incident energy", labels=labels,
                        panel_titles=[p["label"] for p, _ in pairs], ncols=min(len(pairs), 5))


# ----------------------------------------------------------------------------------
# images and profiles
# ----------------------------------------------------------------------------------
def _layer_image(ax, layer, image: np.ndarray, norm, cmap: str):
    """Draw one layer's (shape-reshaped) image on ``ax`` (polar axes for polar layers)."""
    if layer.kind == "polar":
        # quads are drawn with straight sides: subdivide every α bin so rings look round
        # (and a single full-circle α bin does not collapse to zero area)
        n_sub = max(1, math.ceil(72 / layer.n_alpha))
        theta = np.linspace(-math.pi, math.pi, layer.n_alpha * n_sub + 1)
        r = np.asarray(layer.r_edges, float)
        mesh = ax.pcolormesh(theta, r, np.repeat(image, n_sub, axis=0).T, norm=norm, cmap=cmap, shading="flat")
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.set_ylim(0, r[-1])
        ax.grid(False)
    else:
        x = (np.arange(layer.nx + 1) - 0.5 * layer.nx) * layer.cell_x
        y = (np.arange(layer.ny + 1) - 0.5 * layer.ny) * layer.cell_y
        mesh = ax.pcolormesh(x, y, image, norm=norm, cmap=cmap, shading="flat")
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    return mesh


@_styled
def mean_images(result: "EvaluationResult", out_dir: Path, stem: str = "mean_images") -> list[Path]:
    """Average shower per layer: reference, generated and their ratio (up to 8 layers per figure)."""
    from matplotlib.colors import LogNorm

    plt = pyplot()
    geo = result.geometry
    ref_layers = geo.split(result.mean_shower["reference"])
    gen_layers = geo.split(result.mean_shower["generated"])
    active = list(geo.active_layers)
    paths = []
    per_fig = 8
    for page, lo in enumerate(range(0, len(active), per_fig)):
        chunk = active[lo: lo + per_fig]
        fig = plt.figure(figsize=(2.6 * len(chunk), 8.0))
        for j, li in enumerate(chunk):
            layer = geo.layers[li]
            ref, gen = ref_layers[li], gen_layers[li]
            pos = np.concatenate([ref[ref > 0], gen[gen > 0]])
            vmax = float(pos.max()) if pos.size else 1.0
            norm = LogNorm(vmin=max(vmax * 1e-4, 1e-12), vmax=vmax)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(ref > 0, gen / ref, np.nan)
            rows = [(ref, norm, "viridis", result.labels[0]), (gen, norm, "viridis", result.labels[1]),
                    (ratio, LogNorm(0.5, 2.0), "RdBu_r", "gen/ref")]
            for k, (img, nrm, cmap, name) in enumerate(rows):
                ax = fig.add_subplot(3, len(chunk), k * len(chunk) + j + 1,
                                     projection="polar" if layer.kind == "polar" else None)
                img = np.where(img > 0, img, np.nan) if k < 2 else img
                mesh = _layer_image(ax, layer, img, nrm, cmap)
                if k == 0:
                    extent = (f"r < {layer.r_edges[-1]:g} mm" if layer.kind == "polar"
                              else f"{layer.nx}×{layer.ny} cells")
                    ax.set_title(f"layer {layer.id}" + (f" ({layer.name})" if layer.name else "") + f"\n{extent}",
                                 fontsize=9)
                # each layer has its own energy scale (shared by its reference and generated
                # images); a colour bar on every panel keeps all panels the same size
                fig.colorbar(mesh, ax=ax, fraction=0.046, pad=0.08).ax.tick_params(labelsize=6)
                if j == 0:
                    ax.text(-0.25, 0.5, name, transform=ax.transAxes, rotation=90, va="center", ha="center",
                            fontsize=9)
        fig.suptitle("mean energy per voxel [MeV]", fontsize=12)
        path = out_dir / (f"{stem}.png" if len(active) <= per_fig else f"{stem}_{page + 1}.png")
        save_figure(fig, path)
        paths.append(path)
    return paths


def _layer_ticks(rax, layer_ids) -> None:
    step = max(1, math.ceil(len(layer_ids) / 12))
    rax.set_xticks(np.arange(len(layer_ids))[::step], [str(i) for i in layer_ids][::step])


def _profile_panel(ax, rax, x_edges, ref, gen, labels, xlabel, ylabel, log_y=True, density=None):
    ref = np.asarray(ref, float)
    gen = np.asarray(gen, float)
    if density is not None:
        ref, gen = ref / density, gen / density
    ax.stairs(ref, x_edges, color=REF_COLOUR, fill=True, alpha=0.35, label=labels[0])
    ax.stairs(gen, x_edges, color=GEN_COLOUR, lw=1.5, label=labels[1])
    log_y = log_y and bool(np.any(ref > 0))
    if log_y:
        ax.set_yscale("log")
    _headroom(ax, log_y, 0.25)  # the legend sits in the free band at the top
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, frameon=False, loc="upper right", ncol=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ref > 0, gen / ref, np.nan)
    _ratio_panel(rax, None, ratio, stairs_edges=x_edges)
    rax.set_xlabel(xlabel)
    ax.tick_params(labelbottom=False)


@_styled
def profiles(result: "EvaluationResult", out_dir: Path) -> list[Path]:
    """Longitudinal (energy per layer) and radial (energy density per ring) profiles,
    inclusive, and per energy point when they were computed."""
    plt = pyplot()
    geo = result.geometry
    active = np.asarray(geo.active_layers)
    x_long = np.arange(len(active) + 1) - 0.5
    r_edges = np.asarray(result.radial_edges, float)
    ring_area = math.pi * np.diff(r_edges**2)
    paths = []
    fig = plt.figure(figsize=(11, 4.6))
    gs = fig.add_gridspec(2, 2, height_ratios=[3, 1], hspace=0.08, wspace=0.28)
    lr, lg = result.longitudinal["reference"][0][active], result.longitudinal["generated"][0][active]
    layer_ids = [geo.layers[i].id for i in active]
    rax = fig.add_subplot(gs[1, 0])
    _profile_panel(fig.add_subplot(gs[0, 0]), rax, x_long, lr, lg, result.labels, "layer id", "mean energy [MeV]")
    _layer_ticks(rax, layer_ids)
    _profile_panel(fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 1]), r_edges,
                   result.radial["reference"][0], result.radial["generated"][0], result.labels,
                   "r [mm]", "mean energy density [MeV/mm²]", density=ring_area)
    fig.suptitle("shower profiles (all energies)", fontsize=12)
    path = out_dir / "profiles.png"
    save_figure(fig, path)
    paths.append(path)
    n_pts = result.longitudinal["reference"].shape[0] - 1
    if n_pts > 0:
        for kind in ("longitudinal", "radial"):
            ncols = min(n_pts, 5)
            nrows = math.ceil(n_pts / ncols)
            fig = plt.figure(figsize=(3.4 * ncols, 3.6 * nrows))
            gs = fig.add_gridspec(3 * nrows, ncols, height_ratios=[3, 1, 0.7] * nrows, hspace=0.08, wspace=0.3)
            for i, p in enumerate(result.energy_points[:n_pts]):
                row, col = divmod(i, ncols)
                ax, rax = fig.add_subplot(gs[3 * row, col]), fig.add_subplot(gs[3 * row + 1, col])
                if kind == "longitudinal":
                    _profile_panel(ax, rax, x_long, result.longitudinal["reference"][i + 1][active],
                                   result.longitudinal["generated"][i + 1][active], result.labels, "layer id",
                                   "mean E [MeV]")
                    _layer_ticks(rax, layer_ids)
                else:
                    _profile_panel(ax, rax, r_edges, result.radial["reference"][i + 1],
                                   result.radial["generated"][i + 1], result.labels, "r [mm]",
                                   "E density [MeV/mm²]",
                                   density=ring_area)
                ax.set_title(p["label"], fontsize=10)
            fig.suptitle(f"{kind} profile per incident energy", fontsize=12, y=1.0 + 0.03 / nrows)
            path = out_dir / f"profile_{kind}_per_energy.png"
            save_figure(fig, path)
            paths.append(path)
    return paths


@_styled
def voxel_spectrum(result: "EvaluationResult", path: Path) -> Path:
    """Energy spectrum of non-zero voxels (hits), log-log."""
    plt = pyplot()
    h = result.voxel_spectrum
    edges = np.asarray(h.edges, float)
    fig = plt.figure(figsize=(6, 4.6))
    gs = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
    ref = np.asarray(h.reference, float)[1:-1]
    gen = np.asarray(h.generated, float)[1:-1]
    used = np.nonzero((ref + gen) > 0)[0]
    lo, hi = (used[0], used[-1] + 1) if used.size else (0, len(ref))
    e = edges[lo: hi + 1]
    norm_r = ref[lo:hi] / max(ref.sum(), 1) / np.diff(e)
    norm_g = gen[lo:hi] / max(gen.sum(), 1) / np.diff(e)
    ax, rax = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    _profile_panel(ax, rax, e, norm_r, norm_g, result.labels, "voxel energy [MeV]", "hits (normalised) / MeV")
    ax.set_xscale("log")
    rax.set_xscale("log")
    sp = h.stats.get("separation_power")
    if sp is not None and math.isfinite(sp):
        ax.set_title(f"voxel energy spectrum — separation power {sp:.3g}", fontsize=10)
    save_figure(fig, path)
    return path


# ----------------------------------------------------------------------------------
# everything
# ----------------------------------------------------------------------------------
def _per_energy_choice(names: Sequence[str]) -> list[str]:
    """Features shown per incident energy: total-energy response first, then shower depth/width."""
    wanted = []
    lower = {n.lower(): n for n in names}
    for key in ("e_ratio", "etot_einc", "e_tot_e_inc", "response", "etot", "e_tot"):
        if key in lower:
            wanted.append(lower[key])
            break
    for pattern in ("shower_depth", "cog_z", "n_hits"):
        for n in names:
            if n.lower() == pattern and n not in wanted:
                wanted.append(n)
                break
    return wanted[:4]


@_styled
def plot_all(result: "EvaluationResult", out_dir: str | Path, *, progress=None) -> list[tuple[str, str, str]]:
    """Write every plot into ``out_dir``; returns ``(section, title, file name)`` rows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    groups = group_features(result.features)
    singles = [v[0] for v in groups.values() if len(v) == 1]
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if singles:  # whole-shower observables side by side in one figure
        groups = {"global": singles, **groups}
    for stem, names in groups.items():
        for part, lo in enumerate(range(0, len(names), MAX_PANELS)):
            chunk = [result.features[n] for n in names[lo: lo + MAX_PANELS]]
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)
            fname = f"feature_{safe}.png" if len(names) <= MAX_PANELS else f"feature_{safe}_{part + 1}.png"
            feature_grid(chunk, out_dir / fname, title=stem, labels=result.labels)
            rows.append(("features", stem, fname))
        if progress:
            progress(1)
    if result.energy_points and any(h.per_energy for h in result.features.values()):
        for name in _per_energy_choice(list(result.features)):
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
            p = per_energy_grid(result.features[name], result.energy_points, out_dir / f"per_energy_{safe}.png",
                                labels=result.labels)
            if p is not None:
                rows.append(("per-energy", f"{name} per incident energy", p.name))
    for p in profiles(result, out_dir):
        rows.append(("profiles", p.stem.replace("_", " "), p.name))
    for p in mean_images(result, out_dir):
        rows.append(("images", p.stem.replace("_", " "), p.name))
    p = voxel_spectrum(result, out_dir / "voxel_spectrum.png")
    rows.append(("profiles", "voxel energy spectrum", p.name))
    return rows
