"""The ATLAS two-critic WGAN for photons in the EM barrel (266 cells, 4 layers).

A. Ghosh, D. Rousseau for ATLAS, "Generative Adversarial Networks for fast shower
simulation in ATLAS", IN2P3/IRFU ML workshop, January 2019
(``../shared/papers/atlas-gan-fast-shower-simulation-2019.txt``).  What the slides fix:

* a WGAN-GP generator of the flat 266-cell vector (presampler 7×3, strips 56×3,
  middle 7×7, back 4×7), conditioned on the photon energy as a continuous variable
  (not one-hot: it must interpolate, e.g. to the untrained 25 GeV point) and on the
  particle's impact η; trainable Swish x·sigmoid(βx) with β learnt; ReLU outputs
  ("can reproduce the single-bin peaks with ReLU"); Gaussian latent of size 300;
* critic 1 on the 266 cells with gradient penalty λ = 10;
* critic 2 on the cells plus their sum Σ, with a low gradient penalty (the slides
  show 1e-13, "never seen in literature", or none).  Σ is an independent input of
  critic 2 when the critic is trained (its gradient stopped), and a function of the
  cells when the generator is trained, so the generator learns the total energy;
* the generator is trained against both critics (loss −D₁(x̃) − D₂(x̃, Σx̃));
* training ratio 5 (the hyperparameter study: "training ratio of 5 is good"), batch
  64, Adam lr 5·10⁻⁵ with β₁ = 0.5, β₂ = 0.5 (the algorithm listing), 50k epochs.

What the slides leave open and we chose: the layer widths ("deeper generator
needed" is all they say) — generator 128, 256, 512, 1024 (four hidden layers, one
more than the 2018 ATLAS PUB note's three), critics 256, 256, 256 with leaky ReLU
(no batch norm: it would break the per-sample gradient penalty); the generator's
conditions are concatenated to its input and to each critic's; cells are divided by
the incident energy (``voxel_scale`` × x/E, the preprocessing of the later ATLAS
FastCaloGAN); energy encoded log(E/E_min)/log(E_max/E_min), η linearly on its range.
Negative cell energies are set to 0 before training, as the slides' preprocessing.

>>> from caloforge.models.base import fit
>>> import torch
>>> cfg = AtlasGANConfig()
>>> e = torch.tensor([1e3, 262e3], dtype=torch.float64)
>>> gan = fit(cfg, torch.rand(2, 266), e, {"impact_eta": torch.tensor([0.2, 0.25])})
>>> tuple(gan.sample({"incident_energy": e, "impact_eta": [0.21, 0.22]}).shape)
(2, 266)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.models.base import BatchSource, ModelConfig, ShowerModel, register
from caloforge.models.parts.gan import AdamConfig, critic_terms
from caloforge.preprocessing import ScaleByEnergy, transform_from_state, transform_state

__all__ = ["AtlasGANConfig", "AtlasGAN", "TrainableSwish", "AtlasGenerator", "AtlasCritic", "EnergySumCritic"]


@dataclass
class AtlasGANConfig(ModelConfig):
    """The ``model:`` section of an ATLAS two-critic WGAN config (defaults: the slides' set-up)."""

    name: str = "atlas_gan"
    geometry: str = "atlas-4layer"
    conditions: dict[str, str] = field(default_factory=lambda: {"incident_energy": "log", "impact_eta": "linear"})
    latent_dim: int = 300
    generator_hidden: list[int] = field(default_factory=lambda: [128, 256, 512, 1024])
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    sum_critic_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    leaky_slope: float = 0.2
    voxel_scale: float = 1.0
    critic_steps: int = 5  # training ratio
    gp_lambda: float = 10.0
    sum_critic_gp_lambda: float = 1e-13  # "low or zero"
    two_critics: bool = True
    generator_optimizer: AdamConfig = field(default_factory=lambda: AdamConfig(5e-5, 0.5, 0.5))
    critic_optimizer: AdamConfig = field(default_factory=lambda: AdamConfig(5e-5, 0.5, 0.5))

    def check(self, require, source: str) -> None:
        super().check(require, source)
        require(self.latent_dim > 0, "model.latent_dim", "a positive integer", self.latent_dim)
        for key in ("generator_hidden", "critic_hidden", "sum_critic_hidden"):
            v = getattr(self, key)
            require(len(v) > 0 and all(w > 0 for w in v), f"model.{key}", "a non-empty list of positive integers", v)
        require(self.leaky_slope >= 0, "model.leaky_slope", "≥ 0", self.leaky_slope)
        require(self.voxel_scale > 0, "model.voxel_scale", "positive", self.voxel_scale)
        require(self.critic_steps > 0, "model.critic_steps", "a positive integer", self.critic_steps)
        require(self.gp_lambda >= 0, "model.gp_lambda", "≥ 0", self.gp_lambda)
        require(self.sum_critic_gp_lambda >= 0, "model.sum_critic_gp_lambda", "≥ 0", self.sum_critic_gp_lambda)
        for name in ("generator_optimizer", "critic_optimizer"):
            getattr(self, name).check(require, f"model.{name}")


class TrainableSwish(nn.Module):
    """Swish x·sigmoid(βx) with a learnt β (Ramachandran et al. 2017), β₀ = 1.

    >>> act = TrainableSwish()
    >>> round(float(act(torch.tensor([1.0])).detach()), 4), [n for n, _ in act.named_parameters()]
    (0.7311, ['beta'])
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(float(beta)))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x)


def _mlp(n_in: int, hidden, n_out: int, act) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in hidden:
        layers += [nn.Linear(n_in, w), act()]
        n_in = w
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class AtlasGenerator(nn.Module):
    """(noise, conditions) → normalised cells ≥ 0; hidden layers use trainable Swish."""

    def __init__(self, cfg: AtlasGANConfig, n_cells: int, condition_dim: int) -> None:
        super().__init__()
        self.net = _mlp(cfg.latent_dim + condition_dim, cfg.generator_hidden, n_cells, TrainableSwish)

    def forward(self, noise: Tensor, condition: Tensor) -> Tensor:
        return F.relu(self.net(torch.cat([noise, condition], dim=1)))


class AtlasCritic(nn.Module):
    """Critic 1: (cells, conditions) → Wasserstein score."""

    def __init__(self, cfg: AtlasGANConfig, n_in: int, condition_dim: int, hidden=None) -> None:
        super().__init__()
        slope = cfg.leaky_slope
        self.net = _mlp(n_in + condition_dim, hidden or cfg.critic_hidden, 1, lambda: nn.LeakyReLU(slope))

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        return self.net(torch.cat([x, condition], dim=1)).reshape(-1)


class EnergySumCritic(AtlasCritic):
    """Critic 2: the cells plus their sum Σ (the sum given as an extra input column)."""

    def __init__(self, cfg: AtlasGANConfig, n_cells: int, condition_dim: int) -> None:
        super().__init__(cfg, n_cells + 1, condition_dim, cfg.sum_critic_hidden)


def with_sum(cells: Tensor, detach: bool) -> Tensor:
    """Cells ⊕ Σcells; ``detach`` makes Σ an independent input (no gradient through the sum)."""
    s = cells.sum(1, keepdim=True)
    return torch.cat([cells, s.detach() if detach else s], dim=1)


@register("atlas_gan")
class AtlasGAN(ShowerModel):
    """See the module docstring."""

    Config = AtlasGANConfig
    loss_names = ("critic_loss", "sum_critic_loss", "generator_loss", "gradient_penalty", "wasserstein",
                  "wasserstein_sum")

    def __init__(self, config: AtlasGANConfig, geometry, state: Mapping[str, Any]) -> None:
        super().__init__(config, geometry, state)
        self.preprocessing = transform_from_state(state["preprocessing"])
        dim, n = self.condition_encoder.dim, geometry.n_voxels
        self.generator = AtlasGenerator(config, n, dim)
        self.critic = AtlasCritic(config, n, dim)
        self.sum_critic = EnergySumCritic(config, n, dim) if config.two_critics else None

    @classmethod
    def fit_state(cls, config, showers, incident_energy, conditions, geometry, source):
        state = super().fit_state(config, showers, incident_energy, conditions, geometry, source)
        state["preprocessing"] = transform_state(ScaleByEnergy(config.voxel_scale))
        return state

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        g, d = self.config.generator_optimizer, self.config.critic_optimizer
        opts = {"generator": g.build(self.generator), "critic": d.build(self.critic)}
        if self.sum_critic is not None:
            opts["sum_critic"] = d.build(self.sum_critic)
        return opts

    @property
    def noise_dim(self) -> int:
        return self.config.latent_dim

    def decode(self, noise, incident_energy, conditions):
        x = self.generator(noise, self.encode_conditions(incident_energy, conditions))
        return self.preprocessing.inverse(x.to(torch.float64), incident_energy.to(torch.float64))

    def _real(self, b) -> Tensor:
        cells = b.showers.to(torch.float64).clamp_min(0.0)  # negative energies set to 0
        return self.preprocessing.forward(cells, b.incident_energy).to(torch.float32)

    def training_step(self, data: BatchSource, optimizers, generator) -> dict[str, float]:
        """``critic_steps`` updates of both critics, then one generator update against both."""
        cfg = self.config
        gp2, w2, d2_loss = torch.zeros(()), torch.zeros(()), torch.zeros(())
        for _ in range(cfg.critic_steps):
            b = data.next()
            real, c = self._real(b), self.encode_conditions(b.incident_energy, b.conditions)
            with torch.no_grad():
                fake = self.generator(self.sample_noise(len(b), generator), c)
            d_real, d_fake, gp = critic_terms(self.critic, real, fake, c, generator)
            d_loss = d_fake - d_real + cfg.gp_lambda * gp
            self.optimize(optimizers["critic"], d_loss)
            if self.sum_critic is not None:
                s_real, s_fake, gp2 = critic_terms(self.sum_critic, with_sum(real, True), with_sum(fake, True), c,
                                                   generator)
                d2_loss = s_fake - s_real + cfg.sum_critic_gp_lambda * gp2
                self.optimize(optimizers["sum_critic"], d2_loss)
                w2 = s_real - s_fake
        b = data.next()
        c = self.encode_conditions(b.incident_energy, b.conditions)
        critics = [self.critic] + ([self.sum_critic] if self.sum_critic is not None else [])
        for m in critics:
            m.requires_grad_(False)
        fake = self.generator(self.sample_noise(len(b), generator), c)
        g_loss = -self.critic(fake, c).mean()
        if self.sum_critic is not None:
            g_loss = g_loss - self.sum_critic(with_sum(fake, False), c).mean()
        self.optimize(optimizers["generator"], g_loss)
        for m in critics:
            m.requires_grad_(True)
        return {"critic_loss": d_loss.item(), "sum_critic_loss": float(d2_loss.detach()), "generator_loss": g_loss.item(),
                "gradient_penalty": gp.item(), "wasserstein": (d_real - d_fake).item(), "wasserstein_sum": float(w2.detach())}
