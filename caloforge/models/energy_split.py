"""One sub-model per incident-energy range, of any family, behind one model.

The CaloShowerGAN photon models split the DS1 energies at 4.1 GeV (and 262 GeV),
with different sizes and activations per range (χ²/ndf 3.7 → 3.1 → 2.5 from one to
two to three GANs).  Each range keeps its own conditioning range E_min … E_max, so
the energy condition keeps its full resolution.  Range ``k`` covers
``boundaries[k-1] <= E < boundaries[k]``.  The config::

    model:
      name: energy_split
      geometry: ds1-photons
      family: caloshowergan        # any registered family
      boundaries: [4100, 262000]   # MeV
      common: {latent_dim: 100}    # keys shared by every range
      ranges:                      # one mapping per range: that range's own keys
        - {generator_hidden: [50, 50, 100], generator_activation: relu}
        - {generator_hidden: [50, 50, 100, 200]}
        - {generator_hidden: [50, 50, 100, 200]}

``geometry``, ``conditions``, ``energy_condition`` and ``particle`` are set once, at
the top; the sub-models inherit them.

>>> range_index([4100.0], [256.0, 4100.0, 65536.0]).tolist()
[0, 1, 1]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.config import from_dict, requirement
from caloforge.errors import ConfigError
from caloforge.models.base import Batch, BatchSource, ModelConfig, ShowerModel, get_family, register

__all__ = ["EnergySplitConfig", "EnergySplit", "range_index"]

_INHERITED = ("name", "geometry", "conditions", "energy_condition", "particle", "energy_range")


def range_index(boundaries, incident_energy) -> np.ndarray:
    """Index of the energy range of each energy (MeV): range ``k`` is ``boundaries[k-1] <= E < boundaries[k]``."""
    e = np.asarray(incident_energy, dtype=np.float64).reshape(-1)
    return np.searchsorted(np.asarray(boundaries, dtype=np.float64), e, side="right")


@dataclass
class EnergySplitConfig(ModelConfig):
    """``family`` per energy range; ``common`` keys for all, ``ranges[k]`` for range k."""

    name: str = "energy_split"
    family: str = "caloshowergan"
    boundaries: list[float] = field(default_factory=list)
    common: dict[str, Any] = field(default_factory=dict)
    ranges: list[dict[str, Any]] = field(default_factory=list)

    def sub_configs(self, source: str = "config") -> list[ModelConfig]:
        """The config of every range's model (validated)."""
        family = get_family(self.family, source)
        if family is EnergySplit:
            raise ConfigError(f"{source}: model.family cannot be energy_split itself")
        n = len(self.boundaries) + 1
        ranges = self.ranges or [{}] * n
        if len(ranges) != n:
            raise ConfigError(f"{source}: model.ranges has {len(ranges)} entries, but {len(self.boundaries)} "
                              f"boundaries make {n} ranges")
        shared = {k: getattr(self, k) for k in _INHERITED if k != "name"}
        out = []
        for k, own in enumerate(ranges):
            for where, part in (("common", self.common), (f"ranges[{k}]", own)):
                clash = sorted(set(part or {}) & set(_INHERITED))
                if clash:
                    raise ConfigError(f"{source}: model.{where}.{clash[0]} is set once at the top of model:")
            merged = {**self.common, **(own or {}), **shared, "name": self.family}
            cfg = from_dict(family.Config, merged, f"model.ranges[{k}].", source)
            cfg.check(requirement(source), source)
            out.append(cfg)
        return out

    def check(self, require, source: str) -> None:
        super().check(require, source)
        b = self.boundaries
        require(all(x > 0 for x in b) and all(y > x for x, y in zip(b, b[1:])), "model.boundaries",
                "increasing positive energies in MeV", b)
        self.sub_configs(source)


