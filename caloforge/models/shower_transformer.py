"""Conditional flow matching with a transformer over 3D voxel patches (``model.name: shower_transformer``).

CaloDREAM-style two-stage, like ``flow_matching``: the layer vector y₁ (L logit u-variables of
the layer energies) comes from a small zuko coupling flow given the incident energy (and angles
where the data has them); the voxel vector y₂ (logit voxel fractions, standardised,
:mod:`caloforge.models.parts.representation`) is generated given the incident energy and y₁ by
integrating a learnt velocity field from Gaussian noise at t = 0 to data at t = 1.

The velocity field sees the voxels as the detector grid they are, for every geometry whose
read-out layers share one regular grid (r–α with the same bins in every layer, e.g. DS2's
45 × 9 r × 16 α, or Cartesian, e.g. CLIC's 25 × 25 × 25):

* tokens are patches of ``patch = [layers, r|x, α|y]`` voxels (``auto``: the smallest patch of
  single layers giving at most 128 tokens), embedded linearly;
* each token adds an embedding of its own layers' y₁ entries (the layer energies it must share
  out), and a position: learnt per axis (``position: learnt``, layer + r|x + α|y tables summed)
  or a linear map of the patch's mean detector coordinates (``position: coordinates``: depth z,
  x, y and r of the voxel centres, in units of the deepest layer and the widest layer);
* the incident-energy encoding, y₁ and the flow time t (with sin/cos features) form one
  conditioning vector that modulates every block by adaptive layer norm, DiT's adaLN-Zero
  (shift, scale and gate per block, zero-initialised, so every block starts as the identity);
* ``depth`` pre-norm blocks of multi-head self-attention (``scaled_dot_product_attention``)
  and a GELU MLP; a final adaLN and a zero-initialised linear map un-patchify to the voxel velocity.

Sampling is the flow-matching ODE sampler (:func:`~caloforge.models.parts.ode.integrate`):
``steps`` and ``solver`` are generation options (``caloforge generate --sampling steps=8``).

>>> import torch
>>> from caloforge.models.base import fit
>>> cfg = ShowerTransformerConfig(geometry="ds2", patch=[3, 9, 4], width=16, depth=1, heads=2,
...                               layer_flow=FlowConfig(transforms=1, hidden=[8]))
>>> e = torch.tensor([1000.0, 64000.0], dtype=torch.float64)
>>> model = fit(cfg, torch.rand(2, 6480) * e[:, None].float() / 20000, e, {})
>>> model.velocity.tokens, tuple(model.sample(e).shape)
(60, (2, 6480))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.models.base import Batch, BatchSource, register
from caloforge.models.parts.flows import FlowConfig, conditional_flow, flow_inverse
from caloforge.models.parts.mlp import MLP
from caloforge.models.parts.ode import SOLVERS, check_sampling_options, integrate, staged_objective
from caloforge.models.parts.two_stage import TwoStageConfig, TwoStageFamily

__all__ = ["ShowerTransformerConfig", "ShowerTransformer", "PatchVelocity", "voxel_grid", "auto_patch"]

POSITIONS = ("learnt", "coordinates")
AUTO_TOKENS = 128  # the most tokens ``patch: auto`` gives: attention costs T² per block


def voxel_grid(geometry) -> tuple[int, int, int] | None:
    """(layers, r|x bins, α|y bins) of a geometry whose read-out layers are all the same grid, else None.

    >>> from caloforge.geometry import load_geometry
    >>> voxel_grid(load_geometry("ds2")), voxel_grid(load_geometry("clic")), voxel_grid(load_geometry("ds1-photons"))
    ((45, 9, 16), (25, 25, 25), None)
    """
    layers = [layer for layer in geometry.layers if layer.n_voxels]
    shapes = {(layer.kind, layer.shape) for layer in layers}
    if len(shapes) != 1:
        return None
    _, (rows, cols) = next(iter(shapes))  # rows: α or y bins, cols: r or x bins (voxel order)
    return len(layers), cols, rows


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def auto_patch(grid: tuple[int, int, int], max_tokens: int = AUTO_TOKENS) -> list[int]:
    """The patch of ``patch: auto``: fewest layers per token first (the layer-energy split is
    per layer), then the fewest voxels, then the squarest, with at most ``max_tokens`` tokens.

    >>> auto_patch((45, 9, 16)), auto_patch((6, 8, 8))
    ([1, 9, 8], [1, 2, 2])
    """
    z, b, a = grid
    candidates = [(pz, pb, pa) for pz in _divisors(z) for pb in _divisors(b) for pa in _divisors(a)
                  if (z // pz) * (b // pb) * (a // pa) <= max_tokens]
    return list(min(candidates, key=lambda p: (p[0], p[0] * p[1] * p[2], abs(math.log(p[1] / p[2])))))


@dataclass
class ShowerTransformerConfig(TwoStageConfig):
    """The ``model:`` section of a shower-transformer config (CPU-sized defaults)."""

    name: str = "shower_transformer"
    geometry: str = "ds2"
    layer_flow: FlowConfig = field(default_factory=lambda: FlowConfig("spline", 6, [64, 64], 8))
    patch: Any = "auto"  # [layers, r|x, α|y] voxels per token, each dividing the grid; or auto
    width: int = 128  # token width
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads (width must be a multiple)
    mlp_ratio: int = 4  # hidden width of a block's MLP over the token width
    position: str = "learnt"  # learnt (per-axis tables) or coordinates (linear in the patch's detector coordinates)
    time_frequencies: int = 4  # sin/cos(2^k π t / 2) features of the time, k < time_frequencies
    steps: int = 16  # default number of ODE steps at generation
    solver: str = "euler"  # default solver: euler, midpoint or rk4

    def check(self, require, source: str) -> None:
        super().check(require, source)
        from caloforge.geometry import load_geometry

        self.layer_flow.check(require, "model.layer_flow")
        grid = voxel_grid(load_geometry(self.geometry))
        require(grid is not None, "model.geometry", "a geometry whose layers are one regular grid "
                "(the same r–α bins or the same Cartesian cells in every layer)", self.geometry)
        require(not self.radial_split, "model.radial_split", "false (the tokens are patches of the voxel grid)",
                self.radial_split)
        shape = "×".join(map(str, grid))
        require(self.patch == "auto" or (isinstance(self.patch, list) and len(self.patch) == 3 and all(
            isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in self.patch)), "model.patch",
            "auto or [layers, r|x, α|y] positive integers", self.patch)
        if self.patch != "auto":
            require(all(n % p == 0 for n, p in zip(grid, self.patch)), "model.patch",
                    f"[layers, r|x, α|y] voxels that divide the {shape} grid of {self.geometry}", self.patch)
        require(self.width > 0, "model.width", "a positive integer", self.width)
        require(self.depth > 0, "model.depth", "a positive integer", self.depth)
        require(self.heads > 0 and self.width % self.heads == 0, "model.heads",
                f"a positive divisor of model.width ({self.width})", self.heads)
        require(self.mlp_ratio > 0, "model.mlp_ratio", "a positive integer", self.mlp_ratio)
        require(self.position in POSITIONS, "model.position", f"one of {', '.join(POSITIONS)}", self.position)
        require(self.time_frequencies >= 0, "model.time_frequencies", "≥ 0", self.time_frequencies)
        require(self.steps > 0, "model.steps", "a positive integer", self.steps)
        require(self.solver in SOLVERS, "model.solver", f"one of {', '.join(SOLVERS)}", self.solver)

    def patch_shape(self, grid: tuple[int, int, int]) -> list[int]:
        """[layers, r|x, α|y] voxels per token on ``grid``."""
        return auto_patch(grid) if self.patch == "auto" else [int(p) for p in self.patch]


def patch_coordinates(geometry, patch: tuple[int, int, int]) -> Tensor:
    """(tokens, 4): mean depth z, x, y and r of each patch's voxel centres, z over the deepest layer's
    centre and x, y, r over the largest centre radius (token order of :class:`PatchVelocity`)."""
    layers = [layer for layer in geometry.layers if layer.n_voxels]
    rows, cols = layers[0].shape
    per_layer = []
    for layer in layers:
        x, y = layer.voxel_centers()
        z = np.full_like(x, layer.z_center)
        per_layer.append(np.stack([z, x, y, np.hypot(x, y)], -1).reshape(rows, cols, 4))
    c = np.stack(per_layer)  # (Z, rows, cols, 4)
    c[..., 0] /= max(abs(c[..., 0]).max(), 1e-9)
    c[..., 1:] /= max(c[..., 3].max(), 1e-9)
    pz, pa, pb = patch
    nz, na, nb = c.shape[0] // pz, rows // pa, cols // pb
    c = c.reshape(nz, pz, na, pa, nb, pb, 4).mean((1, 3, 5)).reshape(nz * na * nb, 4)
    return torch.as_tensor(c, dtype=torch.float32)


class Block(nn.Module):
    """Pre-norm self-attention + MLP, both modulated by the conditioning vector (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * width, width))
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)  # zero gates: the block starts as the identity
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(cond)).unsqueeze(1).chunk(6, dim=2)
        tokens, width = h.shape[1], h.shape[2]
        x = self.norm1(h) * (1 + scale1) + shift1
        # (N, T, 3, H, D) → 3 × (N, H, T, D); the batch stays -1 so that exported graphs keep it dynamic
        q, k, v = self.qkv(x).reshape(-1, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attention = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, tokens, width)
        h = h + gate1 * self.proj(attention)
        return h + gate2 * self.mlp(self.norm2(h) * (1 + scale2) + shift2)


