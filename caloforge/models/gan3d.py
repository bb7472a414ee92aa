"""3DGAN: a 3D-convolutional conditional GAN with auxiliary regression (Vallecorsa et al., ACAT 2019).

What the paper (slides) states, and this family does:

* a generator and a discriminator of similar design built from **3D convolutions** (x–y
  symmetry kept), about **1 M parameters in all** (``count_parameters``: 0.87 M + 0.21 M for
  ``gan3d-clic-angled``, 0.94 M + 0.08 M for ``gan3d-clic``);
* **conditioned on energy and angle**: the generator input is the noise concatenated with
  the encoded conditions (:mod:`caloforge.conditions`, ``log`` E, ``cos`` θ);
* **auxiliary regression tasks for the discriminator**: besides real/fake it regresses the
  primary energy (mean absolute percentage error, as the paper's "MAPE for regression
  tasks") and the angle (mean absolute error);
* **custom losses**: the *ECAL sum* — the generated shower's total visible energy against
  the primary energy times the sampling fraction (fitted on the training data as a linear
  function of log E and cos θ, stored with the model); the *angle term* — the polar angle
  measured on the generated shower from its per-layer centroids
  (:func:`~caloforge.models.parts.grid.measured_theta`) against the conditioned θ; the
  *energy-spectrum constraint* — per-shower counts of cells in bins of cell energy compared
  with those of the real batch.
* the loss is a weighted sum: binary cross-entropy (weight 3), energy MAPE (0.1), angle MAE
  (25), ECAL-sum MAPE (0.1) — the weights of the authors' public training code.

Where the slides are vague we followed the authors' public code (svalleco/3Dgan and its TF2
port, read for its choices, not copied): cell energies in GeV raised to the power 0.85 in
network space, latent size 256, a dense layer to a coarse 8-channel grid that is upsampled
(×6 in x, y) and refined by 'same'-size 3D convolutions with batch norm and ReLU (a final
ReLU keeps cells ≥ 0); a discriminator of 3D convolutions (16, 8, 8, 8 filters, LeakyReLU,
dropout 0.2, batch norm) and average pooling; RMSprop, one discriminator update on a real
and one on a generated batch with 5 % label flips, then two generator updates.  Their
spectrum constraint counts cells in hard bins (no gradient; it is disabled in their later
code); ours uses soft bin walls (:func:`~caloforge.models.parts.grid.soft_histogram`) so it
trains the generator.  The paper's networks are sized for 51×51×25; any regular grid
works (the coarse grid is ``ceil(shape / upsample)``).

>>> from caloforge.models.base import fit
>>> import torch
>>> cfg = Gan3DConfig(geometry="clic", conditions={"incident_energy": "log", "incident_theta": "cos"},
...                   latent_dim=16, generator_channels=[4], discriminator_channels=[4, 4], seed_channels=2)
>>> e, th = torch.tensor([1e4, 5e5], dtype=torch.float64), torch.tensor([1.2, 1.9], dtype=torch.float64)
>>> gan = fit(cfg, torch.rand(2, 15625), e, {"incident_theta": th})
>>> tuple(gan.sample({"incident_energy": e, "incident_theta": th}).shape)
(2, 15625)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.models.base import BatchSource, ModelConfig, ShowerModel, register
from caloforge.models.parts.grid import (GridCoordinates, generation_chunk, grid_shape, measured_theta, soft_histogram,
                                        to_flat, to_image)

__all__ = ["Gan3DConfig", "Gan3D", "Generator3D", "Discriminator3D", "count_parameters"]

GeV = 1e3


@dataclass
class Gan3DConfig(ModelConfig):
    """The ``model:`` section of a 3DGAN config (defaults: the paper's angled CLIC model)."""

    name: str = "gan3d"
    geometry: str = "clic-angled"
    particle: str = "electron"
    conditions: dict[str, str] = field(default_factory=lambda: {"incident_energy": "log", "incident_theta": "cos"})
    latent_dim: int = 256
    seed_channels: int = 8
    upsample: list[int] = field(default_factory=lambda: [5, 6, 6])  # coarse grid = ceil((Z, Y, X) / upsample)
    generator_channels: list[int] = field(default_factory=lambda: [8, 6, 6, 6, 6])
    generator_kernel: list[int] = field(default_factory=lambda: [5, 5, 5])  # (z, y, x), odd
    discriminator_channels: list[int] = field(default_factory=lambda: [16, 8, 8, 8])
    discriminator_kernel: list[int] = field(default_factory=lambda: [5, 5, 5])
    dropout: float = 0.2
    voxel_unit_mev: float = 1000.0  # network space: (cell / unit) ** power
    power: float = 0.85
    energy_unit_mev: float = 100_000.0  # the regressed energy is E / unit (the paper's E / 100 GeV)
    gan_weight: float = 3.0
    energy_weight: float = 0.1
    angle_weight: float = 25.0
    ecal_weight: float = 0.1
    spectrum_weight: float = 0.1
    spectrum_edges_mev: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])
    label_flip: float = 0.05
    generator_steps: int = 2
    lr: float = 1e-3
    discriminator_lr: float = 1e-3

    def check(self, require, source: str) -> None:
        super().check(require, source)
        from caloforge.geometry import load_geometry

        grid_shape(load_geometry(self.geometry), source)
        require(self.latent_dim > 0, "model.latent_dim", "a positive integer", self.latent_dim)
        require(self.seed_channels > 0, "model.seed_channels", "a positive integer", self.seed_channels)
        for key in ("upsample", "generator_kernel", "discriminator_kernel"):
            v = getattr(self, key)
            require(len(v) == 3 and all(k > 0 for k in v), f"model.{key}", "three positive integers (z, y, x)", v)
        for key in ("generator_kernel", "discriminator_kernel"):
            v = getattr(self, key)
            require(all(k % 2 == 1 for k in v), f"model.{key}", "odd kernel sizes", v)
        for key in ("generator_channels", "discriminator_channels"):
            v = getattr(self, key)
            require(len(v) > 0 and all(c > 0 for c in v), f"model.{key}", "a non-empty list of positive integers", v)
        require(0 <= self.dropout < 1, "model.dropout", "in [0, 1)", self.dropout)
        require(self.voxel_unit_mev > 0, "model.voxel_unit_mev", "positive", self.voxel_unit_mev)
        require(0 < self.power <= 1, "model.power", "in (0, 1]", self.power)
        require(self.energy_unit_mev > 0, "model.energy_unit_mev", "positive", self.energy_unit_mev)
        for key in ("gan_weight", "energy_weight", "angle_weight", "ecal_weight", "spectrum_weight"):
            require(getattr(self, key) >= 0, f"model.{key}", "≥ 0", getattr(self, key))
        e = self.spectrum_edges_mev
        require(len(e) >= 2 and all(0 < a < b for a, b in zip(e, e[1:])), "model.spectrum_edges_mev",
                "at least two positive, increasing cell energies (MeV)", e)
        require(0 <= self.label_flip < 0.5, "model.label_flip", "in [0, 0.5)", self.label_flip)
        require(self.generator_steps > 0, "model.generator_steps", "a positive integer", self.generator_steps)
        require(self.lr > 0, "model.lr", "positive", self.lr)
        require(self.discriminator_lr > 0, "model.discriminator_lr", "positive", self.discriminator_lr)