@register("energy_split")
class EnergySplit(ShowerModel):
    """Sub-models in ``parts``, each trained on and sampling its own energy range."""

    Config = EnergySplitConfig

    def __init__(self, config: EnergySplitConfig, geometry, state: Mapping[str, Any]) -> None:
        super().__init__(config, geometry, state)
        subs = config.sub_configs()
        family = get_family(config.family)
        self.parts = nn.ModuleList(family(c, geometry, s) for c, s in zip(subs, state["parts"]))
        self.loss_names = self.parts[0].loss_names  # an instance may add losses its config switches on
        self.register_buffer("boundaries", torch.tensor(config.boundaries, dtype=torch.float64), persistent=False)

    @classmethod
    def fit_state(cls, config, showers, incident_energy, conditions, geometry, source):
        state = super().fit_state(config, showers, incident_energy, conditions, geometry, source)
        family = get_family(config.family)
        route = range_index(config.boundaries, incident_energy.numpy())
        parts = []
        for k, sub in enumerate(config.sub_configs()):
            idx = np.flatnonzero(route == k)
            if len(idx) == 0:
                lo = config.boundaries[k - 1] if k else 0
                hi = config.boundaries[k] if k < len(config.boundaries) else "∞"
                raise ConfigError(f"model.boundaries: no training showers between {lo} and {hi} MeV (range {k})")
            if config.energy_range:  # the outer edges of the whole model's range
                e = incident_energy[idx]
                lo = config.energy_range[0] if k == 0 else float(e.min())
                hi = config.energy_range[1] if k == len(config.boundaries) else float(e.max())
                sub = dataclasses.replace(sub, energy_range=[lo, hi])
            t = torch.as_tensor(idx)
            parts.append(family.fit_state(sub, showers[t], incident_energy[t],
                                          {n: v[t] for n, v in conditions.items()}, geometry, source))
        state["parts"] = parts
        return state

    def state(self):
        return {**self.fitted, "parts": [p.state() for p in self.parts]}

    def route(self, incident_energy) -> np.ndarray:
        return range_index(self.config.boundaries, np.asarray(incident_energy, dtype=np.float64))

    def configure_optimizers(self):
        return {f"parts.{k}.{name}": opt for k, p in enumerate(self.parts)
                for name, opt in p.configure_optimizers().items()}

    def training_step(self, data: BatchSource, optimizers, generator):
        if not hasattr(self, "_sources") or self._sources[0] is not data:
            # per-range sources over the same showers, built once
            route = self.route(data.incident_energy.cpu().numpy() if data.index is None
                               else data.incident_energy[data.index].cpu().numpy())
            self._sources = (data, [data.subset(np.flatnonzero(route == k)) for k in range(len(self.parts))])
        losses = []
        for k, part in enumerate(self.parts):
            own = {name.split(".", 2)[2]: opt for name, opt in optimizers.items() if name.startswith(f"parts.{k}.")}
            losses.append(part.training_step(self._sources[1][k], own, generator))
        return {key: float(np.mean([loss[key] for loss in losses])) for key in losses[0]}

    def validation_metrics(self, batch: Batch) -> dict[str, float]:
        route = self.route(batch.incident_energy.cpu().numpy())
        totals: dict[str, float] = {}
        for k, part in enumerate(self.parts):
            idx = torch.as_tensor(np.flatnonzero(route == k), device=batch.showers.device)
            if len(idx) == 0:
                continue
            sub = Batch(batch.showers[idx], batch.incident_energy[idx], {n: v[idx] for n, v in batch.conditions.items()})
            for key, v in part.validation_metrics(sub).items():
                totals[key] = totals.get(key, 0.0) + v * len(idx) / len(batch)
        return totals

    def default_sampling(self) -> dict[str, Any]:
        return self.parts[0].default_sampling() if len(self.parts) else {}

    def set_sampling(self, **options: Any) -> None:
        """Generation options go to every range's model (all are the same family)."""
        for part in self.parts:
            part.set_sampling(**options)

    @property
    def sampling_options(self) -> dict[str, Any]:
        return self.parts[0].sampling_options if len(self.parts) else {}

    @property
    def _block(self) -> int:
        """Noise columns per range: the widest sub-model's (narrower ones are zero-padded)."""
        return max(p.noise_dim for p in self.parts)

    @property
    def noise_dim(self) -> int:
        # the width of sample_noise: one block per range
        return len(self.parts) * self._block

    def sample_noise(self, n, generator=None, device=None):
        # one block of noise per range, each drawn by its own family (GAN noise has mean 0.5)
        device = device or self.device
        blocks = [p.sample_noise(n, generator, device) for p in self.parts]
        out = torch.zeros(len(self.parts), n, self._block, device=device)
        for k, b in enumerate(blocks):
            out[k, :, :b.shape[1]] = b
        return out.permute(1, 0, 2).reshape(n, -1)

    def noise_spec(self):
        # the layout of sample_noise: one block of noise_dim columns per range, zero-padded
        specs = [p.noise_spec() for p in self.parts]
        kinds = {s["distribution"] for s in specs}
        if kinds != {"normal"}:
            raise NotImplementedError(f"energy_split noise_spec for {sorted(kinds)} noise")
        mean, std = [], []
        for s in specs:
            pad = self._block - len(s["mean"])
            mean += list(s["mean"]) + [0.0] * pad
            std += list(s["std"]) + [0.0] * pad
        return {"distribution": "normal", "mean": mean, "std": std}

    def _noise_for(self, noise: Tensor, k: int) -> Tensor:
        return noise.reshape(-1, len(self.parts), self._block)[:, k, :self.parts[k].noise_dim]

    def decode(self, noise, incident_energy, conditions):
        # every range on every row, then pick: branch-free, so it exports to ONNX
        route = torch.bucketize(incident_energy.to(torch.float64), self.boundaries.to(incident_energy.device),
                                right=True)
        out = None
        for k, part in enumerate(self.parts):
            shower = part.decode(self._noise_for(noise, k), incident_energy, conditions)
            out = shower if out is None else torch.where((route == k).reshape(-1, 1), shower, out)
        return out

    @torch.no_grad()
    def sample(self, conditions, generator=None):
        from caloforge.models.base import as_conditions

        cond = as_conditions(conditions)
        energy = cond["incident_energy"]
        route = self.route(energy.numpy())
        out = torch.zeros(len(energy), self.n_voxels, dtype=torch.float32, device=self.device)
        for k, part in enumerate(self.parts):  # each range draws noise for its own rows only
            idx = np.flatnonzero(route == k)
            if len(idx):
                t = torch.as_tensor(idx)
                e = energy[t].to(self.device)
                rest = {n: v[t].to(self.device) for n, v in cond.items() if n != "incident_energy"}
                out[t.to(self.device)] = part.decode(part.sample_noise(len(idx), generator), e, rest).float()
        return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).clamp_min_(0.0)
