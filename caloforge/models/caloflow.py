"""CaloFlow-style conditional coupling normalising flow (``model.name: caloflow``).

Two flows, trained together by maximum likelihood (CaloFlow, Krause & Shih 2021;
CaloINN, Ernst et al. 2023), on the representation of :mod:`caloforge.models.flow_parts`:

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
from caloforge.models.base import Batch, BatchSource, ModelConfig, ShowerModel, layer_sizes, register
from caloforge.models.flow_parts import (FlowConfig, ShowerRepresentation, WeightAverage, check_average_key,
                                        check_schedule_keys, conditional_flow, flow_inverse, flow_log_prob,
                                        optimizer_steps, radial_rings, scheduled_step)

__all__ = ["CaloFlowConfig", "CaloFlow", "FlowConfig", "check_representation_keys"]


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
class CaloFlowConfig(ModelConfig):
    """The ``model:`` section of a CaloFlow config (CPU-sized defaults)."""

    name: str = "caloflow"
    layer_flow: FlowConfig = field(default_factory=lambda: FlowConfig("spline", 6, [64, 64], 8))
    voxel_flow: FlowConfig = field(default_factory=lambda: FlowConfig("affine", 8, [256, 256], 8))
    noise_mev: float = 1e-3  # uniform dequantisation noise [MeV]; the readout threshold of the reference data
    threshold_mev: float | None = None  # generated voxels below it read 0 (empty: fitted, the data's readout threshold)
    alpha: float = 1e-6  # logit regulariser
    envelope_bins: int = 32  # cap voxel fractions at their training maximum per E_inc bin (0: off)
    radial_split: bool = False  # r–α layers as ring fractions + α fractions within each ring
    lr: float = 1e-3
    lr_min: float = 1e-5  # cosine decay from lr to lr_min over lr_decay_iterations (0: constant lr)
    lr_decay_iterations: int = 0
    grad_clip: float = 10.0
    ema_decay: float = 0.0  # sample and validate with an average of the weights (0: off; e.g. 0.999)

    def check(self, require, source: str) -> None:
        super().check(require, source)
        self.layer_flow.check(require, "model.layer_flow")
        self.voxel_flow.check(require, "model.voxel_flow")
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
