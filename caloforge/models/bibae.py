"""BIB-AE: Bounded-Information-Bottleneck autoencoder with a post-processor (McKeown et al. 2023).

The multi-parameter BIB-AE of "Multi-parameter conditioning of generative models for fast
simulation of highly granular calorimeter showers" (photons in the ILD Si-W ECAL,
conditioned on energy and polar angle), built as its slides and references (Buhmann et al.,
"Getting High", CSBS 5, 13 (2021); "Decoding Photons", EPJ WoC 251, 03003 (2021))
describe it:

* an **encoder–decoder** of 3D convolutions, both given the conditions (log E, cos θ);
  ``latent_dim`` encoded dimensions plus ``random_dim`` dimensions of pure Gaussian noise
  that only the decoder sees (the authors' 24 of 512);
* **adversarial critics instead of a pixel-wise loss**: a WGAN-GP critic that sees the
  input shower next to its reconstruction (raw cells, log cells and their difference, plus
  the conditions), and a **latent critic** that compares each latent coordinate with a
  standard normal;
* the **dual and resetting critics** of the slides' backup ("prevent artifacts caused by
  sparsity"), as the authors' public code (FLC-QU-hep/Two_Angle_BIBAE, the ``Reset`` models)
  arranges them: with ``reset_critic_every: N`` a second critic of the same design is
  trained beside the first (same updates, same gradient penalty) and the autoencoder is
  trained against both (weight ``reset_critic_weight``, the authors' 1); every ``N``
  iterations (the authors: every epoch) the second critic restarts from fresh random
  weights and an empty Adam state, so it keeps looking at the current reconstructions
  with new eyes instead of settling into the first critic's blind spots (in the authors'
  released code the weight reset is applied to the container module and appears to leave
  the weights as they were, so only the optimiser restarts; we re-initialise the weights as
  intended, drawing them from the training generator so that runs and resumes stay
  reproducible);
* the **MMD** between the latent codes and N(0, 1) (Gaussian kernels, α = 1 and 0.01) and
  the **KL** term (weight 0.05, MMD weight 100, adversarial weights 1 and 100: the authors'
  public run settings);
* **batch statistics** against mode collapse: the critic also sees the batch mean and
  spread of each candidate's log visible energy and (soft) number of hits, so a generator
  that always makes the same shower is told apart;
* the **post-processor**, a stack of 3D convolutions with kernel size 1 conditioned on the
  shower's energy sum and the conditions, trained in a **second stage** with the main model
  frozen on MSE + the **sorted-kernel MMD** of the cell energies (kernel 100 ranks, stride
  25, cut-off 2000, the authors' values; α in MIP⁻², see ``hit_mmd_alpha``) to fix the
  per-cell energies and the MIP peak;
* generation from a **density fitted to the encoded training showers**: at the end of
  stage 1 the posterior means of up to ``kde_max_showers`` training showers are stored with
  a Gaussian kernel of full covariance (Scott's bandwidth) — a multi-dimensional KDE, as
  the slides' backup (the showers are read in chunks from the batch source, so a streamed
  training set works the same); until then (or with ``latent_sampling: normal``) the latent is N(0, 1).

The stages are a schedule in the config, ``stages: [main, postprocessor]`` iterations,
followed by :meth:`training_step` from a persistent iteration counter, so a checkpoint
(weights + buffers: counter, KDE points, Cholesky factor, flags) resumes bit-identically.
Cells are handled in MIP units of their layer (:func:`~caloforge.models.parts.grid.mip_per_layer`):
the encoder sees log(1 + cell), the decoder and post-processor emit cells ≥ 0 (ReLU).

Where the slides are vague we followed the authors' public code (FLC-QU-hep/getting_high,
read for its choices, not copied): five critic updates per autoencoder update, gradient
penalty 10, Adam with learning rates 5·10⁻⁴ (autoencoder, critic, post-processor) and
2·10⁻³ (latent critic).  Our own choices: GroupNorm instead of fixed-size LayerNorm (any grid
size); trilinear upsampling of a coarse grid in the decoder instead of transposed
convolutions; Adam β = (0.5, 0.9) for every optimiser; a residual post-processor (its last
layer starts at zero, so stage 2 starts from the stage-1 output, which the authors reach by
pre-training it on MSE); each critic sees the input–candidate pair, as the authors' "Diff" critic.

>>> from caloforge.models.base import fit
>>> import torch
>>> cfg = BibAEConfig(geometry="clic", latent_dim=4, random_dim=4, encoder_channels=[2], decoder_channels=[2],
...                   hidden=16, critic_channels=[2], critic_hidden=8, postprocessor_channels=4, kde_max_showers=8)
>>> e, th = torch.tensor([1e4, 9e4], dtype=torch.float64), torch.tensor([0.6, 1.5], dtype=torch.float64)
>>> model = fit(cfg, torch.rand(2, 15625), e, {"incident_theta": th})
>>> tuple(model.sample({"incident_energy": e, "incident_theta": th}).shape)
(2, 15625)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.models.base import BatchSource, ModelConfig, ShowerModel, register
from caloforge.models.parts.gan import gradient_penalty
from caloforge.models.parts.grid import (gaussian_mmd, generation_chunk, grid_shape, mip_per_layer, sorted_kernel_mmd,
                                        to_flat, to_image)

__all__ = ["BibAEConfig", "BibAE", "Encoder3D", "Decoder3D", "DualCritic", "LatentCritic", "PostProcessor"]


@dataclass
class BibAEConfig(ModelConfig):
    """The ``model:`` section of a BIB-AE config (defaults: the paper's ILD photon model)."""

    name: str = "bibae"
    geometry: str = "ild-angled"
    particle: str = "photon"
    conditions: dict[str, str] = field(default_factory=lambda: {"incident_energy": "log", "incident_theta": "cos"})
    latent_dim: int = 24
    random_dim: int = 488
    encoder_channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    decoder_channels: list[int] = field(default_factory=lambda: [16, 32, 16])
    decoder_upsample: int = 3  # the decoder's coarse grid is ceil(shape / decoder_upsample)
    decoder_seed_channels: int = 8
    hidden: int = 512
    critic_channels: list[int] = field(default_factory=lambda: [32, 32])
    critic_hidden: int = 128
    postprocessor_channels: int = 64
    stages: list[int] = field(default_factory=lambda: [200_000, 50_000])  # iterations: main model, post-processor
    critic_steps: int = 5
    gp_lambda: float = 10.0
    adversarial_weight: float = 1.0
    latent_adversarial_weight: float = 100.0
    kl_weight: float = 0.05
    latent_mmd_weight: float = 100.0
    energy_sum_weight: float = 0.0  # the authors' runs: 0 (an option of their code)
    postprocessor_mse_weight: float = 1.0
    hit_mmd_weight: float = 5.0
    hit_mmd_kernel: int = 100
    hit_mmd_stride: int = 25
    hit_mmd_cutoff: int = 2000
    hit_mmd_alpha: float = 4.0  # MIP⁻²: the authors' 200 MeV⁻² at an ILD MIP of ≈ 0.15 MeV
    hit_threshold_mip: float = 0.5
    latent_sampling: str = "kde"  # kde | normal
    kde_max_showers: int = 20_000
    lr: float = 5e-4
    critic_lr: float = 5e-4
    latent_critic_lr: float = 2e-3
    postprocessor_lr: float = 5e-4
    reset_critic_every: int = 0  # iterations between restarts of the second (resetting) critic; 0 = one critic
    reset_critic_weight: float = 1.0  # its adversarial weight in the autoencoder loss (the authors': as the first's)

    def check(self, require, source: str) -> None:
        super().check(require, source)
        from caloforge.geometry import load_geometry

        grid_shape(load_geometry(self.geometry), source)
        for key in ("latent_dim", "hidden", "critic_hidden", "postprocessor_channels", "critic_steps",
                    "decoder_upsample", "decoder_seed_channels", "kde_max_showers", "hit_mmd_kernel",
                    "hit_mmd_stride", "hit_mmd_cutoff"):
            require(getattr(self, key) > 0, f"model.{key}", "a positive integer", getattr(self, key))
        require(self.random_dim >= 0, "model.random_dim", "≥ 0", self.random_dim)
        for key in ("encoder_channels", "decoder_channels", "critic_channels"):
            v = getattr(self, key)
            require(len(v) > 0 and all(c > 0 for c in v), f"model.{key}", "a non-empty list of positive integers", v)
        require(self.reset_critic_every >= 0, "model.reset_critic_every",
                "≥ 0 iterations (0: no resetting critic)", self.reset_critic_every)
        require(len(self.stages) == 2 and self.stages[0] > 0 and self.stages[1] >= 0, "model.stages",
                "[main iterations > 0, post-processor iterations ≥ 0]", self.stages)
        for key in ("gp_lambda", "adversarial_weight", "latent_adversarial_weight", "kl_weight", "latent_mmd_weight",
                    "energy_sum_weight", "postprocessor_mse_weight", "hit_mmd_weight", "hit_threshold_mip",
                    "reset_critic_weight"):
            require(getattr(self, key) >= 0, f"model.{key}", "≥ 0", getattr(self, key))
        require(self.hit_mmd_alpha > 0, "model.hit_mmd_alpha", "positive", self.hit_mmd_alpha)
        require(self.latent_sampling in ("kde", "normal"), "model.latent_sampling", "kde or normal",
                self.latent_sampling)
        for key in ("lr", "critic_lr", "latent_critic_lr", "postprocessor_lr"):
            require(getattr(self, key) > 0, f"model.{key}", "positive", getattr(self, key))


def _down(n: int, k: int) -> int:
    for _ in range(k):
        n = (n + 1) // 2  # kernel 3, stride 2, padding 1
    return n


def _conv_stack(c_in: int, channels: list[int], stride: int) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv3d(c_in, c, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(1, c), nn.LeakyReLU(0.2)]
        c_in = c
    return nn.Sequential(*layers), c_in


class Encoder3D(nn.Module):
    """log(1 + cells[MIP]) (N, 1, Z, Y, X) + conditions → (μ, log σ²) of the encoded latent."""

    def __init__(self, cfg: BibAEConfig, shape: tuple[int, int, int], cond_dim: int) -> None:
        super().__init__()
        self.convs, c = _conv_stack(1, cfg.encoder_channels, 2)
        n_feat = c * math.prod(_down(s, len(cfg.encoder_channels)) for s in shape)
        self.fc = nn.Sequential(nn.Linear(n_feat + cond_dim, cfg.hidden), nn.LeakyReLU(0.2),
                                nn.Linear(cfg.hidden, cfg.hidden // 2), nn.LeakyReLU(0.2))
        self.mu = nn.Linear(cfg.hidden // 2, cfg.latent_dim)
        self.logvar = nn.Linear(cfg.hidden // 2, cfg.latent_dim)

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        h = self.fc(torch.cat([self.convs(x).flatten(1), cond], dim=1))
        return self.mu(h), self.logvar(h)


class Decoder3D(nn.Module):
    """(latent, conditions) → cells [MIP] (N, 1, Z, Y, X), ≥ 0."""

    def __init__(self, cfg: BibAEConfig, shape: tuple[int, int, int], cond_dim: int) -> None:
        super().__init__()
        self.shape = shape
        self.coarse = tuple(math.ceil(s / cfg.decoder_upsample) for s in shape)
        self.seed_channels = cfg.decoder_seed_channels
        self.fc = nn.Sequential(nn.Linear(cfg.latent_dim + cfg.random_dim + cond_dim, cfg.hidden // 2),
                                nn.LeakyReLU(0.2), nn.Linear(cfg.hidden // 2, cfg.hidden), nn.LeakyReLU(0.2),
                                nn.Linear(cfg.hidden, self.seed_channels * math.prod(self.coarse)), nn.LeakyReLU(0.2))
        self.convs, c = _conv_stack(self.seed_channels, cfg.decoder_channels, 1)
        self.out = nn.Conv3d(c, 1, 3, padding=1, bias=False)

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        x = self.fc(torch.cat([z, cond], dim=1)).reshape(-1, self.seed_channels, *self.coarse)
        x = F.interpolate(x, size=self.shape, mode="trilinear", align_corners=False)
        return F.relu(self.out(self.convs(x)))


def batch_statistics(cells: Tensor, threshold: float) -> Tensor:
    """Per batch: mean and spread of log(1 + visible sum) and of the soft hit count / 1000 → (4,)."""
    flat = cells.flatten(1)
    esum = torch.log1p(flat.sum(1))
    hits = torch.sigmoid((flat - threshold) / 0.1).sum(1) / 1000.0
    stats = torch.stack([esum.mean(), esum.std(unbiased=False), hits.mean(), hits.std(unbiased=False)])
    return stats


class DualCritic(nn.Module):
    """WGAN critic of (input shower, candidate) pairs: candidate's raw and log cells through 3D
    convolutions, the candidate − input difference through a dense layer, the conditions, and
    the batch statistics of the candidates."""

    def __init__(self, cfg: BibAEConfig, shape: tuple[int, int, int], cond_dim: int) -> None:
        super().__init__()
        self.threshold = cfg.hit_threshold_mip
        h = cfg.critic_hidden
        n = len(cfg.critic_channels)
        n_feat = math.prod(_down(s, n) for s in shape)
        self.raw, c = _conv_stack(1, cfg.critic_channels, 2)
        self.log, _ = _conv_stack(1, cfg.critic_channels, 2)
        self.raw_fc = nn.Linear(c * n_feat, h)
        self.log_fc = nn.Linear(c * n_feat, h)
        self.diff_fc = nn.Linear(math.prod(shape), h)
        self.cond_fc = nn.Linear(cond_dim, h)
        self.stats_fc = nn.Linear(4, h)
        self.head = nn.Sequential(nn.Linear(5 * h, 2 * h), nn.LeakyReLU(0.2), nn.Linear(2 * h, 2 * h),
                                  nn.LeakyReLU(0.2), nn.Linear(2 * h, 1))

    def forward(self, shower: Tensor, candidate: Tensor, cond: Tensor) -> Tensor:
        n = len(candidate)
        raw = F.leaky_relu(self.raw_fc(self.raw(candidate / 100.0).flatten(1)), 0.2)
        log = F.leaky_relu(self.log_fc(self.log(torch.log1p(candidate.clamp_min(0.0))).flatten(1)), 0.2)
        diff = F.leaky_relu(self.diff_fc((candidate - shower).flatten(1) / 100.0), 0.2)
        cnd = F.leaky_relu(self.cond_fc(cond), 0.2)
        stats = F.leaky_relu(self.stats_fc(batch_statistics(candidate, self.threshold)), 0.2).expand(n, -1)
        return self.head(torch.cat([raw, log, diff, cnd, stats], dim=1)).reshape(-1)


class LatentCritic(nn.Module):
    """WGAN critic of single latent coordinates (every coordinate against N(0, 1))."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 50), nn.LeakyReLU(0.01), nn.Linear(50, 100), nn.LeakyReLU(0.01),
                                 nn.Linear(100, 50), nn.LeakyReLU(0.01), nn.Linear(50, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.reshape(-1, 1)).reshape(-1)


class PostProcessor(nn.Module):
    """Kernel-size-1 3D convolutions: each cell [MIP] corrected from its own value, conditioned on
    the shower's energy sum and the conditions; residual, ≥ 0."""

    def __init__(self, cfg: BibAEConfig, cond_dim: int) -> None:
        super().__init__()
        c = cfg.postprocessor_channels
        half = max(c // 2, 1)
        self.econd = nn.Sequential(nn.Linear(1 + cond_dim, half), nn.LeakyReLU(0.01), nn.Linear(half, half),
                                   nn.LeakyReLU(0.01))
        self.first = nn.Conv3d(1, c, 1)
        self.norm = nn.GroupNorm(c, c)
        self.body = nn.Sequential(nn.Conv3d(c + half, c, 1), nn.LeakyReLU(0.01), nn.Conv3d(c, c, 1),
                                  nn.LeakyReLU(0.01), nn.Conv3d(c, c, 1), nn.LeakyReLU(0.01))
        self.last = nn.Conv3d(c, 1, 1, bias=False)
        nn.init.zeros_(self.last.weight)  # stage 2 starts from the main model's output

    def forward(self, cells: Tensor, cond: Tensor) -> Tensor:
        esum = torch.log1p(cells.flatten(1).sum(1, keepdim=True)) / 10.0
        e = self.econd(torch.cat([esum, cond], dim=1))
        h = F.leaky_relu(self.norm(self.first(torch.log1p(cells))), 0.01)
        h = torch.cat([h, e[:, :, None, None, None].expand(-1, -1, *cells.shape[2:])], dim=1)
        return F.relu(cells + self.last(self.body(h)))


@register("bibae")
class BibAE(ShowerModel):
    """Encoder, decoder, critics, post-processor and the fitted latent density; see the module docstring."""

    Config = BibAEConfig
    loss_names = ("autoencoder_loss", "critic_loss", "latent_critic_loss", "kl", "latent_mmd", "postprocessor_loss")

    def __init__(self, config: BibAEConfig, geometry, state: Mapping[str, Any]) -> None:
        super().__init__(config, geometry, state)
        self.shape = grid_shape(geometry)
        d = self.condition_encoder.dim
        self.encoder = Encoder3D(config, self.shape, d)
        self.decoder = Decoder3D(config, self.shape, d)
        self.critic = DualCritic(config, self.shape, d)
        # the resetting critic exists only where configured, so one-critic checkpoints (and log.csv
        # columns, which a resumed run must keep) stay as they were
        self.reset_critic = DualCritic(config, self.shape, d) if config.reset_critic_every else None
        if self.reset_critic is not None:
            self.loss_names = (*BibAE.loss_names[:2], "reset_critic_loss", *BibAE.loss_names[2:])
        self.latent_critic = LatentCritic()
        self.postprocessor = PostProcessor(config, d)
        mip = torch.tensor(mip_per_layer(geometry), dtype=torch.float64)
        self.register_buffer("mip", mip[:, None, None].expand(*self.shape).reshape(-1).clone(), persistent=False)
        # training state that must survive a checkpoint: the iteration, the stage flags, the latent KDE
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))
        self.register_buffer("postprocessor_active", torch.zeros((), dtype=torch.int64))
        self.register_buffer("kde_count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("kde_points", torch.zeros(config.kde_max_showers, config.latent_dim))
        self.register_buffer("kde_cholesky", torch.zeros(config.latent_dim, config.latent_dim))

    # --- units ---------------------------------------------------------------------------
    def to_mip(self, showers: Tensor) -> Tensor:
        """MeV (N, V) → cells in MIP units (N, 1, Z, Y, X), float32."""
        return to_image((showers.to(self.mip.device, torch.float64) / self.mip).to(torch.float32), self.shape)

    def to_mev(self, cells: Tensor) -> Tensor:
        """Cells in MIP units (N, 1, Z, Y, X) → MeV (N, V), float64."""
        return to_flat(cells).to(torch.float64) * self.mip

    # --- the autoencoder ---------------------------------------------------------------------
    def encode(self, cells: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(torch.log1p(cells), cond)

    def reconstruct(self, cells: Tensor, cond: Tensor, generator: torch.Generator
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(reconstruction [MIP], μ, log σ², z) with z = μ + σ·ε and the random dimensions drawn from N(0, 1)."""
        mu, logvar = self.encode(cells, cond)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        noise = torch.randn(len(mu), self.config.random_dim, generator=generator, device=mu.device)
        return self.decoder(torch.cat([z, noise], dim=1), cond), mu, logvar, z

    @property
    def noise_dim(self) -> int:
        return self.config.latent_dim + self.config.random_dim

    @property
    def stage(self) -> int:
        """1 (main model) or 2 (post-processor), from the iteration counter."""
        return 1 if int(self.iteration) < self.config.stages[0] else 2

    @property
    def complete(self) -> bool:
        """From the post-processor stage on (latent KDE fitted, post-processor active): ``best`` is
        never a first-stage checkpoint once a second-stage one exists."""
        return int(self.iteration) >= self.config.stages[0]

    @property
    def latent_density_fitted(self) -> bool:
        return int(self.kde_count) > 0

    def sample_noise(self, n, generator=None, device=None):
        """Latent codes from the fitted KDE (N(0, 1) before it is fitted), then the random dimensions."""
        dev = device or self.device
        cfg = self.config
        if cfg.latent_sampling == "kde" and self.latent_density_fitted:
            idx = torch.randint(int(self.kde_count), (n,), generator=generator, device=dev)
            eps = torch.randn(n, cfg.latent_dim, generator=generator, device=dev)
            z = self.kde_points.to(dev)[idx] + eps @ self.kde_cholesky.to(dev).T
        else:
            z = torch.randn(n, cfg.latent_dim, generator=generator, device=dev)
        return torch.cat([z, torch.randn(n, cfg.random_dim, generator=generator, device=dev)], dim=1)

    def decode(self, noise, incident_energy, conditions):
        """MeV (N, V) float32, decoded in chunks (:func:`~caloforge.models.parts.grid.generation_chunk`)."""
        cond = self.encode_conditions(incident_energy, conditions)
        cfg = self.config
        step = generation_chunk(self.n_voxels, max(cfg.decoder_channels + [cfg.decoder_seed_channels,
                                                                            cfg.postprocessor_channels]))
        out = []
        for lo in range(0, len(noise), step):
            c = cond[lo:lo + step]
            cells = self.decoder(noise[lo:lo + step].to(torch.float32), c)
            if int(self.postprocessor_active):
                cells = self.postprocessor(cells, c)
            out.append(self.to_mev(cells).to(torch.float32))
        return torch.cat(out) if out else noise.new_zeros(0, self.n_voxels)

    # --- the latent density --------------------------------------------------------------------
    def fit_latent_density(self, showers: Tensor, incident_energy: Tensor, conditions: Mapping[str, Tensor],
                           chunk: int = 64) -> None:
        """:meth:`fit_latent_density_from` in-memory showers."""
        self.fit_latent_density_from(BatchSource(showers, incident_energy, conditions, 1, torch.Generator()), chunk)

    @torch.no_grad()
    def fit_latent_density_from(self, data: BatchSource, chunk: int = 64) -> None:
        """Store the posterior means of (up to ``kde_max_showers``, evenly spaced) training showers and
        a Gaussian kernel with Scott's bandwidth on their covariance: the latent KDE.  The showers are
        read ``chunk`` at a time (:meth:`BatchSource.take`), so a streamed training set is never
        held in memory."""
        n_all = len(data)
        n = min(n_all, self.config.kde_max_showers)
        idx = torch.linspace(0, n_all - 1, n).round().long()
        points = []
        for lo in range(0, n, chunk):
            b = data.take(idx[lo:lo + chunk])
            cond = self.encode_conditions(b.incident_energy, b.conditions)
            mu, _ = self.encode(self.to_mip(b.showers).to(self.device), cond)
            points.append(mu)
        pts = torch.cat(points).to(torch.float64)
        d = pts.shape[1]
        cov = torch.cov(pts.T).reshape(d, d) if n > 1 else torch.eye(d, dtype=torch.float64)
        scott = n ** (-1.0 / (d + 4))
        chol = torch.linalg.cholesky(cov + 1e-6 * torch.eye(d, dtype=torch.float64)) * scott
        self.kde_points.zero_()
        self.kde_points[:n] = pts.to(self.kde_points.dtype)
        self.kde_cholesky.copy_(chol.to(self.kde_cholesky.dtype))
        self.kde_count.fill_(n)

    # --- training -------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        ae = list(self.encoder.parameters()) + list(self.decoder.parameters())
        return {"autoencoder": torch.optim.Adam(ae, lr=cfg.lr, betas=(0.5, 0.9)),
                "critic": torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, betas=(0.5, 0.9)),
                "latent_critic": torch.optim.Adam(self.latent_critic.parameters(), lr=cfg.latent_critic_lr,
                                                  betas=(0.5, 0.9)),
                "postprocessor": torch.optim.Adam(self.postprocessor.parameters(), lr=cfg.postprocessor_lr,
                                                  betas=(0.5, 0.9)),
                **({"reset_critic": torch.optim.Adam(self.reset_critic.parameters(), lr=cfg.critic_lr,
                                                     betas=(0.5, 0.9))} if self.reset_critic is not None else {})}

    def restart_reset_critic(self, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        """Fresh random weights (PyTorch's default initialisation, seeded from ``generator``) and an
        empty Adam state for the resetting critic."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng():  # the global RNGs are left as they were
            torch.manual_seed(seed)
            for m in self.reset_critic.modules():
                if m is not self.reset_critic and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        optimizer.state.clear()

    def training_step(self, data: BatchSource, optimizers, generator) -> dict[str, float]:
        """Stage 1: ``critic_steps`` critic + latent-critic updates, then one autoencoder update; the
        latent KDE is fitted on the training showers after the last stage-1 iteration.  Stage 2: one
        post-processor update (main model frozen)."""
        if self.stage == 1:
            out = self._main_step(data, optimizers, generator)
        else:
            self.postprocessor_active.fill_(1)
            out = self._postprocessor_step(data, optimizers, generator)
        self.iteration += 1
        if int(self.iteration) == self.config.stages[0]:
            self.fit_latent_density_from(data)
        return out

    def _main_step(self, data, optimizers, generator) -> dict[str, float]:
        cfg = self.config
        critics = [(self.critic, optimizers["critic"])]
        if self.reset_critic is not None:
            if int(self.iteration) % cfg.reset_critic_every == 0:
                self.restart_reset_critic(optimizers["reset_critic"], generator)
            critics.append((self.reset_critic, optimizers["reset_critic"]))
        b = data.next()
        x = self.to_mip(b.showers).to(self.device)
        cond = self.encode_conditions(b.incident_energy, b.conditions)
        for _ in range(cfg.critic_steps):
            with torch.no_grad():
                recon, _, _, z = self.reconstruct(x, cond, generator)
            d_losses = []
            for critic, optimizer in critics:
                d_real, d_fake = critic(x, x, cond).mean(), critic(x, recon, cond).mean()
                gp = gradient_penalty(lambda m, c=critic: c(x, m, cond), x, recon, generator)
                d_losses.append(d_fake - d_real + cfg.gp_lambda * gp)
                self.optimize(optimizer, d_losses[-1])
            prior = torch.randn(z.shape, generator=generator, device=z.device)
            l_real, l_fake = self.latent_critic(prior).mean(), self.latent_critic(z).mean()
            l_gp = gradient_penalty(self.latent_critic, prior, z, generator)
            l_loss = l_fake - l_real + cfg.gp_lambda * l_gp
            self.optimize(optimizers["latent_critic"], l_loss)
        frozen = [c for c, _ in critics] + [self.latent_critic]
        for net in frozen:
            net.requires_grad_(False)
        try:
            recon, mu, logvar, z = self.reconstruct(x, cond, generator)
            adv = -self.critic(x, recon, cond).mean()
            if self.reset_critic is not None:
                adv = adv - cfg.reset_critic_weight * self.reset_critic(x, recon, cond).mean()
            latent_adv = -self.latent_critic(z).mean()
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(mu)
            prior = torch.randn(z.shape, generator=generator, device=z.device)
            mmd = gaussian_mmd(z, prior)
            esum = ((recon.flatten(1).sum(1) - x.flatten(1).sum(1)) / 1e3).pow(2).mean()
            loss = (cfg.adversarial_weight * adv + cfg.latent_adversarial_weight * latent_adv + cfg.kl_weight * kl
                    + cfg.latent_mmd_weight * mmd + cfg.energy_sum_weight * esum)
            self.optimize(optimizers["autoencoder"], loss)
        finally:
            for net in frozen:
                net.requires_grad_(True)
        out = {"autoencoder_loss": loss.item(), "critic_loss": d_losses[0].item(), "latent_critic_loss": l_loss.item(),
               "kl": kl.item(), "latent_mmd": mmd.item(), "postprocessor_loss": 0.0}
        if len(d_losses) > 1:
            out["reset_critic_loss"] = d_losses[1].item()
        return out

    def _postprocessor_step(self, data, optimizers, generator) -> dict[str, float]:
        cfg = self.config
        b = data.next()
        x = self.to_mip(b.showers).to(self.device)
        cond = self.encode_conditions(b.incident_energy, b.conditions)
        with torch.no_grad():
            recon, mu, logvar, z = self.reconstruct(x, cond, generator)
        out = self.postprocessor(recon, cond)
        mse = F.mse_loss(out, x)
        hit = sorted_kernel_mmd(out, x, cfg.hit_mmd_kernel, cfg.hit_mmd_stride, cfg.hit_mmd_cutoff, cfg.hit_mmd_alpha)
        loss = cfg.postprocessor_mse_weight * mse + cfg.hit_mmd_weight * hit
        self.optimize(optimizers["postprocessor"], loss)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(mu)
        out = {"autoencoder_loss": 0.0, "critic_loss": 0.0, "latent_critic_loss": 0.0, "kl": kl.item(),
               "latent_mmd": 0.0, "postprocessor_loss": loss.item()}
        if self.reset_critic is not None:
            out["reset_critic_loss"] = 0.0
        return out
