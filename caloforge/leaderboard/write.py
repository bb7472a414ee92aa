"""A leaderboard's files: ``leaderboard.csv``, ``leaderboard.md``, ``leaderboard.png`` and a
one-file ``leaderboard.html`` (table and embedded plot), each written atomically."""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path
from typing import Any, Sequence

import caloforge.io as cio
from caloforge.evaluate.render import figure_html, pyplot, save_figure
from caloforge.formatting import MISSING, format_html, format_number
from caloforge.leaderboard.entry import COLUMNS, Entry

__all__ = ["TABLE", "PUBLISHED_COLOUR", "write_csv", "write_markdown", "figure", "write_png", "write_html"]

PUBLISHED_COLOUR = "0.6"  # matplotlib grey: the published entries are context, not contenders
# (header, attribute, significant digits) of the Markdown and HTML tables
TABLE = (("model", "name", 0), ("family", "family", 0), ("parameters", "parameters", 0),
         ("training", "training_minutes", 3), ("AUC low", "auc_low", 3), ("AUC high", "auc_high", 3),
         ("FPD ×10³", "fpd_x1e3", 3), ("KPD ×10³", "kpd_x1e3", 3), ("E_tot χ²/ndf", "etot_chi2_ndf", 3),
         ("ms/shower b1", "ms_per_shower_b1", 3), ("ms/shower b10k", "ms_per_shower_b10000", 3),
         ("Pareto", "pareto", 0))
# the two panels: (quality attribute, its axis label, the entry flag marking its front)
PANELS = (("auc_low", "classifier AUC (low level)", "pareto_auc"), ("fpd_x1e3", "FPD ×10³", "pareto_fpd"))


def _cell(entry: Entry, attr: str, digits: int) -> str:
    if attr == "pareto":
        return ", ".join(n for n, on in (("AUC", entry.pareto_auc), ("FPD", entry.pareto_fpd)) if on)
    if attr == "training_minutes":
        if entry.training_minutes is None:
            return MISSING
        return f"{format_number(entry.training_minutes, digits)} {(entry.training_device or '').upper()} min".strip()
    if attr == "parameters" and entry.parameters is not None:
        return f"{entry.parameters:,}"
    return format_number(getattr(entry, attr), digits) if digits else (getattr(entry, attr) or MISSING)


def write_csv(entries: Sequence[Entry], path: Path) -> Path:
    """Every entry, caloforge's first, all :data:`~caloforge.leaderboard.entry.COLUMNS`."""
    with cio.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for e in entries:
                w.writerow({k: ("" if v is None else v) for k, v in e.row().items()})
    return path


def _md_table(entries: Sequence[Entry]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _, _ in TABLE) + " |", "|" + "|".join("---" for _ in TABLE) + "|"]
    for e in entries:
        cells = [_cell(e, attr, digits).replace("|", "\\|") for _, attr, digits in TABLE]
        if e.pareto_auc or e.pareto_fpd:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _notes(board: Any) -> list[str]:
    """The sentences under every table: reference, dataset, what the published rows are."""
    notes = [f"Reference: {board.reference_label}; dataset: {board.dataset or 'none (no published entries)'}"
             f" ({board.dataset_origin}); timings: {board.timing}, ms per shower, the fastest timed path."]
    if board.published:
        notes.append("Published rows: CaloChallenge 2022 final results (measured against Geant4, not this "
                     "reference file): orders of magnitude, drawn in grey, not on the Pareto front.")
    notes += [f"Left out: {w}" for w in board.warnings]
    return notes


def write_markdown(board: Any, path: Path) -> Path:
    """``leaderboard.md``: the caloforge table (Pareto entries in bold), then the published one."""
    lines = [f"# Leaderboard — {board.dataset or board.geometry}", "", *_md_table(board.entries), ""]
    if board.published:
        lines += ["## Published (CaloChallenge 2022)", "", *_md_table(board.published), ""]
    lines += [f"- {n}" for n in _notes(board)]
    with cio.atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _front(entries: Sequence[Entry], attr: str, flag: str) -> list[tuple[float, float]]:
    pts = sorted((e.ms_per_shower_b10000, getattr(e, attr)) for e in entries if getattr(e, flag))
    return pts  # type: ignore[return-value]