def _same(k: list[int]) -> tuple[int, int, int]:
    return tuple(int(v) // 2 for v in k)


class Generator3D(nn.Module):
    """(noise, condition vector) → network-space image (N, 1, Z, Y, X), ≥ 0."""

    def __init__(self, cfg: Gan3DConfig, shape: tuple[int, int, int], condition_dim: int) -> None:
        super().__init__()
        self.shape = shape
        self.seed = tuple(math.ceil(s / u) for s, u in zip(shape, cfg.upsample))
        self.seed_channels = cfg.seed_channels
        self.dense = nn.Linear(cfg.latent_dim + condition_dim, cfg.seed_channels * math.prod(self.seed))
        layers: list[nn.Module] = []
        c_in = cfg.seed_channels
        for c in cfg.generator_channels:
            conv = nn.Conv3d(c_in, c, cfg.generator_kernel, padding=_same(cfg.generator_kernel))
            nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")  # Keras he_uniform, as the authors
            layers += [conv, nn.ReLU(), nn.BatchNorm3d(c, eps=1e-6)]
            c_in = c
        layers += [nn.Conv3d(c_in, 1, 3, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, noise: Tensor, condition: Tensor) -> Tensor:
        x = self.dense(torch.cat([noise, condition], dim=1)).reshape(-1, self.seed_channels, *self.seed)
        x = F.interpolate(x, size=self.shape, mode="nearest")  # UpSampling3D, cut to the grid
        return self.net(x)


class Discriminator3D(nn.Module):
    """Network-space image → (real/fake logit, regressed E / energy_unit, regressed θ [rad]).

    Dropout masks are drawn from the ``generator`` passed to :meth:`forward` (none without
    one, and none in eval mode), so that a resumed training run repeats them bit for bit."""

    def __init__(self, cfg: Gan3DConfig, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.dropout = cfg.dropout
        blocks: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(cfg.discriminator_channels):
            layers = [nn.Conv3d(c_in, c, cfg.discriminator_kernel, padding=_same(cfg.discriminator_kernel)),
                      nn.LeakyReLU(0.3)]  # Keras' LeakyReLU default slope
            if i > 0:
                layers.append(nn.BatchNorm3d(c, eps=1e-6))
            blocks.append(nn.Sequential(*layers))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        pool = min(shape) >= 2
        self.pool = nn.AvgPool3d(2) if pool else nn.Identity()
        n_feat = c_in * (math.prod(s // 2 for s in shape) if pool else math.prod(shape))
        self.fake_head = nn.Linear(n_feat, 1)
        self.energy_head = nn.Linear(n_feat, 1)
        self.angle_head = nn.Linear(n_feat, 1)

    def forward(self, image: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        h = image
        for block in self.blocks:
            h = block(h)
            if self.training and generator is not None and self.dropout > 0:
                keep = torch.rand(h.shape, generator=generator, device=h.device) >= self.dropout
                h = h * keep / (1.0 - self.dropout)
        h = self.pool(h).flatten(1)
        return self.fake_head(h).reshape(-1), self.energy_head(h).reshape(-1), self.angle_head(h).reshape(-1)


@register("gan3d")
class Gan3D(ShowerModel):
    """Generator + discriminator with auxiliary heads; see the module docstring."""

    Config = Gan3DConfig
    loss_names = ("discriminator_loss", "generator_loss", "energy_mape", "angle_mae", "ecal_mape", "spectrum_loss")

    def __init__(self, config: Gan3DConfig, geometry, state: Mapping[str, Any]) -> None:
        super().__init__(config, geometry, state)
        self.shape = grid_shape(geometry)
        self.coords = GridCoordinates.from_geometry(geometry)
        self.generator = Generator3D(config, self.shape, self.condition_encoder.dim)
        self.discriminator = Discriminator3D(config, self.shape)
        self.uses_angle = "incident_theta" in self.condition_encoder.names
        self.tilt_phi = float(state.get("tilt_phi", 0.0))
        self.sf_coef = [float(c) for c in state["sampling_fraction"]]
        self.register_buffer("spectrum_edges", torch.log10(torch.tensor(config.spectrum_edges_mev)), persistent=False)

    # --- fitted state ---------------------------------------------------------------
    @classmethod
    def fit_state(cls, config, showers, incident_energy, conditions, geometry, source):
        state = super().fit_state(config, showers, incident_energy, conditions, geometry, source)
        grid_shape(geometry, source)
        e = np.asarray(incident_energy, dtype=np.float64)
        visible = np.asarray(showers.sum(1), dtype=np.float64)
        theta = np.asarray(conditions.get("incident_theta", np.full(len(e), math.pi / 2)), dtype=np.float64)
        state["sampling_fraction"] = _fit_sampling_fraction(e, theta, visible)
        phi = conditions.get("incident_phi")
        state["tilt_phi"] = float(np.median(np.asarray(phi, dtype=np.float64))) if phi is not None and len(phi) else 0.0
        return state

    def sampling_fraction(self, incident_energy: Tensor, theta: Tensor) -> Tensor:
        """Visible / primary energy expected at (E, θ): the fitted c0 + c1·log(E/GeV) + c2·cos θ."""
        c0, c1, c2 = self.sf_coef
        return (c0 + c1 * torch.log(incident_energy / GeV) + c2 * torch.cos(theta)).clamp_min(1e-6)

    # --- network space ---------------------------------------------------------------
    def to_network(self, showers: Tensor) -> Tensor:
        """MeV (N, V) → (N, 1, Z, Y, X) in (cell / unit) ** power."""
        return to_image((showers.clamp_min(0.0) / self.config.voxel_unit_mev) ** self.config.power, self.shape)

    def to_physical(self, image: Tensor) -> Tensor:
        """Network space → MeV, same shape."""
        return image.clamp_min(0.0) ** (1.0 / self.config.power) * self.config.voxel_unit_mev

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": torch.optim.RMSprop(self.generator.parameters(), lr=self.config.lr),
                "discriminator": torch.optim.RMSprop(self.discriminator.parameters(), lr=self.config.discriminator_lr)}

    @property
    def noise_dim(self) -> int:
        return self.config.latent_dim

    def decode(self, noise, incident_energy, conditions):
        """MeV (N, V) float32, decoded in chunks of :func:`~caloforge.models.parts.grid.generation_chunk`
        showers so that memory stays bounded whatever N."""
        cond = self.encode_conditions(incident_energy, conditions)
        step = generation_chunk(self.n_voxels, max(self.config.generator_channels + [self.config.seed_channels]))
        out = [to_flat(self.to_physical(self.generator(noise[lo:lo + step], cond[lo:lo + step]))).to(torch.float32)
               for lo in range(0, len(noise), step)]
        return torch.cat(out) if out else noise.new_zeros(0, self.n_voxels)

    # --- training -------------------------------------------------------------------------
    def _theta(self, batch_conditions: Mapping[str, Tensor], n: int) -> Tensor:
        th = batch_conditions.get("incident_theta")
        return th.to(self.device, torch.float32) if th is not None else torch.full((n,), math.pi / 2, device=self.device)

    def _aux_losses(self, energy_pred: Tensor, angle_pred: Tensor, energy_true: Tensor, theta: Tensor
                    ) -> tuple[Tensor, Tensor]:
        mape = ((energy_pred - energy_true).abs() / energy_true.abs().clamp_min(1e-6)).mean()
        mae = (angle_pred - theta).abs().mean() if self.uses_angle else energy_pred.new_zeros(())
        return mape, mae

    def _labels(self, value: float, n: int, generator: torch.Generator) -> Tensor:
        flip = torch.rand(n, generator=generator, device=self.device) < self.config.label_flip
        return torch.where(flip, 1.0 - value, value)

    def training_step(self, data: BatchSource, optimizers, generator) -> dict[str, float]:
        """One discriminator update on real and one on generated showers, then ``generator_steps``
        generator updates (all on the batch's conditions)."""
        cfg = self.config
        b = data.next()
        n = len(b)
        real = self.to_network(b.showers.to(self.device, torch.float32))
        c = self.encode_conditions(b.incident_energy, b.conditions)
        e_true = (b.incident_energy / cfg.energy_unit_mev).to(self.device, torch.float32)
        theta = self._theta(b.conditions, n)
        with torch.no_grad():
            fake = self.generator(self.sample_noise(n, generator), c)
        d_total = 0.0
        for images, label in ((real, 1.0), (fake, 0.0)):
            logit, e_pred, a_pred = self.discriminator(images, generator)
            bce = F.binary_cross_entropy_with_logits(logit, self._labels(label, n, generator))
            mape, mae = self._aux_losses(e_pred, a_pred, e_true, theta)
            d_loss = cfg.gan_weight * bce + cfg.energy_weight * mape + cfg.angle_weight * mae
            self.optimize(optimizers["discriminator"], d_loss)
            d_total += d_loss.item() / 2
        real_counts = soft_histogram(torch.log10(b.showers.to(self.device, torch.float32).clamp_min(1e-30)),
                                     self.spectrum_edges).mean(0)
        target_ecal = (self.sampling_fraction(b.incident_energy.to(self.device), theta.double())
                       * b.incident_energy.to(self.device)).to(torch.float32)
        self.discriminator.requires_grad_(False)
        try:
            for _ in range(cfg.generator_steps):
                fake = self.generator(self.sample_noise(n, generator), c)
                logit, e_pred, a_pred = self.discriminator(fake, generator)
                bce = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
                mape, mae = self._aux_losses(e_pred, a_pred, e_true, theta)
                phys = self.to_physical(fake).squeeze(1)  # MeV
                ecal = phys.sum(dim=(1, 2, 3))
                ecal_mape = ((ecal - target_ecal).abs() / target_ecal).mean()
                if self.uses_angle:
                    ang = (measured_theta(phys, self.coords, self.tilt_phi) - theta).abs().mean()
                else:
                    ang = phys.new_zeros(())
                counts = soft_histogram(torch.log10(phys.reshape(n, -1).clamp_min(1e-30)), self.spectrum_edges).mean(0)
                spectrum = ((counts - real_counts).abs() / (real_counts + 1.0)).mean()
                g_loss = (cfg.gan_weight * bce + cfg.energy_weight * mape + cfg.angle_weight * (mae + ang)
                          + cfg.ecal_weight * ecal_mape + cfg.spectrum_weight * spectrum)
                self.optimize(optimizers["generator"], g_loss)
        finally:
            self.discriminator.requires_grad_(True)
        return {"discriminator_loss": d_total, "generator_loss": g_loss.item(), "energy_mape": mape.item(),
                "angle_mae": ang.item(), "ecal_mape": ecal_mape.item(), "spectrum_loss": spectrum.item()}

    def _discriminate(self, showers: Tensor) -> tuple[Tensor, Tensor]:
        """The discriminator's regression heads on showers in MeV, in bounded-memory chunks."""
        step = generation_chunk(self.n_voxels, max(self.config.discriminator_channels))
        e_out, a_out = [], []
        with torch.no_grad():
            for lo in range(0, len(showers), step):
                x = self.to_network(showers[lo:lo + step].to(self.device, torch.float32))
                _, e_pred, a_pred = self.discriminator(x)
                e_out.append(e_pred)
                a_out.append(a_pred)
        return torch.cat(e_out), torch.cat(a_out)

    def validation_metrics(self, batch) -> dict[str, float]:
        """The discriminator's energy MAPE and angle MAE on held-out real showers."""
        e_pred, a_pred = self._discriminate(batch.showers)
        e_true = (batch.incident_energy / self.config.energy_unit_mev).to(self.device, torch.float32)
        mape, mae = self._aux_losses(e_pred, a_pred, e_true, self._theta(batch.conditions, len(batch)))
        out = {"val_energy_mape": float(mape)}
        if self.uses_angle:
            out["val_angle_mae"] = float(mae)
        return out

    def regress(self, showers: Tensor) -> tuple[Tensor, Tensor]:
        """The discriminator's (primary energy [MeV], θ [rad]) for showers in MeV (the paper's
        "particle properties" check on generated vs reference showers)."""
        was = self.training
        self.eval()
        try:
            e_pred, a_pred = self._discriminate(showers)
        finally:
            self.train(was)
        return e_pred.double() * self.config.energy_unit_mev, a_pred.double()


def _fit_sampling_fraction(energy: np.ndarray, theta: np.ndarray, visible: np.ndarray) -> list[float]:
    """Least-squares [c0, c1, c2] of c0 + c1·log(E/GeV) + c2·cos θ to visible / E; a term whose
    variable does not vary in the data keeps coefficient 0.

    >>> e = np.array([10e3, 100e3, 400e3]); c = _fit_sampling_fraction(e, np.full(3, 1.5), 0.01 * e)
    >>> [round(v, 6) for v in c]
    [0.01, 0.0, 0.0]
    """
    ok = np.isfinite(visible) & (energy > 0)
    if not np.any(ok):
        return [1.0, 0.0, 0.0]
    columns = np.stack([np.ones(ok.sum()), np.log(energy[ok] / GeV), np.cos(theta[ok])], axis=1)
    used = [0] + [j for j in (1, 2) if np.ptp(columns[:, j]) > 1e-9]
    coef, *_ = np.linalg.lstsq(columns[:, used], visible[ok] / energy[ok], rcond=None)
    full = [0.0, 0.0, 0.0]
    for j, c in zip(used, coef):
        full[j] = float(c)
    return full


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
