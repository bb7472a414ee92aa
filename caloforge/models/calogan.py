"""CaloGAN: one locally connected generator per calorimeter layer, linked by attention.

Paganini, de Oliveira, Nachman, PRL 120 (2018) 042003 and PRD 97 (2018) 014021
(``../shared/papers/calogan-prl-2018.txt``).  Where the letter is vague the choices
follow the authors' public code (hep-lbdl/CaloGAN, ``models/train.py``,
``architectures.py``, ``ops.py``); the code was read, not copied.

Generator (one stream per read-out layer, shaped by that layer's grid r × c)::

    h = z · E/100 GeV                          (latent times the requested energy, as the authors)
    Dense(latent → (r+2)(c+2)·36) → reshape (36, r+2, c+2)
    Conv 2×2 'same' → 16, LeakyReLU, BatchNorm
    LocallyConnected 2×2 → 6 (r+1, c+1), LeakyReLU
    LocallyConnected 2×2 → 1 (r, c), no bias
    attention: layer i+1 ← softmax-weighted mix of itself and layer i resized to its grid
    ReLU (sparse, non-negative cell energies in GeV)

The attentional transfer follows the authors' ``inpainting_attention``: a 3×3
convolution of [own image, previous layer's image resized to this grid] gives two
logits per cell whose softmax weights the two.  Resizing is nearest-neighbour
up-sampling then average pooling (3×96 → 12×12: rows ×4, columns /8; 12×12 → 12×6:
columns /2), written for any grid with :func:`resize_image`.

Discriminator (per layer, then joined)::

    Conv 2×2 'same' → 64, LeakyReLU
    pad 1, LocallyConnected 3×3 stride (1, 2) → 16, LeakyReLU, BatchNorm
    pad 1, LocallyConnected 2×2 → 8, LeakyReLU, BatchNorm
    pad 1, LocallyConnected 2×2 stride (1, 2) → 8, LeakyReLU, BatchNorm
    flatten → features ⊕ minibatch discrimination(features) ⊕ sparsity ⊕ minibatch discrimination(sparsity)
    joined: features of the 3 layers ⊕ E_i/10 ⊕ Ê/100 ⊕ |Ê − E_0| ⊕ 10·[|Ê − E_0| > 5 GeV]
            ⊕ minibatch discrimination(E_i) → Dense → real/fake logit

The discriminator's second output is the reconstructed energy Ê (sum of the cells,
parameter-free, as in the authors' code); its mean absolute deviation from the
requested E_0, weighted λ_E = 0.05, enters both losses, so in effect it pulls the
generator towards energy conservation.  Minibatch discrimination is Salimans et al.
(2016): 10 kernels of dimension 10 on each feature set, L1 distances, tanh.  The
sparsity fed to it is a differentiable count of lit cells, 1 − exp(−x/τ) summed
over the layer (τ = 1 keV), since a hard count passes no gradient to the generator.

Training as the authors: Adam (β₁ = 0.5), discriminator lr 2·10⁻⁵, generator lr
2·10⁻⁴, batch 256, latent 1024; per iteration one discriminator update on a real
batch and one on a fake batch (kept apart because of batch norm and minibatch
discrimination), then two generator updates.  Fake energies are drawn from the
training energies (the authors drew U(1, 100) GeV, the training spectrum).

Our sampling calorimeter may store visible (not calibrated) energy, so Ê is the
cell sum divided by the detector response R = ⟨E_dep/E_0⟩ fitted on the training
data (R = 1 for the paper's data, whose layer energies include the passive layers).
One model per particle type (one config per particle), as in the paper.

>>> from caloforge.models.base import fit
>>> import torch
>>> cfg = CaloGANConfig(latent_dim=8, generator_channels=[4, 4, 2], discriminator_channels=[4, 4, 2, 2])
>>> e = torch.tensor([1e3, 1e5], dtype=torch.float64)
>>> gan = fit(cfg, torch.rand(2, 504), e, {})
>>> tuple(gan.sample(e).shape)
(2, 504)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.errors import ConfigError
from caloforge.models.base import BatchSource, ModelConfig, ShowerModel, register
from caloforge.models.parts.gan import AdamConfig

__all__ = ["CaloGANConfig", "CaloGAN", "LocallyConnected2d", "MinibatchDiscrimination", "resize_image",
           "LayerGenerator", "LayerDiscriminator", "Attention"]

GEV = 1000.0  # the networks work in GeV, as the authors'


@dataclass
class CaloGANConfig(ModelConfig):
    """The ``model:`` section of a CaloGAN config (defaults: the paper's positron model)."""

    name: str = "calogan"
    geometry: str = "calogan"
    particle: str = "positron"
    latent_dim: int = 1024
    energy_norm_gev: float = 100.0  # h = z · E / energy_norm_gev
    generator_channels: list[int] = field(default_factory=lambda: [36, 16, 6])
    discriminator_channels: list[int] = field(default_factory=lambda: [64, 16, 8, 8])
    attention: bool = True
    minibatch_kernels: int = 10
    minibatch_kernel_dim: int = 10
    sparsity_tau_mev: float = 0.001
    energy_loss_weight: float = 0.05  # λ_E
    generator_steps: int = 2
    leaky_slope: float = 0.3  # Keras' LeakyReLU default
    batchnorm_momentum: float = 0.01  # Keras' default moving-average momentum 0.99
    batchnorm_eps: float = 1e-3
    generator_optimizer: AdamConfig = field(default_factory=lambda: AdamConfig(2e-4, 0.5, 0.999))
    discriminator_optimizer: AdamConfig = field(default_factory=lambda: AdamConfig(2e-5, 0.5, 0.999))

    def check(self, require, source: str) -> None:
        super().check(require, source)
        require(set(self.conditions) == {"incident_energy"}, "model.conditions",
                "{incident_energy: ...} only (CaloGAN scales its latent vector by the energy)", self.conditions)
        require(self.latent_dim > 0, "model.latent_dim", "a positive integer", self.latent_dim)
        require(self.energy_norm_gev > 0, "model.energy_norm_gev", "positive", self.energy_norm_gev)
        require(len(self.generator_channels) == 3 and all(c > 0 for c in self.generator_channels),
                "model.generator_channels", "3 positive integers (dense, conv, locally connected)",
                self.generator_channels)
        require(len(self.discriminator_channels) == 4 and all(c > 0 for c in self.discriminator_channels),
                "model.discriminator_channels", "4 positive integers (conv, 3 locally connected)",
                self.discriminator_channels)
        for key in ("minibatch_kernels", "minibatch_kernel_dim", "generator_steps"):
            require(getattr(self, key) > 0, f"model.{key}", "a positive integer", getattr(self, key))
        require(self.sparsity_tau_mev > 0, "model.sparsity_tau_mev", "positive", self.sparsity_tau_mev)
        require(self.energy_loss_weight >= 0, "model.energy_loss_weight", "≥ 0", self.energy_loss_weight)
        require(self.leaky_slope >= 0, "model.leaky_slope", "≥ 0", self.leaky_slope)
        require(0 < self.batchnorm_momentum <= 1, "model.batchnorm_momentum", "in (0, 1]", self.batchnorm_momentum)
        require(self.batchnorm_eps > 0, "model.batchnorm_eps", "positive", self.batchnorm_eps)
        for name in ("generator_optimizer", "discriminator_optimizer"):
            getattr(self, name).check(require, f"model.{name}")


# ----------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------
class LocallyConnected2d(nn.Module):
    """A 'valid' convolution whose weights differ at every output position (Keras' LocallyConnected2D).

    >>> lc = LocallyConnected2d(2, 3, (4, 5), kernel=(2, 2))
    >>> lc(torch.zeros(7, 2, 4, 5)).shape, lc.weight.shape   # 3×4 positions, each 2·2·2 → 3
    (torch.Size([7, 3, 3, 4]), torch.Size([12, 8, 3]))
    """

    def __init__(self, in_channels: int, out_channels: int, in_size: Sequence[int], kernel: Sequence[int],
                 stride: Sequence[int] = (1, 1), bias: bool = True, init: str = "he_uniform") -> None:
        super().__init__()
        (h, w), (kh, kw), (sh, sw) = in_size, kernel, stride
        self.kernel, self.stride = (kh, kw), (sh, sw)
        self.out_size = ((h - kh) // sh + 1, (w - kw) // sw + 1)
        if min(self.out_size) < 1:
            raise ConfigError(f"locally connected layer: input {tuple(in_size)} is smaller than kernel {kernel}")
        fan_in = in_channels * kh * kw
        n_pos = self.out_size[0] * self.out_size[1]
        self.weight = nn.Parameter(torch.empty(n_pos, fan_in, out_channels))
        bound = math.sqrt(6.0 / fan_in) if init == "he_uniform" else math.sqrt(6.0 / (fan_in + out_channels))
        nn.init.uniform_(self.weight, -bound, bound)
        self.bias = nn.Parameter(torch.zeros(out_channels, *self.out_size)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out_size
        # patches by kh·kw strided slices (F.unfold's CPU backward is far slower for these small grids),
        # laid out (positions, N, C·kh·kw) in F.unfold's (c, i, j) order for one batched matmul
        patches = torch.stack([x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                               for i in range(kh) for j in range(kw)], dim=2)  # (N, C, kh·kw, oh, ow)
        cols = patches.flatten(1, 2).flatten(2).permute(2, 0, 1)  # (L, N, C·kh·kw)
        out = torch.bmm(cols, self.weight).permute(1, 2, 0).reshape(-1, self.weight.shape[-1], oh, ow)
        return out if self.bias is None else out + self.bias


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. (2016): per sample, Σ_j exp(−‖M_i,b − M_j,b‖₁) for each of B kernels, then tanh.

    >>> mbd = MinibatchDiscrimination(4, 3, 2)
    >>> mbd(torch.zeros(5, 4)).shape
    torch.Size([5, 3])
    """

    def __init__(self, in_features: int, kernels: int = 10, kernel_dim: int = 10) -> None:
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.project = nn.Linear(in_features, kernels * kernel_dim)
        nn.init.xavier_uniform_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: Tensor) -> Tensor:
        m = self.project(x).reshape(-1, self.kernels, self.kernel_dim)
        l1 = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(-1)  # (N, N, B)
        return torch.tanh(torch.exp(-l1).sum(1))


def resize_image(img: Tensor, shape: Sequence[int]) -> Tensor:
    """(N, C, h, w) → (N, C, *shape): nearest up-sampling by whole factors, then average pooling.

    3×96 → 12×12 repeats rows ×4 and averages columns in groups of 8, as the CaloGAN code.

    >>> resize_image(torch.arange(8.).reshape(1, 1, 1, 8), (2, 2)).squeeze().tolist()
    [[1.5, 5.5], [1.5, 5.5]]
    """
    h, w = img.shape[-2:]
    th, tw = int(shape[0]), int(shape[1])
    up_h, up_w = max(1, -(-th // h)), max(1, -(-tw // w))
    if up_h > 1 or up_w > 1:
        img = img.repeat_interleave(up_h, dim=-2).repeat_interleave(up_w, dim=-1)
    return F.adaptive_avg_pool2d(img, (th, tw))


class LayerGenerator(nn.Module):
    """One calorimeter layer's generator stream: h → (N, 1, r, c) pre-activation cell energies."""

    def __init__(self, cfg: CaloGANConfig, shape: Sequence[int]) -> None:
        super().__init__()
        r, c = shape
        c0, c1, c2 = cfg.generator_channels
        self.grid = (c0, r + 2, c + 2)
        self.dense = nn.Linear(cfg.latent_dim, c0 * (r + 2) * (c + 2))
        self.conv = nn.Conv2d(c0, c1, 2)
        nn.init.kaiming_uniform_(self.conv.weight, nonlinearity="relu")
        self.norm = nn.BatchNorm2d(c1, eps=cfg.batchnorm_eps, momentum=cfg.batchnorm_momentum)
        self.local1 = LocallyConnected2d(c1, c2, (r + 2, c + 2), (2, 2))
        self.local2 = LocallyConnected2d(c2, 1, (r + 1, c + 1), (2, 2), bias=False, init="glorot_uniform")
        self.slope = cfg.leaky_slope

    def forward(self, h: Tensor) -> Tensor:
        x = self.dense(h).reshape(-1, *self.grid)
        x = self.norm(F.leaky_relu(self.conv(F.pad(x, (0, 1, 0, 1))), self.slope))  # Keras 'same' for 2×2
        x = F.leaky_relu(self.local1(x), self.slope)
        return self.local2(x)


class Attention(nn.Module):
    """Layer i+1 ← softmax-weighted mix of its own image and layer i resized to its grid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, own: Tensor, previous: Tensor) -> Tensor:
        x = torch.cat([own, resize_image(previous, own.shape[-2:])], dim=1)
        return (x * torch.softmax(self.conv(x), dim=1)).sum(1, keepdim=True)


class LayerDiscriminator(nn.Module):
    """One layer's features: locally connected stack ⊕ minibatch discrimination ⊕ sparsity terms."""

    def __init__(self, cfg: CaloGANConfig, shape: Sequence[int]) -> None:
        super().__init__()
        r, c = shape
        c0, c1, c2, c3 = cfg.discriminator_channels
        bn = dict(eps=cfg.batchnorm_eps, momentum=cfg.batchnorm_momentum)
        self.conv = nn.Conv2d(1, c0, 2)
        self.local1 = LocallyConnected2d(c0, c1, (r + 2, c + 2), (3, 3), stride=(1, 2))
        h, w = self.local1.out_size
        self.local2 = LocallyConnected2d(c1, c2, (h + 2, w + 2), (2, 2))
        h, w = self.local2.out_size
        self.local3 = LocallyConnected2d(c2, c3, (h + 2, w + 2), (2, 2), stride=(1, 2))
        self.norms = nn.ModuleList([nn.BatchNorm2d(ch, **bn) for ch in (c1, c2, c3)])
        self.n_flat = c3 * self.local3.out_size[0] * self.local3.out_size[1]
        self.mbd = MinibatchDiscrimination(self.n_flat, cfg.minibatch_kernels, cfg.minibatch_kernel_dim)
        self.mbd_sparsity = MinibatchDiscrimination(1, cfg.minibatch_kernels, cfg.minibatch_kernel_dim)
        self.n_features = self.n_flat + 2 * cfg.minibatch_kernels + 1
        self.slope, self.tau_gev = cfg.leaky_slope, cfg.sparsity_tau_mev / GEV

    def forward(self, img: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv(F.pad(img, (0, 1, 0, 1))), self.slope)
        for local, norm in zip((self.local1, self.local2, self.local3), self.norms):
            x = norm(F.leaky_relu(local(F.pad(x, (1, 1, 1, 1))), self.slope))
        x = x.flatten(1)
        sparsity = (1.0 - torch.exp(-img.clamp_min(0) / self.tau_gev)).flatten(1).mean(1, keepdim=True)
        return torch.cat([x, self.mbd(x), sparsity, self.mbd_sparsity(sparsity)], dim=1)


class Discriminator(nn.Module):
    """Per-layer features + layer energies + the energy-conservation terms → (logit, Ê in GeV)."""

    def __init__(self, cfg: CaloGANConfig, shapes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.layers = nn.ModuleList([LayerDiscriminator(cfg, s) for s in shapes])
        n = len(shapes)
        self.mbd_energy = MinibatchDiscrimination(n, cfg.minibatch_kernels, cfg.minibatch_kernel_dim)
        n_in = sum(d.n_features for d in self.layers) + n + 3 + cfg.minibatch_kernels
        self.out = nn.Linear(n_in, 1)

    def forward(self, images: Sequence[Tensor], energy_gev: Tensor, response: float) -> tuple[Tensor, Tensor]:
        feats = [d(img) for d, img in zip(self.layers, images)]
        layer_e = torch.cat([img.flatten(1).sum(1, keepdim=True) for img in images], dim=1)
        e_hat = layer_e.sum(1, keepdim=True) / response
        well = (e_hat - energy_gev.reshape(-1, 1)).abs()
        too_big = 10.0 * (well > 5.0).to(well.dtype)
        p = torch.cat(feats + [layer_e / 10.0, e_hat / 100.0, well, too_big, self.mbd_energy(layer_e)], dim=1)
        return self.out(p).reshape(-1), e_hat.reshape(-1)


# ----------------------------------------------------------------------------------
# The family
# ----------------------------------------------------------------------------------
def _image_layers(geometry) -> list[tuple[int, int]]:
    shapes = [tuple(layer.shape) for layer in geometry.layers if layer.n_voxels]
    if not shapes:
        raise ConfigError(f"geometry {geometry.name!r} has no read-out layers")
    return shapes


@register("calogan")
class CaloGAN(ShowerModel):
    """See the module docstring."""

    Config = CaloGANConfig
    loss_names = ("discriminator_loss", "generator_loss", "energy_loss", "d_real", "d_fake")

    def __init__(self, config: CaloGANConfig, geometry, state: Mapping[str, Any]) -> None:
        super().__init__(config, geometry, state)
        self.shapes = _image_layers(geometry)
        self.sizes = [r * c for r, c in self.shapes]
        self.response = float(state.get("response", 1.0))
        self.generators = nn.ModuleList([LayerGenerator(config, s) for s in self.shapes])
        self.attention = nn.ModuleList([Attention() for _ in self.shapes[1:]]) if config.attention else None
        self.discriminator = Discriminator(config, self.shapes)

    @classmethod
    def fit_state(cls, config, showers, incident_energy, conditions, geometry, source):
        state = super().fit_state(config, showers, incident_energy, conditions, geometry, source)
        e = torch.as_tensor(incident_energy, dtype=torch.float64)
        dep = torch.as_tensor(showers, dtype=torch.float64).sum(1)
        ratio = (dep / e)[e > 0]
        state["response"] = float(ratio.mean()) if len(ratio) and float(ratio.mean()) > 0 else 1.0
        return state

    @property
    def generator(self) -> nn.ModuleList:
        """All generator weights (the per-layer streams and the attention)."""
        mods = list(self.generators) + (list(self.attention) if self.attention is not None else [])
        return nn.ModuleList(mods)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.config.generator_optimizer.build(self.generator),
                "discriminator": self.config.discriminator_optimizer.build(self.discriminator)}

    @property
    def noise_dim(self) -> int:
        return self.config.latent_dim

    def _energy_gev(self, incident_energy: Tensor) -> Tensor:
        e = self.condition_encoder.energy(incident_energy)
        return (e / GEV).to(torch.float32).to(self.device).reshape(-1, 1)

    def images(self, noise: Tensor, incident_energy: Tensor) -> list[Tensor]:
        """Per-layer (N, 1, r, c) cell energies in GeV, ≥ 0."""
        h = noise * (self._energy_gev(incident_energy) / self.config.energy_norm_gev)
        imgs = [g(h) for g in self.generators]
        if self.attention is not None:
            for i, att in enumerate(self.attention, start=1):
                imgs[i] = att(imgs[i], imgs[i - 1])
        return [F.relu(x) for x in imgs]

    def to_images(self, showers_mev: Tensor) -> list[Tensor]:
        """Flat showers in MeV → per-layer (N, 1, r, c) images in GeV."""
        x = showers_mev.to(torch.float32).to(self.device) / GEV
        parts = torch.split(x, self.sizes, dim=1)
        return [p.reshape(-1, 1, r, c) for p, (r, c) in zip(parts, self.shapes)]

    def decode(self, noise, incident_energy, conditions):
        imgs = self.images(noise, incident_energy)
        flat = torch.cat([x.flatten(1) for x in imgs], dim=1) * GEV
        if flat.shape[1] == self.n_voxels:
            return flat
        out = flat.new_zeros(len(flat), self.n_voxels)  # geometries with empty layers
        cols = [i for layer, s in zip(self.geometry.layers, self.geometry.layer_slices) if layer.n_voxels
                for i in range(s.start, s.stop)]
        out[:, cols] = flat
        return out

    def _layers_of(self, showers: Tensor) -> Tensor:
        if showers.shape[1] == sum(self.sizes):
            return showers
        keep = [s for layer, s in zip(self.geometry.layers, self.geometry.layer_slices) if layer.n_voxels]
        return torch.cat([showers[:, s] for s in keep], dim=1)

    def training_step(self, data: BatchSource, optimizers, generator) -> dict[str, float]:
        """One discriminator update on a real batch and one on a fake batch, then ``generator_steps``
        generator updates (the authors' schedule)."""
        cfg = self.config
        bce = F.binary_cross_entropy_with_logits
        real = data.next()
        real_imgs = self.to_images(self._layers_of(real.showers))
        e_real = self._energy_gev(real.incident_energy)
        fake_e = data.next().incident_energy
        with torch.no_grad():
            fake_imgs = self.images(self.sample_noise(len(fake_e), generator), fake_e)
        e_fake = self._energy_gev(fake_e)
        logit_r, ehat_r = self.discriminator(real_imgs, e_real, self.response)
        logit_f, ehat_f = self.discriminator(fake_imgs, e_fake, self.response)
        d_loss = 0.5 * (bce(logit_r, torch.ones_like(logit_r)) + bce(logit_f, torch.zeros_like(logit_f)))
        d_loss = d_loss + cfg.energy_loss_weight * 0.5 * (
            (ehat_r - e_real.reshape(-1)).abs().mean() + (ehat_f - e_fake.reshape(-1)).abs().mean())
        self.optimize(optimizers["discriminator"], d_loss)
        self.discriminator.requires_grad_(False)
        g_losses, e_losses = [], []
        for _ in range(cfg.generator_steps):
            e = data.next().incident_energy
            imgs = self.images(self.sample_noise(len(e), generator), e)
            e_gev = self._energy_gev(e)
            logit, ehat = self.discriminator(imgs, e_gev, self.response)
            e_loss = (ehat - e_gev.reshape(-1)).abs().mean()
            g_loss = bce(logit, torch.ones_like(logit)) + cfg.energy_loss_weight * e_loss
            self.optimize(optimizers["generator"], g_loss)
            g_losses.append(g_loss.item())
            e_losses.append(e_loss.item())
        self.discriminator.requires_grad_(True)
        return {"discriminator_loss": d_loss.item(), "generator_loss": sum(g_losses) / len(g_losses),
                "energy_loss": sum(e_losses) / len(e_losses),
                "d_real": torch.sigmoid(logit_r).mean().item(), "d_fake": torch.sigmoid(logit_f).mean().item()}

    def export_module(self) -> nn.Module:
        """The generator streams + attention (the base class's graph: noise, E in MeV → MeV)."""
        return super().export_module()
