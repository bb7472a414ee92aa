"""A tiny model family defined outside the package: the "Adding a model family" example of docs/training-and-models.md.

A per-voxel log-normal model: a linear map from the condition vector to the mean
and log-width of log(voxel / E_inc + ε).  Its loss is an exact negative
log-likelihood (no noise in training), which makes it the reference for the
data-parallel test: with the same global batch, 1 and 2 processes see the same loss.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from caloforge.models import ModelConfig, ShowerModel, register
from caloforge.preprocessing import Chain, Log, ScaleByEnergy, Standardize, transform_from_state, transform_state


@dataclass
class ToyConfig(ModelConfig):
    name: str = "toy_lognormal"
    epsilon: float = 1e-4
    lr: float = 1e-2

    def check(self, require, source):
        super().check(require, source)
        require(self.epsilon > 0, "model.epsilon", "positive", self.epsilon)
        require(self.lr > 0, "model.lr", "positive", self.lr)


@register("toy_lognormal")
class ToyLogNormal(ShowerModel):
    Config = ToyConfig
    loss_names = ("nll",)

    def __init__(self, config, geometry, state):
        super().__init__(config, geometry, state)
        self.preprocessing = transform_from_state(state["preprocessing"])
        self.head = nn.Linear(self.condition_encoder.dim, 2 * geometry.n_voxels)

    @classmethod
    def fit_state(cls, config, showers, incident_energy, conditions, geometry, source):
        state = super().fit_state(config, showers, incident_energy, conditions, geometry, source)
        chain = Chain([ScaleByEnergy(1.0), Log(config.epsilon), Standardize()])
        chain.fit(showers.to(torch.float64), incident_energy)
        state["preprocessing"] = transform_state(chain)
        return state

    def configure_optimizers(self):
        return {"adam": torch.optim.Adam(self.parameters(), lr=self.config.lr)}

    def _nll(self, batch):
        y = self.preprocessing.forward(batch.showers.to(torch.float64), batch.incident_energy).float()
        mean, log_width = self.head(self.condition_encoder.encode(batch.incident_energy, batch.conditions)).chunk(2, 1)
        return (0.5 * ((y - mean) * torch.exp(-log_width)) ** 2 + log_width).mean()

    def training_step(self, data, optimizers, generator):
        _maybe_die()
        loss = self._nll(data.next())
        self.optimize(optimizers["adam"], loss)
        return {"nll": loss.item()}

    def validation_metrics(self, batch):
        with torch.no_grad():
            return {"val_nll": self._nll(batch).item()}

    @property
    def noise_dim(self):
        return self.geometry.n_voxels

    def decode(self, noise, incident_energy, conditions):
        mean, log_width = self.head(self.condition_encoder.encode(incident_energy, conditions)).chunk(2, 1)
        y = (mean + torch.exp(log_width) * noise).to(torch.float64)
        return self.preprocessing.inverse(y, incident_energy.to(torch.float64))


_STEPS = {"n": 0}


def _maybe_die() -> None:
    """Fault injection for the data-parallel tests: TOY_DIE_AT="STEP:RANK" kills that rank at that step."""
    spec = os.environ.get("TOY_DIE_AT")
    _STEPS["n"] += 1
    if spec:
        step, rank = (int(x) for x in spec.split(":"))
        if _STEPS["n"] == step and int(os.environ.get("RANK", "0")) == rank:
            os._exit(17)
