"""CaloShowerGAN: an energy-conditioned WGAN-GP with MLP generator and critic.

Reproduces the CaloChallenge 2022 submission (M. Faucci Giannelli, R. Zhang,
CaloChallenge workshop 2023) for dataset 1:

==========================  ===========================  ===========================
                            photons (368 voxels)         pions (533 voxels)
==========================  ===========================  ===========================
generator latent; hidden    100; 100, 200, 400           200; 200, 400, 800
critic hidden               368, 368, 368                800, 400, 200
activation, init (G / D)    Swish, Glorot normal /       ReLU, He uniform /
                            He uniform                   He uniform
==========================  ===========================  ===========================

Generator hidden layers are dense + batch norm + activation; critic hidden layers
are dense + activation (batch norm would break the per-sample gradient penalty).
Both networks see the condition ``log(E/E_min) / log(E_max/E_min)`` concatenated
to their input.  The noise is Gaussian with mean 0.5 and standard deviation 0.5.
Voxel energies are divided by the incident energy (:class:`Preprocessing`); an
optional constant ``voxel_scale`` (1 in the published configs) brings them to O(1)
for short trainings.

>>> cfg = CaloShowerGANConfig()
>>> gan = CaloShowerGAN(cfg, Preprocessing(256.0, 4194304.0, 368, "ds1-photons"))
>>> count_parameters(gan.generator), count_parameters(gan.critic)
(259768, 408113)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "CaloShowerGANConfig",
    "Preprocessing",
    "Generator",
    "Critic",
    "CaloShowerGAN",
    "ACTIVATIONS",
    "INITIALIZERS",
    "count_parameters",
]

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
class CaloShowerGANConfig:
    """Architecture of one CaloShowerGAN (the ``model:`` section of a training config).

    ``energy_split`` lists incident-energy boundaries in MeV: one GAN per range.
    ``energy_range`` ([E_min, E_max] MeV) fixes the conditioning range; empty takes it
    from the training data.
    """

    name: str = "caloshowergan"
    geometry: str = "ds1-photons"
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
    energy_split: list[float] = field(default_factory=list)
    energy_range: list[float] = field(default_factory=list)
    voxel_scale: float = 1.0  # network space = voxel / E_inc × voxel_scale (1 = the published preprocessing)


@dataclass(frozen=True)
class Preprocessing:
    """Maps showers in MeV to network space and back, and energies to the condition.

    >>> p = Preprocessing(1000.0, 100000.0, 2, "toy")
    >>> p.condition(torch.tensor([1000.0, 10000.0, 100000.0])).tolist()
    [0.0, 0.5, 1.0]
    >>> e = torch.tensor([5000.0])
    >>> p.inverse(p.forward(torch.tensor([[1000.0, 250.0]]), e), e).tolist()
    [[1000.0, 250.0]]
    """

    e_min: float
    e_max: float
    n_voxels: int
    geometry: str
    voxel_scale: float = 1.0

    def condition(self, incident_energy: Tensor) -> Tensor:
        """log(E/E_min) / log(E_max/E_min) as a float32 tensor; in [0, 1] inside the trained range."""
        e = torch.as_tensor(incident_energy, dtype=torch.float64)
        span = math.log(self.e_max / self.e_min) if self.e_max > self.e_min else 1.0
        return (torch.log(e / self.e_min) / span).to(torch.float32)

    def forward(self, showers: Tensor, incident_energy: Tensor) -> Tensor:
        """Voxel energies / incident energy × ``voxel_scale`` (float32)."""
        e = torch.as_tensor(incident_energy, dtype=torch.float64, device=showers.device).reshape(-1, 1)
        return (showers.to(torch.float64) * (self.voxel_scale / e)).to(torch.float32)

    def inverse(self, x: Tensor, incident_energy: Tensor) -> Tensor:
        """Network output → voxel energies in MeV, clipped at zero."""
        e = torch.as_tensor(incident_energy, dtype=torch.float64, device=x.device).reshape(-1, 1)
        return (x.to(torch.float64).clamp_min(0.0) * (e / self.voxel_scale)).to(torch.float32)


def _dense(n_in: int, n_out: int, init: str) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    INITIALIZERS[init](layer.weight)
    nn.init.zeros_(layer.bias)  # Keras default bias initializer
    return layer


class Generator(nn.Module):
    """(noise, condition) → normalised voxel energies."""

    def __init__(self, cfg: CaloShowerGANConfig, n_voxels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        n_in = cfg.latent_dim + 1
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
        return self.net(torch.cat([noise, condition.reshape(-1, 1)], dim=1))


class Critic(nn.Module):
    """(normalised voxels, condition) → unbounded Wasserstein score."""

    def __init__(self, cfg: CaloShowerGANConfig, n_voxels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        n_in = n_voxels + 1
        for width in cfg.critic_hidden:
            layers += [_dense(n_in, width, cfg.critic_init), ACTIVATIONS[cfg.critic_activation]()]
            n_in = width
        layers.append(_dense(n_in, 1, cfg.critic_init))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        return self.net(torch.cat([x, condition.reshape(-1, 1)], dim=1)).reshape(-1)


class CaloShowerGAN(nn.Module):
    """One generator + critic pair for one incident-energy range."""

    def __init__(self, cfg: CaloShowerGANConfig, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.cfg = cfg
        self.preprocessing = preprocessing
        self.generator = Generator(cfg, preprocessing.n_voxels)
        self.critic = Critic(cfg, preprocessing.n_voxels)

    def noise(self, n: int, rng: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
        """Gaussian latent vectors with the configured mean (0.5) and std (0.5)."""
        z = torch.randn(n, self.cfg.latent_dim, generator=rng, device=device)
        return z * self.cfg.noise_std + self.cfg.noise_mean

    @torch.no_grad()
    def sample(self, incident_energy: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Showers in MeV (float32, ≥ 0) for incident energies in MeV, on the model's device."""
        device = next(self.parameters()).device
        e = torch.as_tensor(incident_energy, dtype=torch.float64, device=device).reshape(-1)
        z = self.noise(len(e), rng, device)
        x = self.generator(z, self.preprocessing.condition(e).to(device))
        return self.preprocessing.inverse(x, e)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