class PatchVelocity(nn.Module):
    """v(y₂, t, [c, y₁]) on the voxel grid; see the module docstring.

    ``grid`` and ``patch`` are (layers, rows, cols) in voxel order: rows are α or y bins, cols r or x bins.
    """

    def __init__(self, grid: tuple[int, int, int], patch: tuple[int, int, int], context: int, width: int, depth: int,
                 heads: int, mlp_ratio: int = 4, time_frequencies: int = 4, coordinates: Tensor | None = None) -> None:
        super().__init__()
        (z, a, b), (pz, pa, pb) = grid, patch
        self.grid, self.patch = (z, a, b), (pz, pa, pb)
        self.n = (z // pz, a // pa, b // pb)
        nz, na, nb = self.n
        voxels = pz * pa * pb
        self.register_buffer("frequencies", 0.5 * math.pi * 2.0 ** torch.arange(time_frequencies, dtype=torch.float32))
        self.embed = nn.Linear(voxels, width)
        self.layer_embed = nn.Linear(pz, width)  # the token's own layers' y₁ entries
        if coordinates is None:  # learnt, one table per axis, summed
            self.position_layer = nn.Parameter(0.02 * torch.randn(nz, 1, 1, width))
            self.position_rows = nn.Parameter(0.02 * torch.randn(1, na, 1, width))
            self.position_cols = nn.Parameter(0.02 * torch.randn(1, 1, nb, width))
            self.position = None
        else:  # rebuilt from the geometry, not saved
            self.register_buffer("coordinates", coordinates, persistent=False)
            self.position = nn.Linear(coordinates.shape[1], width)
        self.condition = MLP(context + z + 1 + 2 * time_frequencies, [width], width, "silu")
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, voxels)
        for layer in (self.final_modulation, self.out):  # zero velocity at initialisation (adaLN-Zero)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def tokens(self) -> int:
        return self.n[0] * self.n[1] * self.n[2]

    def _positions(self) -> Tensor:
        if self.position is None:
            return (self.position_layer + self.position_rows + self.position_cols).reshape(self.tokens, -1)
        return self.position(self.coordinates)

    def forward(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        (nz, na, nb), (pz, pa, pb) = self.n, self.patch
        t = t.reshape(-1, 1).to(x.dtype) * torch.ones_like(x[:, :1])  # (N, 1); no len(x): export keeps N dynamic
        angles = t * self.frequencies
        cond = self.condition(torch.cat([context, t, torch.sin(angles), torch.cos(angles)], dim=1))
        y1 = context[:, context.shape[1] - self.grid[0]:]  # the layer vector closes the context
        patches = x.reshape(-1, nz, pz, na, pa, nb, pb).permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, nz, na * nb,
                                                                                               pz * pa * pb)
        h = self.embed(patches) + self.layer_embed(y1.reshape(-1, nz, pz)).unsqueeze(2)
        h = h.reshape(-1, self.tokens, h.shape[-1]) + self._positions()
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = self.final_modulation(F.silu(cond)).unsqueeze(1).chunk(2, dim=2)
        v = self.out(self.final_norm(h) * (1 + scale) + shift)  # (N, T, voxels per patch)
        return v.reshape(-1, nz, na, nb, pz, pa, pb).permute(0, 1, 4, 2, 5, 3, 6).flatten(1)


