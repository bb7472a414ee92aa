"""CaloShowerGAN: a conditional WGAN-GP with MLP generator and critic.

Reproduces the CaloChallenge 2022 submission (M. Faucci Giannelli, R. Zhang,
CaloChallenge workshop 2023) for dataset 1:

==========================  ===========================  ===========================
                            photons (368 voxels)         pions (533 voxels)
==========================  ===========================  ===========================
generator latent; hidden    100; 100, 200, 400           200; 200, 400, 800
critic hidden               368, 368, 368                800, 400, 200
activation, init (G / D)    Swish, Glorot normal /       ReLU, He uniform /
                            He uniform                   He uniform
critic steps, GP λ          8, 3                         5, 20
==========================  ===========================  ===========================

Generator hidden layers are dense + batch norm + activation; critic hidden layers
are dense + activation (batch norm would break the per-sample gradient penalty).
Both networks see the encoded conditions (:mod:`caloforge.conditions`; by default
``log(E/E_min) / log(E_max/E_min)``) concatenated to their input.  The noise is
Gaussian with mean 0.5 and standard deviation 0.5.  Voxel energies are divided by
the incident energy (:class:`~caloforge.preprocessing.ScaleByEnergy`); an optional
constant ``voxel_scale`` (1 in the published configs) brings them to O(1) for short
trainings.  One GAN per energy range is the ``energy_split`` family wrapping this one.

>>> from caloforge.models.base import fit
>>> import torch
>>> cfg = CaloShowerGANConfig(geometry="ds1-photons")
>>> e = torch.tensor([256.0, 4194304.0], dtype=torch.float64)
>>> gan = fit(cfg, torch.zeros(2, 368), e, {})
>>> count_parameters(gan.generator), count_parameters(gan.critic)
(259768, 408113)
>>> tuple(gan.sample(e).shape)
(2, 368)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from caloforge.models.base import BatchSource, ModelConfig, ShowerModel, register
from caloforge.models.parts.gan import AdamConfig, critic_terms
from caloforge.preprocessing import ScaleByEnergy, transform_from_state, transform_state

__all__ = ["CaloShowerGANConfig", "CaloShowerGAN", "Generator", "Critic", "ACTIVATIONS", "INITIALIZERS",
           "count_parameters"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "linear": nn.Identity,
}


def _glorot_normal(weight: Tensor) -> None:
    # Keras GlorotNormal: truncated (±2σ) normal whose *post-truncation* std is sqrt(2/(fan_in+fan_out))
    fan_out, fan_in = weight.shape
    std = math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978
    nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)


def _he_uniform(weight: Tensor) -> None:
    # Keras HeUniform: U(-sqrt(6/fan_in), +sqrt(6/fan_in)); torch's kaiming_uniform with relu gain is the same
    nn.init.kaiming_uniform_(weight, nonlinearity="relu")


def _torch_default(weight: Tensor) -> None:
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


INITIALIZERS = {"glorot_normal": _glorot_normal, "he_uniform": _he_uniform, "torch_default": _torch_default}


@dataclass
class CaloShowerGANConfig(ModelConfig):
    """The ``model:`` section of a CaloShowerGAN config (defaults: the published photon model)."""

    name: str = "caloshowergan"
    latent_dim: int = 100
    generator_hidden: list[int] = field(default_factory=lambda: [100, 200, 400])
    critic_hidden: list[int] = field(default_factory=lambda: [368, 368, 368])
    generator_activation: str = "swish"
    critic_activation: str = "relu"
    output_activation: str = "relu"
    generator_init: str = "glorot_normal"
    critic_init: str = "he_uniform"
    noise_mean: float = 0.5
    noise_std: float = 0.5
    batchnorm_momentum: float = 0.01  # Keras' default moving-average momentum 0.99
    batchnorm_eps: float = 1e-3  # Keras' default epsilon
    voxel_scale: float = 1.0  # network space = voxel / E_inc × voxel_scale (1 = the published preprocessing)
    critic_steps: int = 8
    gp_lambda: float = 3.0
    generator_optimizer: AdamConfig = field(default_factory=lambda: AdamConfig(1e-4, 0.5, 0.999))
    critic_optimizer: AdamConfig = field(default_factory=lambda: AdamConfig(1e-4, 0.9, 0.999))

    def check(self, require, source: str) -> None:
        super().check(require, source)
        require(self.latent_dim > 0, "model.latent_dim", "a positive integer", self.latent_dim)
        for key in ("generator_hidden", "critic_hidden"):
            v = getattr(self, key)
            require(len(v) > 0 and all(w > 0 for w in v), f"model.{key}", "a non-empty list of positive integers", v)
        for key in ("generator_activation", "critic_activation", "output_activation"):
            v = getattr(self, key)
            require(v in ACTIVATIONS, f"model.{key}", f"one of {', '.join(ACTIVATIONS)}", v)
        for key in ("generator_init", "critic_init"):
            v = getattr(self, key)
            require(v in INITIALIZERS, f"model.{key}", f"one of {', '.join(INITIALIZERS)}", v)
        require(self.noise_std > 0, "model.noise_std", "positive", self.noise_std)
        require(0 < self.batchnorm_momentum <= 1, "model.batchnorm_momentum", "in (0, 1]", self.batchnorm_momentum)
        require(self.batchnorm_eps > 0, "model.batchnorm_eps", "positive", self.batchnorm_eps)
        require(self.voxel_scale > 0, "model.voxel_scale", "positive", self.voxel_scale)
        require(self.critic_steps > 0, "model.critic_steps", "a positive integer", self.critic_steps)
        require(self.gp_lambda >= 0, "model.gp_lambda", "≥ 0", self.gp_lambda)
        for name in ("generator_optimizer", "critic_optimizer"):
            getattr(self, name).check(require, f"model.{name}")


def _dense(n_in: int, n_out: int, init: str) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    INITIALIZERS[init](layer.weight)
    nn.init.zeros_(layer.bias)  # Keras default bias initializer
    return layer


class Generator(nn.Module):
    """(noise, condition vector) → normalised voxel energies."""

    def __init__(self, cfg: CaloShowerGANConfig, n_voxels: int, condition_dim: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        n_in = cfg.latent_dim + condition_dim
        for width in cfg.generator_hidden:
            layers += [
                _dense(n_in, width, cfg.generator_init),
                nn.BatchNorm1d(width, eps=cfg.batchnorm_eps, momentum=cfg.batchnorm_momentum),
                ACTIVATIONS[cfg.generator_activation](),
            ]
            n_in = width
        layers += [_dense(n_in, n_voxels, cfg.generator_init), ACTIVATIONS[cfg.output_activation]()]
        self.net = nn.Sequential(*layers)

    def forward(self, noise: Tensor, condition: Tensor) -> Tensor:
        return self.net(torch.cat([noise, condition], dim=1))


class Critic(nn.Module):
    """(normalised voxels, condition vector) → unbounded Wasserstein score."""

    def __init__(self, cfg: CaloShowerGANConfig, n_voxels: int, condition_dim: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        n_in = n_voxels + condition_dim
        for width in cfg.critic_hidden:
            layers += [_dense(n_in, width, cfg.critic_init), ACTIVATIONS[cfg.critic_activation]()]
            n_in = width
        layers.append(_dense(n_in, 1, cfg.critic_init))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        return self.net(torch.cat([x, condition], dim=1)).reshape(-1)


@register("caloshowergan")
class CaloShowerGAN(ShowerModel):
    """One generator + critic pair; see the module docstring."""

    Config = CaloShowerGANConfig
    loss_names = ("critic_loss", "generator_loss", "gradient_penalty", "wasserstein")

    def __init__(self, config: CaloShowerGANConfig, geometry, state: Mapping[str, Any]) -> None:
        super().__init__(config, geometry, state)
        self.preprocessing = transform_from_state(state["preprocessing"])
        dim = self.condition_encoder.dim
        self.generator = Generator(config, geometry.n_voxels, dim)
        self.critic = Critic(config, geometry.n_voxels, dim)

    @classmethod
    def fit_state(cls, config, showers, incident_energy, conditions, geometry, source):
        state = super().fit_state(config, showers, incident_energy, conditions, geometry, source)
        state["preprocessing"] = transform_state(ScaleByEnergy(config.voxel_scale))
        return state

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.config.generator_optimizer.build(self.generator),
                "critic": self.config.critic_optimizer.build(self.critic)}

    @property
    def noise_dim(self) -> int:
        return self.config.latent_dim

    def sample_noise(self, n, generator=None, device=None):
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device or self.device)
        return z * self.config.noise_std + self.config.noise_mean

    def noise_spec(self):
        d = self.config.latent_dim
        return {"distribution": "normal", "mean": [self.config.noise_mean] * d, "std": [self.config.noise_std] * d}

    def decode(self, noise, incident_energy, conditions):
        x = self.generator(noise, self.encode_conditions(incident_energy, conditions))
        return self.preprocessing.inverse(x.to(torch.float64), incident_energy.to(torch.float64))

    def training_step(self, data: BatchSource, optimizers, generator) -> dict[str, float]:
        """``critic_steps`` critic updates, then one generator update."""
        cfg = self.config
        for _ in range(cfg.critic_steps):
            b = data.next()
            real = self.preprocessing.forward(b.showers.to(torch.float64), b.incident_energy).to(torch.float32)
            c = self.encode_conditions(b.incident_energy, b.conditions)
            with torch.no_grad():
                fake = self.generator(self.sample_noise(len(b), generator), c)
            d_real, d_fake, gp = critic_terms(self.critic, real, fake, c, generator)
            d_loss = d_fake - d_real + cfg.gp_lambda * gp
            self.optimize(optimizers["critic"], d_loss)
        b = data.next()
        c = self.encode_conditions(b.incident_energy, b.conditions)
        self.critic.requires_grad_(False)  # only the generator's weights need gradients here
        g_loss = -self.critic(self.generator(self.sample_noise(len(b), generator), c), c).mean()
        self.optimize(optimizers["generator"], g_loss)
        self.critic.requires_grad_(True)
        return {"critic_loss": d_loss.item(), "generator_loss": g_loss.item(), "gradient_penalty": gp.item(),
                "wasserstein": (d_real - d_fake).item()}


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
