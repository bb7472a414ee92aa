"""How numbers read in terminal lines, tables and reports: one set of formatters.

Energies are printed in the largest unit that keeps them ≥ 1 (MeV, GeV, TeV);
other numbers with a fixed count of significant digits, and a missing or
non-finite value as a dash, so that a column of scores never shows ``nan``.

>>> format_energy(65536.0)
'65.54 GeV'
>>> format_number(0.123456), format_number(None), format_number(float("nan")), format_number(7)
('0.1235', '–', '–', '7')
>>> format_parameters({"training.lr": 0.00012345, "model.depth": 3})
'lr=0.000123, depth=3'
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping

__all__ = ["MISSING", "format_energy", "format_number", "format_html", "format_parameters"]

MISSING = "–"  # a value that is absent or not finite (en dash: it lines up with digits)


def format_energy(mev: float) -> str:
    """An energy in MeV, in the largest unit that keeps it ≥ 1, with 4 significant digits.

    >>> format_energy(1000.0), format_energy(256.0), format_energy(2.5e6)
    ('1 GeV', '256 MeV', '2.5 TeV')
    """
    if not math.isfinite(mev):
        return str(mev)
    for unit, scale in (("TeV", 1e6), ("GeV", 1e3)):
        if abs(mev) >= scale:
            return f"{mev / scale:.4g} {unit}"
    return f"{mev:.4g} MeV"


def format_number(value: Any, digits: int = 4) -> str:
    """A float with ``digits`` significant digits; integers and booleans as they are; None or a
    non-finite float as :data:`MISSING`; anything else as ``str(value)``.

    >>> format_number(3.14159, 3), format_number(True), format_number(float("inf")), format_number("tpe")
    ('3.14', 'True', '–', 'tpe')
    """
    if value is None:
        return MISSING
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else MISSING
    return str(value)


def format_html(value: Any, digits: int = 4) -> str:
    """:func:`format_number` for an HTML page: text values are escaped.

    >>> format_html("<b>"), format_html(0.5)
    ('&lt;b&gt;', '0.5')
    """
    if value is None or isinstance(value, (bool, int, float)):
        return format_number(value, digits)
    return html.escape(str(value))


def format_parameters(params: Mapping[str, Any], digits: int = 3) -> str:
    """Config parameters as ``key=value, …`` with the section prefix dropped (``training.lr`` → ``lr``)."""
    return ", ".join(f"{k.split('.', 1)[-1]}={format_number(v, digits)}" for k, v in params.items())
