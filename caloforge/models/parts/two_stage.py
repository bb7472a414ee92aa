"""What the two-stage families (``caloflow``, ``flow_matching``) share: their config keys for the
shower representation, the optimiser schedule and the weight average (:class:`TwoStageConfig`),
and the model skeleton around a layer stage and a voxel stage (:class:`TwoStageFamily`).

A two-stage family generates the layer vector y₁ and then the voxel vector y₂ given y₁
(:mod:`caloforge.models.parts.representation`); it implements :meth:`TwoStageFamily.transport`,
noise → (y₁, y₂), which is also what makes it a :class:`~caloforge.models.base.Teacher`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from caloforge.models.base import Batch, ModelConfig, ShowerModel, layer_sizes
from caloforge.models.parts.averaging import WeightAverage, check_average_key
from caloforge.models.parts.representation import ShowerRepresentation, radial_rings
from caloforge.models.parts.schedules import ScheduleKeys, check_schedule_keys, optimizer_steps, scheduled_step

__all__ = ["TwoStageConfig", "TwoStageFamily", "check_representation_keys"]


def check_representation_keys(cfg: Any, require) -> None:
    """The preprocessing keys shared by the flow families."""
    require(cfg.noise_mev >= 0, "model.noise_mev", "≥ 0 (MeV of uniform dequantisation noise)", cfg.noise_mev)
    require(cfg.threshold_mev is None or cfg.threshold_mev >= 0, "model.threshold_mev", "empty or ≥ 0 MeV",
            cfg.threshold_mev)
    require(0 < cfg.alpha < 0.5, "model.alpha", "in (0, 0.5)", cfg.alpha)
    require(isinstance(cfg.envelope_bins, int) and cfg.envelope_bins >= 0, "model.envelope_bins",
            "an integer ≥ 0 (0: no fraction envelope)", cfg.envelope_bins)
    require(isinstance(cfg.radial_split, bool), "model.radial_split", "true or false", cfg.radial_split)


@dataclass
class TwoStageConfig(ScheduleKeys, ModelConfig):
    """The ``model:`` keys of the representation, the schedule (:class:`ScheduleKeys`) and the weight
    average that ``caloflow`` and ``flow_matching`` share (CPU-sized defaults)."""

    noise_mev: float = 1e-3  # uniform dequantisation noise [MeV]; the readout threshold of the reference data
    threshold_mev: float | None = None  # generated voxels below it read 0 (empty: fitted, the data's readout threshold)
    alpha: float = 1e-6  # logit regulariser
    envelope_bins: int = 32  # cap voxel fractions at their training maximum per E_inc bin (0: off)
    radial_split: bool = False  # r–α layers as ring fractions + α fractions within each ring
    ema_decay: float = 0.0  # sample and validate with an average of the weights (0: off; e.g. 0.999)

    def check(self, require, source: str) -> None:
        super().check(require, source)
        check_representation_keys(self, require)
        check_schedule_keys(self, require)
        check_average_key(self, require)


class TwoStageFamily(ShowerModel):
    """What the two-stage families share: the representation, the context, the optimiser, decoding,
    and the weight average (``model.ema_decay``) of the networks named in :attr:`averaged`."""

    averaged: tuple[str, ...] = ()  # the networks that sampling and validation read through :meth:`sampling_net`

    def __init__(self, config, geometry, state: Mapping[str, Any]) -> None:
        super().__init__(config, geometry, state)
        self.representation = ShowerRepresentation.from_state(state["representation"])
        self.average: WeightAverage | None = None

    def _start_average(self) -> None:
        """Called by a family's ``__init__`` once its networks exist."""
        if self.config.ema_decay > 0:
            self.average = WeightAverage({name: getattr(self, name) for name in self.averaged}, self.config.ema_decay)

    def sampling_net(self, name: str):
        """The network ``name`` as sampling uses it: its weight average where there is one."""
        net = getattr(self, name)
        return self.average[name] if self.average is not None and net is not None else net

    def _step(self, loss: Tensor, optimizers) -> None:
        """One scheduled optimiser step, then the weight average follows."""
        optimizer = optimizers["model"]
        scheduled_step(self, optimizer, loss, self.config)
        if self.average is not None:
            self.average.update({name: getattr(self, name) for name in self.averaged}, optimizer_steps(optimizer))

    @classmethod
    def fit_state(cls, config, showers, incident_energy, conditions, geometry, source):
        state = super().fit_state(config, showers, incident_energy, conditions, geometry, source)
        g = torch.Generator().manual_seed(12345)
        state["representation"] = ShowerRepresentation.fit(
            showers, incident_energy, layer_sizes(geometry), noise_mev=config.noise_mev,
            threshold_mev=config.threshold_mev, alpha=config.alpha, generator=g,
            envelope_bins=config.envelope_bins,
            rings=radial_rings(geometry) if config.radial_split else None).state()
        return state

    @property
    def n_layers(self) -> int:
        return self.representation.n_layers

    @property
    def noise_dim(self) -> int:
        return self.representation.n_layers + self.representation.n_features

    def _context(self, incident_energy: Tensor, conditions: Mapping[str, Tensor]) -> Tensor:
        return self.condition_encoder.encode(incident_energy, conditions).to(self.device)

    def _encode(self, batch: Batch, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(context, y₁, y₂, log-Jacobian) of a batch, dequantised with ``generator``'s noise."""
        y1, y2, logdet = self.representation.encode(batch.showers, batch.incident_energy, generator)
        return self._context(batch.incident_energy, batch.conditions), y1, y2, logdet

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        frozen = {id(p) for p in self.average.parameters()} if self.average is not None else set()
        return {"model": torch.optim.Adam([p for p in self.parameters() if id(p) not in frozen], lr=self.config.lr)}

    def decode(self, noise, incident_energy, conditions):
        y1, y2 = self.transport(noise, incident_energy, conditions)
        return self.representation.decode(y1, y2, incident_energy, dtype=torch.float32)

    def transport(self, noise: Tensor, incident_energy: Tensor,
                  conditions: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Noise (N, L + V) → (y₁, y₂), the representation before the inverse preprocessing."""
        raise NotImplementedError