def _placed(e: Entry, attr: str) -> bool:
    x, y = e.ms_per_shower_b10000, getattr(e, attr)
    return x is not None and y is not None and x > 0 and math.isfinite(x) and math.isfinite(y)


def figure(board: Any):
    """The two panels (AUC low level and FPD against ms/shower at batch 10 000, log x): caloforge
    entries coloured and labelled, the published ones grey, each panel's Pareto front drawn."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    colours = plt.get_cmap("tab10")
    for ax, (attr, label, flag) in zip(axes, PANELS):
        for e in board.published:
            if _placed(e, attr):
                x, y = e.ms_per_shower_b10000, getattr(e, attr)
                ax.scatter([x], [y], color=PUBLISHED_COLOUR, marker="s", s=22, zorder=2)
                ax.annotate(e.name, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7,
                            color=PUBLISHED_COLOUR)
        for i, e in enumerate(board.entries):
            if _placed(e, attr):
                x, y = e.ms_per_shower_b10000, getattr(e, attr)
                ax.scatter([x], [y], color=colours(i % 10), s=48, zorder=4, edgecolor="black" if getattr(e, flag)
                           else "none", label=e.name)
                ax.annotate(e.name, (x, y), xytext=(4, -10), textcoords="offset points", fontsize=8,
                            color=colours(i % 10))
        ax.set_xscale("log")
        ys_all = [getattr(e, attr) for e in [*board.published, *board.entries] if _placed(e, attr)]
        if attr == "fpd_x1e3" and ys_all and min(ys_all) > 0:  # published FPDs span three decades
            ax.set_yscale("log")
        front = _front(board.entries, attr, flag)
        if front:  # a staircase to the right edge: everything above and right of it is dominated
            xs, ys = zip(*front)
            right = ax.get_xlim()[1]
            ax.step([*xs, right], [*ys, ys[-1]], where="post", color="black", lw=1.2, ls="--", zorder=3,
                    label="Pareto front")
            ax.set_xlim(right=right)
        ax.set_xlabel(f"ms per shower at batch 10 000 ({board.timing})")
        ax.set_ylabel(f"{label} (lower is better)")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"quality against cost — {board.dataset or board.geometry}"
                 + (" (grey: CaloChallenge 2022 published)" if board.published else ""))
    fig.tight_layout()
    return fig


def write_png(board: Any, path: Path) -> Path:
    save_figure(figure(board), path)  # atomic (caloforge.io.atomic_path)
    return path


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;color:#222;
     padding:0 1em;background:#fafafa}
table{border-collapse:collapse;background:#fff;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right} th{background:#f0f0f0}
td.name,th.name{text-align:left;font-family:monospace} tr.pareto td{background:#e3f4e1;font-weight:600}
tr.published td{color:#888} .meta{color:#666;font-size:.9em}
figure{margin:1em 0;background:#fff;border:1px solid #eee;padding:.5em} figure img{max-width:100%}
"""


def _html_table(entries: Sequence[Entry], published: bool) -> str:
    head = "".join(f'<th class="{"name" if i == 0 else ""}">{html.escape(h)}</th>' for i, (h, _, _) in enumerate(TABLE))
    rows = []
    for e in entries:
        cls = "published" if published else ("pareto" if e.pareto_auc or e.pareto_fpd else "")
        cells = "".join(f'<td class="{"name" if i == 0 else ""}">{format_html(_cell(e, attr, digits))}</td>'
                        for i, (_, attr, digits) in enumerate(TABLE))
        rows.append(f'<tr class="{cls}">{cells}</tr>')
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def write_html(board: Any, path: Path, png: Path | None) -> Path:
    """``leaderboard.html``: one file, the plot embedded as a ``data:`` URI."""
    title = f"caloforge leaderboard — {board.dataset or board.geometry}"
    plot = figure_html("quality against cost (lower is better on both axes)", png.name, png.parent) if png else ""
    published = (f"<h2>Published: CaloChallenge 2022</h2>{_html_table(board.published, True)}"
                 if board.published else "")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            + "".join(f'<p class="meta">{html.escape(n)}</p>' for n in _notes(board))
            + f"{_html_table(board.entries, False)}{plot}{published}</body></html>\n")
    with cio.atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
