"""What a model is conditioned on, and how each condition is encoded for the network.

A model's config names its conditions and their encodings::

    conditions: {incident_energy: log, incident_theta: cos}

``incident_energy`` is always present; the others are the condition datasets of a
shower file (``incident_theta``, ``incident_phi`` in rad, ``impact_x``, ``impact_y``
in mm, ``impact_eta`` the impact pseudorapidity of the ATLAS GAN).  The energy
condition may be the incident energy or the kinetic energy E − m of the particle
(``energy_condition: kinetic`` with ``particle: pion``), as the CaloShowerGAN pion model uses: at 256 MeV a pion's kinetic energy is 116 MeV.

Encodings (ranges fitted on the training data and stored in the checkpoint):

=========  ==============================================  ============
name       value                                           columns
=========  ==============================================  ============
log        log(x/lo) / log(hi/lo): [0, 1] on the range     1
linear     (x − lo) / (hi − lo): [0, 1] on the range       1
cos        cos x (angles in rad)                           1
sincos     sin x, cos x (azimuths)                         2
standard   (x − mean) / std                                1
=========  ==============================================  ============

Everything is a torch expression, so an exported network can take the physical
conditions (MeV, rad, mm) and encode them itself.

>>> import torch
>>> enc = ConditionEncoder.fit({"incident_energy": "log"}, torch.tensor([1e3, 1e5]), {})
>>> enc.encode(torch.tensor([1e3, 1e4, 1e5]), {}).squeeze(1).tolist()
[0.0, 0.5, 1.0]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from caloforge.errors import ConfigError, DataError

__all__ = ["CONDITION_NAMES", "ENCODINGS", "DEFAULT_ENCODING", "PARTICLE_MASS_MEV", "ConditionSpec",
           "ConditionEncoder", "check_conditions_config"]

CONDITION_NAMES = ("incident_energy", "incident_theta", "incident_phi", "impact_x", "impact_y", "impact_eta")
ENCODINGS = {"log": 1, "linear": 1, "cos": 1, "sincos": 2, "standard": 1}
DEFAULT_ENCODING = {"incident_energy": "log", "incident_theta": "cos", "incident_phi": "sincos",
                    "impact_x": "linear", "impact_y": "linear", "impact_eta": "linear"}
# PDG masses in MeV, for the kinetic-energy condition
PARTICLE_MASS_MEV = {"photon": 0.0, "gamma": 0.0, "electron": 0.51099895, "positron": 0.51099895,
                     "pion": 139.57039, "proton": 938.27209, "neutron": 939.56542, "kaon": 493.677}


def check_conditions_config(conditions: Mapping[str, str], energy_condition: str, particle: str,
                            require) -> None:
    """Validate the ``conditions`` / ``energy_condition`` / ``particle`` keys of a model config."""
    require("incident_energy" in conditions, "model.conditions", "a mapping that includes incident_energy",
            dict(conditions))
    for name, enc in conditions.items():
        require(name in CONDITION_NAMES, f"model.conditions.{name}", f"one of {', '.join(CONDITION_NAMES)}", name)
        require(enc in ("", "default") or enc in ENCODINGS, f"model.conditions.{name}",
                f"an encoding: {', '.join(ENCODINGS)}", enc)
    require(energy_condition in ("incident", "kinetic"), "model.energy_condition", "incident or kinetic",
            energy_condition)
    require(particle in PARTICLE_MASS_MEV, "model.particle", f"one of {', '.join(PARTICLE_MASS_MEV)}", particle)


@dataclass(frozen=True)
class ConditionSpec:
    """One condition: its dataset name, encoding and fitted constants (lo/hi or mean/std)."""

    name: str
    encoding: str
    lo: float = 0.0
    hi: float = 1.0

    @property
    def width(self) -> int:
        return ENCODINGS[self.encoding]

    def encode(self, x: Tensor) -> Tensor:
        """(N,) physical values → (N, width) float32 columns."""
        x = x.to(torch.float64)
        if self.encoding == "log":
            span = math.log(self.hi / self.lo) if self.hi > self.lo else 1.0
            y = (torch.log(x.clamp_min(1e-30)) - math.log(self.lo)) / span
        elif self.encoding == "linear":
            y = (x - self.lo) / (self.hi - self.lo if self.hi > self.lo else 1.0)
        elif self.encoding == "cos":
            y = torch.cos(x)
        elif self.encoding == "sincos":
            return torch.stack([torch.sin(x), torch.cos(x)], dim=1).to(torch.float32)
        else:  # standard
            y = (x - self.lo) / (self.hi if self.hi > 0 else 1.0)
        return y.to(torch.float32).reshape(-1, 1)


class ConditionEncoder:
    """Physical conditions → the network's condition vector (N, ``dim``); see the module docstring."""

    def __init__(self, specs: Sequence[ConditionSpec], energy_condition: str = "incident",
                 mass: float = 0.0) -> None:
        if not specs or specs[0].name != "incident_energy":
            raise ValueError("the first condition must be incident_energy")
        self.specs = list(specs)
        self.energy_condition = energy_condition
        self.mass = float(mass)

    @property
    def names(self) -> list[str]:
        """Condition names in column order (``incident_energy`` first)."""
        return [s.name for s in self.specs]

    @property
    def extra_names(self) -> list[str]:
        """The conditions besides the incident energy that a model needs from its input."""
        return self.names[1:]

    @property
    def dim(self) -> int:
        return sum(s.width for s in self.specs)

    def energy(self, incident_energy: Tensor) -> Tensor:
        """The energy the model is conditioned on: incident, or kinetic E − m (MeV, float64)."""
        e = torch.as_tensor(incident_energy, dtype=torch.float64)
        return e - self.mass if self.energy_condition == "kinetic" else e

    @classmethod
    def fit(cls, requested: Mapping[str, str], incident_energy, conditions: Mapping[str, object], *,
            energy_condition: str = "incident", particle: str = "photon",
            energy_range: Sequence[float] = (), source: str = "training data") -> "ConditionEncoder":
        """Fit the encodings' ranges on training data (``energy_range`` [MeV] pins the energy's)."""
        mass = PARTICLE_MASS_MEV[particle] if energy_condition == "kinetic" else 0.0
        names = ["incident_energy"] + [n for n in requested if n != "incident_energy"]
        specs = []
        for name in names:
            enc = requested.get(name) or "default"
            enc = DEFAULT_ENCODING[name] if enc in ("", "default") else enc
            if name == "incident_energy":
                x = torch.as_tensor(incident_energy, dtype=torch.float64) - mass
                if len(x) and float(x.min()) <= 0:
                    raise DataError(f"{source}: the kinetic energy E − m ({particle}, m = {mass:g} MeV) must be "
                                    f"> 0, but the lowest incident energy is {float(x.min()) + mass:g} MeV")
                if energy_range:
                    lo, hi = float(energy_range[0]) - mass, float(energy_range[1]) - mass
                    specs.append(ConditionSpec(name, enc, lo, hi) if enc in ("log", "linear") else
                                 _fitted(name, enc, x))
                    continue
            else:
                if name not in conditions:
                    raise DataError(f"{source}: the model is conditioned on {name}, but the data has no "
                                    f"{name!r} dataset")
                x = torch.as_tensor(conditions[name], dtype=torch.float64)
            specs.append(_fitted(name, enc, x))
        return cls(specs, energy_condition, mass)

    def check(self, available: Sequence[str], source: str) -> None:
        """DataError naming ``source`` and the dataset when a needed condition is missing."""
        for name in self.extra_names:
            if name not in available:
                raise DataError(f"{source}: the model is conditioned on {name}, but no {name!r} "
                                f"dataset/value was given")

    def encode(self, incident_energy: Tensor, conditions: Mapping[str, Tensor]) -> Tensor:
        """(N,) energies in MeV + the extra conditions → (N, dim) float32."""
        cols = [self.specs[0].encode(self.energy(incident_energy))]
        for spec in self.specs[1:]:
            if spec.name not in conditions:
                raise DataError(f"the model is conditioned on {spec.name}, but it was not given")
            cols.append(spec.encode(torch.as_tensor(conditions[spec.name])))
        return torch.cat(cols, dim=1)

    def encode_matrix(self, physical: Tensor) -> Tensor:
        """(N, len(names)) physical conditions in :attr:`names` order → (N, dim); for exported graphs."""
        cols = [self.specs[0].encode(self.energy(physical[:, 0]))]
        cols += [spec.encode(physical[:, i]) for i, spec in enumerate(self.specs[1:], start=1)]
        return torch.cat(cols, dim=1)

    def state(self) -> dict:
        return {"specs": [asdict(s) for s in self.specs], "energy_condition": self.energy_condition,
                "mass": self.mass}

    @classmethod
    def from_state(cls, state: Mapping) -> "ConditionEncoder":
        return cls([ConditionSpec(**s) for s in state["specs"]], state.get("energy_condition", "incident"),
                   float(state.get("mass", 0.0)))

    def __repr__(self) -> str:
        return "ConditionEncoder(" + ", ".join(f"{s.name}:{s.encoding}" for s in self.specs) + ")"


def _fitted(name: str, encoding: str, x: Tensor) -> ConditionSpec:
    if encoding not in ENCODINGS:
        raise ConfigError(f"model.conditions.{name}: unknown encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    if len(x) == 0:
        return ConditionSpec(name, encoding)
    if encoding == "standard":
        return ConditionSpec(name, encoding, float(x.mean()), float(x.std()) if len(x) > 1 else 1.0)
    lo, hi = float(x.min()), float(x.max())
    if encoding == "log" and lo <= 0:
        raise DataError(f"{name}: log encoding needs positive values, the smallest is {lo:g}")
    return ConditionSpec(name, encoding, lo, hi)
