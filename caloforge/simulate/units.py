"""Parsing of energies and angles given as text (CLI, presets).

>>> parse_energy("65GeV")
65000.0
>>> parse_energy_list("256MeV, 1GeV,1.5TeV").tolist()
[256.0, 1000.0, 1500000.0]
>>> parse_range("1GeV:100GeV", parse_energy)
(1000.0, 100000.0)
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from caloforge.errors import ConfigError

__all__ = ["UNITS", "parse_energy", "parse_energy_list", "parse_range", "parse_angle"]

UNITS = {"mev": 1.0, "gev": 1e3, "tev": 1e6}
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*$")


def parse_energy(text: str | float, default_unit: str = "MeV") -> float:
    """``"65GeV"`` → 65000.0 MeV.  Units MeV/GeV/TeV (case-insensitive); a bare number
    is in ``default_unit``.  Raises :class:`ConfigError` on anything else or on E ≤ 0."""
    if isinstance(text, (int, float, np.floating, np.integer)):
        value = float(text) * UNITS[default_unit.lower()]
    else:
        m = _NUMBER.match(str(text))
        if not m:
            raise ConfigError(f"bad energy {text!r}: expected a number with a unit, e.g. 10GeV")
        unit = (m.group(2) or default_unit).lower()
        if unit not in UNITS:
            raise ConfigError(f"bad energy {text!r}: unknown unit {m.group(2)!r} (use MeV, GeV or TeV)")
        value = float(m.group(1)) * UNITS[unit]
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"bad energy {text!r}: must be positive")
    return value


def parse_energy_list(text: str) -> np.ndarray:
    """Comma-separated energies → array in MeV."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"bad energy list {text!r}: empty")
    return np.array([parse_energy(p) for p in parts])


def parse_range(text: str, parse: Callable[[str], float]) -> tuple[float, float]:
    """``"lo:hi"`` → (lo, hi) with lo ≤ hi, each parsed by ``parse``."""
    parts = str(text).split(":")
    if len(parts) != 2:
        raise ConfigError(f"bad range {text!r}: expected LOW:HIGH")
    lo, hi = parse(parts[0]), parse(parts[1])
    if hi < lo:
        raise ConfigError(f"bad range {text!r}: LOW must not exceed HIGH")
    return lo, hi


def parse_angle(text: str | float) -> float:
    """An angle in degrees (``"60"``, ``"60deg"``) → radians, within [0°, 180°]."""
    s = str(text).strip().lower().removesuffix("deg").removesuffix("°")
    try:
        deg = float(s)
    except ValueError:
        raise ConfigError(f"bad angle {text!r}: expected degrees, e.g. 60") from None
    if not 0.0 < deg < 180.0:
        raise ConfigError(f"bad angle {text!r}: polar angle must be strictly between 0 and 180 degrees")
    return float(np.deg2rad(deg))
