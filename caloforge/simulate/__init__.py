"""The parametrised reference shower simulator (GFlash EM + a hadronic model).

The entry points are functions of this package::

    from caloforge.simulate import simulate, simulate_preset
    data = simulate("ds1-photons", "photon", [65_536.0] * 10)

Modules: :mod:`~caloforge.simulate.em` (Grindhammer–Peters EM showers),
:mod:`~caloforge.simulate.hadronic` (pions), :mod:`~caloforge.simulate.deposit`
(material stack, tilted axes, voxels, sampling), :mod:`~caloforge.simulate.presets`,
:mod:`~caloforge.simulate.api`, :mod:`~caloforge.simulate.units`.

>>> from caloforge.simulate import simulate
>>> len(simulate("calogan", "electron", [5000.0, 8000.0], seed=3))
2
"""

from __future__ import annotations

from .api import (
    PARTICLES,
    EnergySpec,
    Part,
    block_size,
    iter_plan,
    normalize_particle,
    simulate,
    simulate_plan,
    simulate_to_file,
    spot_cap,
    write_plan,
)
from .presets import (
    SIMULATION_PRESETS,
    get_preset,
    preset_parts,
    simulate_preset,
    simulate_preset_to_file,
)
from .units import parse_angle, parse_energy, parse_energy_list, parse_range

__all__ = [
    "simulate", "simulate_to_file", "simulate_preset", "simulate_preset_to_file", "simulate_plan",
    "iter_plan", "write_plan", "EnergySpec", "Part", "PARTICLES", "SIMULATION_PRESETS", "get_preset",
    "preset_parts", "normalize_particle", "parse_energy", "parse_energy_list", "parse_range", "parse_angle",
    "block_size", "spot_cap",
]