@register("shower_transformer")
class ShowerTransformer(TwoStageFamily):
    """Layer flow + patch-transformer velocity field; see the module docstring."""

    Config = ShowerTransformerConfig
    loss_names = ("loss", "cfm", "nll_layers")
    averaged = ("layer_flow", "velocity")

    def __init__(self, config: ShowerTransformerConfig, geometry, state: Mapping[str, Any]) -> None:
        super().__init__(config, geometry, state)
        c, L = self.condition_encoder.dim, self.representation.n_layers
        z, b, a = voxel_grid(geometry)
        pz, pb, pa = config.patch_shape((z, b, a))
        coordinates = patch_coordinates(geometry, (pz, pa, pb)) if config.position == "coordinates" else None
        self.layer_flow = conditional_flow(L, c, config.layer_flow, seed=1)
        self.velocity = PatchVelocity((z, a, b), (pz, pa, pb), c, config.width, config.depth, config.heads,
                                      config.mlp_ratio, config.time_frequencies, coordinates)
        self._start_average()

    # --- sampling options ------------------------------------------------------------------
    def default_sampling(self) -> dict[str, Any]:
        return {"steps": int(self.config.steps), "solver": str(self.config.solver)}

    def check_sampling(self, options: Mapping[str, Any]) -> None:
        check_sampling_options(options)

    # --- training ----------------------------------------------------------------------------
    def training_step(self, data: BatchSource, optimizers, generator) -> dict[str, float]:
        c, y1, y2, _ = self._encode(data.next(), generator)
        loss, cfm, nll_layers = staged_objective(self.velocity, self.layer_flow, c, y1, y2, generator)
        self._step(loss, optimizers)
        return {"loss": loss.item(), "cfm": cfm.item(), "nll_layers": nll_layers.item()}

    def validation_metrics(self, batch: Batch) -> dict[str, float]:
        g = torch.Generator(device=batch.showers.device).manual_seed(0)
        with torch.no_grad():
            c, y1, y2, _ = self._encode(batch, g)
            loss, cfm, nll_layers = staged_objective(self.sampling_net("velocity"), self.sampling_net("layer_flow"),
                                                     c, y1, y2, g)
        return {"val_cfm": cfm.item(), "val_loss": loss.item(), "val_nll_layers": nll_layers.item()}

    # --- sampling ----------------------------------------------------------------------------
    def transport(self, noise: Tensor, incident_energy: Tensor,
                  conditions: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        c = self._context(incident_energy, conditions)
        L = self.n_layers
        noise = noise.to(torch.float32)
        opts = self.sampling_options
        y1 = flow_inverse(self.sampling_net("layer_flow"), noise[:, :L], c)
        context = torch.cat([c, y1], 1)
        velocity = self.sampling_net("velocity")
        y2 = integrate(lambda t, x: velocity(x, t, context), noise[:, L:], opts["steps"], opts["solver"])
        return y1, y2
