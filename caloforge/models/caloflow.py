"""CaloFlow-style conditional coupling normalising flow (``model.name: caloflow``).

Two flows, trained together by maximum likelihood (CaloFlow, Krause & Shih 2021;
CaloINN, Ernst et al. 2023), on the representation of :mod:`caloforge.models.parts.representation`:

* the *layer flow* models the L layer energies (as logit u-variables) given the
  encoded incident energy (and angles where the data has them);
* the *voxel flow* models the V normalised voxel energies (logit fractions within
  each layer) given the incident energy and the layer vector.

Both are zuko coupling flows (two-pass masked transforms = coupling layers, affine or
rational-quadratic spline), so sampling is one pass through each flow: the noise of
:meth:`CaloFlow.decode` is (N, L + V) standard normal.  The exact log-likelihood of
held-out showers, Jacobian of the preprocessing included, is the validation metric
``val_nll`` (nats per shower, of the layer energies in MeV and the dequantised voxel
fractions); ``training.select_by: val_nll`` picks ``best`` by it.

>>> import torch
>>> from caloforge.models.base import fit
>>> cfg = CaloFlowConfig(geometry="ds1-photons", layer_flow=FlowConfig(transforms=2, hidden=[16]),
...                      voxel_flow=FlowConfig(transforms=2, hidden=[16]))
>>> e = torch.tensor([1000.0, 64000.0], dtype=torch.float64)
>>> showers = torch.rand(2, 368) * e[:, None].float() / 368 * 0.2
>>> model = fit(cfg, showers, e, {})
>>> model.noise_dim, tuple(model.sample(e).shape)
(373, (2, 368))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor

from caloforge.errors import ConfigError
from caloforge.models.base import Batch, BatchSource, register
from caloforge.models.parts.flows import FlowConfig, conditional_flow, flow_inverse, flow_log_prob
from caloforge.models.parts.two_stage import TwoStageConfig, TwoStageFamily

__all__ = ["CaloFlowConfig", "CaloFlow", "FlowConfig"]


@dataclass
class CaloFlowConfig(TwoStageConfig):
    """The ``model:`` section of a CaloFlow config (CPU-sized defaults)."""

    name: str = "caloflow"
    layer_flow: FlowConfig = field(default_factory=lambda: FlowConfig("spline", 6, [64, 64], 8))
    voxel_flow: FlowConfig = field(default_factory=lambda: FlowConfig("affine", 8, [256, 256], 8))

    def check(self, require, source: str) -> None:
        super().check(require, source)
        self.layer_flow.check(require, "model.layer_flow")
        self.voxel_flow.check(require, "model.voxel_flow")


@register("caloflow")
class CaloFlow(TwoStageFamily):
    """Layer flow + voxel flow; see the module docstring."""

    Config = CaloFlowConfig
    loss_names = ("nll", "nll_layers", "nll_voxels")
    averaged = ("layer_flow", "voxel_flow")

    def __init__(self, config: CaloFlowConfig, geometry, state: Mapping[str, Any]) -> None:
        super().__init__(config, geometry, state)
        c, L, V = self.condition_encoder.dim, self.representation.n_layers, self.representation.n_features
        self.layer_flow = conditional_flow(L, c, config.layer_flow, seed=1)
        self.voxel_flow = conditional_flow(V, c + L, config.voxel_flow, seed=2)
        self._start_average()

    def _log_probs(self, c: Tensor, y1: Tensor, y2: Tensor, averaged: bool = False) -> tuple[Tensor, Tensor]:
        net = self.sampling_net if averaged else functools.partial(getattr, self)
        return flow_log_prob(net("layer_flow"), y1, c), flow_log_prob(net("voxel_flow"), y2, torch.cat([c, y1], 1))

    def training_step(self, data: BatchSource, optimizers, generator) -> dict[str, float]:
        c, y1, y2, _ = self._encode(data.next(), generator)
        lp1, lp2 = self._log_probs(c, y1, y2)
        # per-dimension scale keeps the learning rate meaningful for any geometry
        loss = -(lp1.mean() + lp2.mean()) / (y1.shape[1] + y2.shape[1])
        self._step(loss, optimizers)
        return {"nll": -(lp1 + lp2).mean().item(), "nll_layers": -lp1.mean().item(),
                "nll_voxels": -lp2.mean().item()}

    def validation_metrics(self, batch: Batch) -> dict[str, float]:
        """Exact NLL per shower (nats) of held-out showers, preprocessing Jacobian included."""
        g = torch.Generator(device=batch.showers.device).manual_seed(0)  # the same dequantisation every time
        with torch.no_grad():
            c, y1, y2, logdet = self._encode(batch, g)
            lp1, lp2 = self._log_probs(c, y1, y2, averaged=True)
            nll = -(lp1.double() + lp2.double() + logdet.to(lp1.device))
        return {"val_nll": nll.mean().item(), "val_nll_layers": -lp1.mean().item()}

    # --- sampling options: the temperature of the voxel flow's latent (Glow's reduced temperature) ---
    def default_sampling(self) -> dict[str, Any]:
        return {"temperature": 1.0}

    def check_sampling(self, options: Mapping[str, Any]) -> None:
        if not 0 < options["temperature"] <= 1:
            raise ConfigError(f"sampling option temperature must be in (0, 1], got {options['temperature']}")

    def _noise_std(self) -> Tensor:
        """Standard deviation of every latent column: 1 for the layer flow, the temperature for the voxel flow.
        Layer energies, hence E_tot, keep their full spread; a temperature below 1 only draws the
        voxel pattern from the flow's denser core."""
        std = torch.ones(self.noise_dim)
        std[self.n_layers:] = self.sampling_options["temperature"]
        return std

    def sample_noise(self, n, generator=None, device=None):
        noise = super().sample_noise(n, generator, device)
        return noise * self._noise_std().to(noise)  # the draws of T = 1, scaled: × 1.0 is exact

    def noise_spec(self) -> dict[str, Any]:
        return {"distribution": "normal", "mean": [0.0] * self.noise_dim, "std": self._noise_std().tolist()}

    def transport(self, noise, incident_energy, conditions):
        c = self._context(incident_energy, conditions)
        L = self.n_layers
        noise = noise.to(torch.float32)
        y1 = flow_inverse(self.sampling_net("layer_flow"), noise[:, :L], c)
        y2 = flow_inverse(self.sampling_net("voxel_flow"), noise[:, L:], torch.cat([c, y1], 1))
        return y1, y2
