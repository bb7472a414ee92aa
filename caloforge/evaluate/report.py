"""Write an evaluation to disk: ``metrics.json``, PNG plots and a self-contained ``report.html``.

The HTML is one file: inline CSS, no JavaScript, no external resources, every plot
embedded as a base64 ``data:`` URI.  It can be moved, e-mailed or opened with no
server and no network; the PNGs are also written beside it for papers and slides.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Callable

from caloforge.evaluate.render import figure_html
from caloforge.evaluate.result import ETOT_CHI2_NDF, EvaluationResult, energy_label
from caloforge.evaluate.suites import registered_suites
from caloforge.formatting import format_html
from caloforge.io import atomic_path, check_output_dir


__all__ = ["write_report", "write_metrics", "format_headline"]

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;
     color:#222;padding:0 1em;background:#fafafa}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#666;font-size:.9em}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1.2em 0}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:.8em 1.2em;min-width:12em}
.card .v{font-size:1.8em;font-weight:600} .card .k{color:#666;font-size:.85em}
table{border-collapse:collapse;background:#fff;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right} th{background:#f0f0f0}
td.name,th.name{text-align:left;font-family:monospace}
.good{background:#e3f4e1} .warn{background:#fff4d6} .bad{background:#fbe0e0}
.scroll{overflow-x:auto}
figure{margin:1em 0;background:#fff;border:1px solid #eee;padding:.5em}
figure img{max-width:100%} figcaption{color:#555;font-size:.85em}
"""


def _chi2_class(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return ""
    return "good" if v < 1.5 else ("warn" if v < 5 else "bad")


def _auc_class(v: float | None) -> str:
    if v is None:
        return ""
    return "good" if abs(v - 0.5) < 0.05 else ("warn" if abs(v - 0.5) < 0.2 else "bad")


def _x1e3(value: float) -> str:
    """A distance in CaloChallenge units: two decimals, or two significant digits when tiny."""
    v = float(value) * 1e3
    if not math.isfinite(v):
        return "–"
    return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:.2g}"


def format_headline(headline: dict[str, Any]) -> str:
    """One line with the headline numbers, for terminals and logs (FPD/KPD ×10³).

    >>> format_headline({"etot_chi2_ndf": 7.3, "fpd": 0.27111, "kpd": 1.5e-4})
    'E_tot χ²/ndf 7.3  ·  FPD ×10³ 271.11  ·  KPD ×10³ 0.15'
    >>> format_headline({"etot_chi2_ndf": 1.0, "kpd": 2e-6})
    'E_tot χ²/ndf 1  ·  KPD ×10³ 0.002'
    """
    parts = [f"E_tot χ²/ndf {format_html(headline.get(ETOT_CHI2_NDF), 3)}"]
    if headline.get("protocol"):  # which definitions produced the numbers below
        parts.insert(0, f"{headline['protocol']} protocol:")
    if headline.get("classifier_auc") is not None:
        parts.append(f"classifier AUC {format_html(headline['classifier_auc'], 3)}")
    # FPD/KPD in the CaloChallenge units (×10³), as in the report and the demo
    for key in ("fpd", "kpd"):
        if headline.get(key) is not None:
            parts.append(f"{key.upper()} ×10³ {_x1e3(headline[key])}")
    return "  ·  ".join(parts).replace("protocol:  ·  ", "protocol: ")


