"""Plotting and HTML pieces shared by the report and every observable suite (numbers are
formatted by :func:`caloforge.formatting.format_html`).

Matplotlib is imported on first use (Agg backend), so importing this module stays cheap.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Iterable

__all__ = ["pyplot", "save_figure", "data_uri", "figure_html", "figures_html"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # a no-op when a backend is already active
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, tight: bool = True) -> None:
    """Write ``fig`` as a PNG atomically (a reader never sees half a file) and close it."""
    from caloforge.io import atomic_path

    with atomic_path(path) as tmp:  # "tight" draws the figure twice: grids set their margins instead
        fig.savefig(tmp, format="png", bbox_inches="tight" if tight else None)
    pyplot().close(fig)


def data_uri(path: Path) -> str:
    """A PNG as a ``data:`` URI: the report embeds its plots, so ``report.html`` travels alone."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure_html(title: str, file: str, out_dir: Path | None = None, note: str = "") -> str:
    """One ``<figure>``: embedded from ``out_dir / file`` when ``out_dir`` is given, else linked."""
    src = data_uri(Path(out_dir) / file) if out_dir is not None else html.escape(file)
    extra = f" <span class='meta'>{html.escape(note)}</span>" if note else ""
    return (f'<figure><img src="{src}" alt="{html.escape(title)}" loading="lazy">'
            f"<figcaption>{html.escape(title)}{extra}</figcaption></figure>")


def figures_html(plots: Iterable[tuple[str, str, str]], out_dir: Path | None = None) -> str:
    """The ``<figure>`` of every ``(section, title, file)`` plot row, in order."""
    return "".join(figure_html(title, file, out_dir) for _, title, file in plots)
