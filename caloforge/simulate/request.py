"""What ``caloforge simulate`` is asked for, from its options: a data-set preset, or energies and angles.

>>> r = simulation_request(geometry="ds1-photons", particle="photon", energies="1GeV,10GeV", n=5)  # 5 per energy
>>> [p.n for p in r.parts], r.attrs
([10], {})
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from caloforge.errors import ConfigError

from .api import Derived, EnergySpec, Part, make_part
from .presets import get_preset
from .units import parse_angle, parse_range

__all__ = ["SimulationRequest", "simulation_request"]


@dataclass(frozen=True)
class SimulationRequest:
    """The parts to simulate and how to store them (geometry, file attributes, energy scale, derived
    conditions such as the ATLAS GAN's impact η)."""

    parts: list[Part]
    geometry: str
    attrs: dict[str, Any] = field(default_factory=dict)
    energy_scale: str | None = None
    derived: Derived = field(default_factory=dict)


def _polar(text: str | None):
    """``--theta``: degrees, or a range LOW:HIGH, in rad (None: not given)."""
    if text is None:
        return None
    if ":" in text:
        return parse_range(text, parse_angle)
    return parse_angle(text)


def _azimuth(text: str | None):
    """``--phi``: degrees, or LOW:HIGH, in rad (None: not given)."""
    if text is None:
        return None
    conv = lambda s: math.radians(float(s))  # noqa: E731
    try:
        return tuple(conv(s) for s in text.split(":")) if ":" in text else conv(text)
    except ValueError:
        raise ConfigError(f"bad --phi {text!r}: expected degrees or LOW:HIGH") from None


def simulation_request(*, preset: str | None = None, geometry: str | None = None, particle: str | None = None,
                       energies: str | None = None, energy_range: str | None = None, log: bool = False,
                       theta: str | None = None, phi: str | None = None, n: int | None = None, scale: float = 1.0,
                       energy_scale: str | None = None) -> SimulationRequest:
    """The request of ``caloforge simulate``'s options (see its ``--help``); :class:`ConfigError`
    names the options that do not fit together."""
    if preset is not None:
        if energies or energy_range or n is not None or theta or phi:
            raise ConfigError("--preset fixes energies, counts and angles: drop --energies/--energy-range/--n/--theta/--phi")
        p = get_preset(preset)
        # derived: conditions the data set stores besides the simulated ones (atlas-gan: impact_eta)
        return SimulationRequest(p.parts(particle, scale), geometry or p.geometry, {"preset": preset},
                                 energy_scale or p.energy_scale, p.derived)
    if particle is None or geometry is None:
        raise ConfigError("--geometry and --particle are required (or use --preset)")
    if (energies is None) == (energy_range is None):
        raise ConfigError("give exactly one of --energies and --energy-range (or --preset)")
    if n is None or n <= 0:
        raise ConfigError("--n must be a positive number of showers")
    spec = EnergySpec.parse(energies, log=False) if energies else EnergySpec.parse(energy_range, log=log)
    if energy_range and spec.kind == "discrete":
        raise ConfigError(f"--energy-range needs LOW:HIGH, got {energy_range!r}")
    return SimulationRequest([make_part(particle, spec, n, theta=_polar(theta), phi=_azimuth(phi))], geometry,
                             {}, energy_scale, {})