def write_metrics(result: EvaluationResult, path: str | Path) -> Path:
    """``metrics.json`` (strict JSON, sorted keys), written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result.metrics, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return path


def _cards(m: dict[str, Any]) -> str:
    h = m["headline"]
    cards = [("E<sub>tot</sub>/E<sub>inc</sub> χ²/ndf (Σ energy points)", format_html(h.get(ETOT_CHI2_NDF), 3),
              _chi2_class(h.get(ETOT_CHI2_NDF)))]
    clf = m.get("classifier")
    if clf:
        for mode in ("low", "high"):
            auc = (clf.get(mode) or {}).get("auc")
            cards.append((f"classifier AUC ({mode}-level)", format_html(auc, 3), _auc_class(auc)))
    else:
        cards.append(("classifier AUC", "not run", ""))
    for key in ("fpd", "kpd"):
        d = m.get(key)
        if d:
            cards.append((f"{key.upper()} ×10³", f"{format_html(d['value_x1e3'], 3)} ± {format_html(d['error_x1e3'], 2)}", ""))
    proto = (m.get("protocol") or {}).get("name")
    if proto:  # every number on this page comes from this protocol
        cards.append(("protocol" + (" (comparable with the CaloChallenge table)" if proto == "calochallenge" else ""),
                      html.escape(proto), ""))
    s = m["summary"]
    cards.append(("median feature χ²/ndf", format_html(s.get("median_chi2_ndf"), 3), _chi2_class(s.get("median_chi2_ndf"))))
    cards.append(("mean separation power", format_html(s.get("mean_separation_power"), 3), ""))
    return '<div class="cards">' + "".join(
        f'<div class="card {c}"><div class="v">{v}</div><div class="k">{k}</div></div>' for k, v, c in cards
    ) + "</div>"


def _feature_table(m: dict[str, Any]) -> str:
    from caloforge.evaluate.plots import feature_axis

    rows = []
    feats = m["features"]
    order = sorted(feats, key=lambda k: -((feats[k]["inclusive"] or {}).get("chi2_ndf") or 0.0))
    for name in order:
        inc = feats[name]["inclusive"]
        if inc is None:
            rows.append(f'<tr><td class="name">{html.escape(name)}</td><td colspan="8">not comparable</td></tr>')
            continue
        unit = feature_axis(name)[1]
        rows.append(
            f'<tr><td class="name">{html.escape(name)}</td><td>{html.escape(unit) or "–"}</td>'
            f'<td>{format_html(inc["separation_power"], 3)}</td>'
            f'<td class="{_chi2_class(inc["chi2_ndf"])}">{format_html(inc["chi2_ndf"], 3)}</td><td>{format_html(inc["ndf"])}</td>'
            f'<td>{format_html(inc["mean_reference"])}</td><td>{format_html(inc["mean_generated"])}</td>'
            f'<td>{format_html(inc["std_reference"])}</td><td>{format_html(inc["std_generated"])}</td></tr>'
        )
    head = ('<tr><th class="name">feature</th><th>unit</th><th>separation power</th><th>χ²/ndf</th><th>ndf</th>'
            '<th>mean ref</th><th>mean gen</th><th>std ref</th><th>std gen</th></tr>')
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'


def _per_energy_table(m: dict[str, Any]) -> str:
    labels = [p["label"] for p in m["energy_points"]]
    feats = {k: v for k, v in m["features"].items() if v.get("per_energy")}
    if not feats or not labels:
        return "<p>Per-energy comparison not computed.</p>"
    head = '<tr><th class="name">feature</th>' + "".join(f"<th>{html.escape(lab)}</th>" for lab in labels) + "</tr>"
    rows = []
    for name, v in feats.items():
        cells = []
        for lab in labels:
            d = v["per_energy"].get(lab)
            c2 = d["chi2_ndf"] if d else None
            cells.append(f'<td class="{_chi2_class(c2)}">{format_html(c2, 3)}</td>')
        rows.append(f'<tr><td class="name">{html.escape(name)}</td>{"".join(cells)}</tr>')
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'


def _energy_table(m: dict[str, Any]) -> str:
    te = {p["label"]: p for p in m["total_energy"]["per_point"]}
    rows = []
    for p in m["energy_points"]:
        t = te.get(_point_key(p))
        rows.append(f'<tr><td class="name">{html.escape(p["label"])}</td><td>{p["n_reference"]}</td>'
                    f'<td>{p["n_generated"]}</td><td class="{_chi2_class(t["chi2_ndf"] if t else None)}">'
                    f'{format_html(t["chi2_ndf"] if t else None, 3)}</td></tr>')
    head = ('<tr><th class="name">incident energy</th><th>n ref</th><th>n gen</th>'
            '<th>E<sub>tot</sub>/E<sub>inc</sub> χ²/ndf</th></tr>')
    t = m["total_energy"]
    foot = (f'<tr><th class="name">Σ</th><th>{m["n_reference"]}</th><th>{m["n_generated"]}</th>'
            f'<th>{format_html(t["chi2"], 4)} / {t["ndf"]} = {format_html(t["chi2_ndf"], 3)}</th></tr>')
    return f"<table>{head}{''.join(rows)}{foot}</table>"


def _point_key(p: dict[str, Any]) -> str:
    # total_energy per_point entries are labelled by the point's (centre) energy
    return energy_label(p["energy"])


def _classifier_table(m: dict[str, Any]) -> str:
    clf = m.get("classifier")
    if not clf:
        return "<p>Classifier test not run (use <code>--classifier</code>).</p>"
    keys = [k for k in ("auc", "jsd", "auc_raw", "jsd_raw", "accuracy", "best_epoch", "epochs_run", "n_train",
                        "n_test", "n_features", "device") if any(k in (clf.get(m) or {}) for m in ("low", "high"))]
    head = '<tr><th class="name">input</th>' + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"
    rows = []
    for mode in ("low", "high"):
        d = clf.get(mode) or {}
        rows.append(f'<tr><td class="name">{mode}-level</td>'
                    + "".join(f'<td class="{_auc_class(d.get(k)) if k == "auc" else ""}">{format_html(d.get(k))}</td>'
                              for k in keys) + "</tr>")
    return (f"<table>{head}{''.join(rows)}</table><p class='meta'>showers per sample: "
            f"{format_html(clf.get('n_per_sample_low'))} (low level, a random subsample), "
            f"{format_html(clf.get('n_per_sample_high'))} (high level); each split 60/20/20 into train / validation / "
            "test; AUC and JSD on the test part. 0.5 = indistinguishable.</p>")


def _memorisation_table(m: dict[str, Any]) -> str:
    mem = m.get("memorisation")
    if not mem:
        return ""
    ratio = mem.get("median_ratio")
    cls = "" if ratio is None else ("good" if ratio > 0.9 else ("warn" if ratio > 0.7 else "bad"))
    return (
        "<h2>Memorisation (nearest training shower)</h2>"
        "<table><tr><th class='name'>quantity</th><th>value</th></tr>"
        f"<tr><td class='name'>median distance generated → training</td><td>{format_html(mem.get('median_generated'))}</td></tr>"
        f"<tr><td class='name'>median distance reference → training</td><td>{format_html(mem.get('median_reference'))}</td></tr>"
        f"<tr><td class='name'>ratio (≈ 1: nothing memorised)</td><td class='{cls}'>{format_html(ratio, 3)}</td></tr>"
        f"<tr><td class='name'>generated closer than 1 % of reference</td>"
        f"<td>{format_html(mem.get('fraction_below_reference_1pct'), 3)}</td></tr>"
        f"<tr><td class='name'>copies</td><td>{format_html(mem.get('n_copies'))}</td></tr></table>"
        f"<p class='meta'>{format_html(mem.get('n_generated'))} generated, {format_html(mem.get('n_reference'))} reference, "
        f"{format_html(mem.get('n_training'))} training showers; distances in {format_html(mem.get('space'))}.</p>"
    )


def _html(result: EvaluationResult, plots: list[tuple[str, str, str]], out_dir: Path | None = None,
          suite_sections: str = "") -> str:
    m = result.metrics
    title = f"caloforge evaluation — {m['geometry']}"
    sections = {"features": "Feature histograms", "per-energy": "Per incident energy",
                "profiles": "Profiles and spectra", "images": "Average shower images"}
    figs = []
    for key, heading in sections.items():
        items = [(t, f) for s, t, f in plots if s == key]
        if not items:
            continue
        figs.append(f"<h2>{heading}</h2>")
        figs += [figure_html(t, f, out_dir, note=f"({f})") for t, f in items]  # embedded: one file
    fpd, kpd = m.get("fpd"), m.get("kpd")
    dist = ""
    if fpd:
        dist = (f"<table><tr><th class='name'>metric</th><th>value ×10³</th><th>uncertainty ×10³</th></tr>"
                f"<tr><td class='name'>FPD</td><td>{format_html(fpd['value_x1e3'])}</td><td>{format_html(fpd['error_x1e3'])}</td></tr>"
                f"<tr><td class='name'>KPD</td><td>{format_html(kpd['value_x1e3'])}</td><td>{format_html(kpd['error_x1e3'])}</td></tr>"
                "</table>")
    labels = m.get("labels", ["reference", "generated"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(labels[0])}: {m['n_reference']} showers · {html.escape(labels[1])}: {m['n_generated']} showers
· {len(m['energy_points'])} incident-energy points · voxel sparsity {format_html(m['sparsity']['reference'], 3)} (ref) /
{format_html(m['sparsity']['generated'], 3)} (gen) · all numbers in <code>metrics.json</code></p>
{_cards(m)}
{"".join(f'<p class="meta warn">{html.escape(n)}</p>' for n in m.get("notes") or [])}
<h2>Total energy per incident energy</h2>{_energy_table(m)}
<h2>Classifier two-sample test</h2>{_classifier_table(m)}
<h2>Fréchet / kernel physics distance</h2>{dist or "<p>Not computed.</p>"}
{_memorisation_table(m)}
<h2>Features (inclusive, worst first)</h2>
<p class="meta">χ²/ndf: green &lt; 1.5, yellow &lt; 5, red ≥ 5. Separation power ½Σ(p−q)²/(p+q): 0 identical, 1 disjoint.</p>
{_feature_table(m)}
<h2>χ²/ndf per incident energy</h2>{_per_energy_table(m)}
{''.join(figs)}
{suite_sections}
</body></html>
"""


def write_report(result: EvaluationResult, out_dir: str | Path, *, plots: bool = True,
                 progress: Callable[[int], None] | None = None) -> Path:
    """Write ``metrics.json``, the PNGs and ``report.html`` into ``out_dir``; returns the HTML path.
    Every observable suite with a section in the metrics adds its plots and its part of the page."""
    out_dir = check_output_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(result, out_dir / "metrics.json")
    rows: list[tuple[str, str, str]] = []
    if plots:
        from caloforge.evaluate.plots import plot_all

        rows = plot_all(result, out_dir, progress=progress)
    labels = tuple(result.metrics.get("labels", ("reference", "generated")))
    sections = []
    for suite in registered_suites():
        section = result.metrics.get(suite.key)
        if not section:
            continue
        suite_rows = suite.plot(section, result.metrics["geometry"], out_dir, labels) if plots else []
        sections.append(suite.html(section, suite_rows, out_dir))
    path = out_dir / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(_html(result, rows, out_dir, "\n".join(sections)), encoding="utf-8")
    return path
