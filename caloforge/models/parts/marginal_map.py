"""Monotone maps, one per coordinate and incident-energy bin, that carry a sample's marginals onto a target's.

A regression student follows its teacher's map from noise to showers only approximately: where
its MLP cannot resolve the map it returns something near the conditional mean, so every output
coordinate is a little under-dispersed and its tails and modes (the empty-voxel mode of a sparse
layer) are smeared.  :class:`MarginalMap` undoes that marginal distortion after the fact: for each
output coordinate j and incident-energy bin b it is the quantile map x ↦ F_target⁻¹(F_source(x))
fitted on pairs drawn for the same conditions, stored as a piecewise-linear function on a uniform
grid over the source's range (so applying it is arithmetic and four gathers, and it exports to ONNX).
Being monotone per coordinate it keeps the source's ordering, and with it the map's dependence on
the noise; only the marginals change.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> energy = torch.full((4000,), 1000.0)
>>> source = 0.5 * torch.randn(4000, 1, generator=g)  # under-dispersed
>>> target = torch.randn(4000, 1, generator=g)
>>> m = MarginalMap(torch.empty(0), features=1, knots=33, lo=torch.tensor([-8.0]), hi=torch.tensor([8.0]))
>>> torch.allclose(m(source, energy), source, atol=1e-5)  # the identity until fitted
True
>>> m.fit_(source, target, energy)
>>> round(m(source, energy).std().item(), 1)
1.0
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.models.parts.energy_bins import energy_bin_index

__all__ = ["MarginalMap"]


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Row-wise linear interpolation: x (D, M) on the increasing knots xp (D, K) → fp (D, K);
    constant beyond the ends (numpy.interp, one row per coordinate)."""
    i = torch.searchsorted(xp.contiguous(), x.contiguous(), right=True).clamp(1, xp.shape[1] - 1)
    x0, x1 = xp.gather(1, i - 1), xp.gather(1, i)
    f0, f1 = fp.gather(1, i - 1), fp.gather(1, i)
    w = ((x - x0) / (x1 - x0).clamp_min(1e-300)).clamp(0.0, 1.0)
    return f0 + w * (f1 - f0)


def _quantiles(x: Tensor, levels: Tensor) -> Tensor:
    """(D, len(levels)) quantiles of each column of x (n, D), linear between order statistics
    (torch.quantile's default).  NumPy sorts each column as a contiguous row: ~10× faster than
    torch.sort on one core (12 s → 1 s for a DS1-photon refit), which matters as the student
    refits at every checkpoint inside its training budget."""
    ordered = torch.from_numpy(np.sort(x.detach().T.contiguous().cpu().numpy(), axis=1)).to(x.device, torch.float64)
    position = levels.to(torch.float64) * (x.shape[0] - 1)
    below = position.floor().to(torch.int64).clamp(max=x.shape[0] - 1)
    above = (below + 1).clamp(max=x.shape[0] - 1)
    w = position - below
    return ordered[:, below] * (1 - w) + ordered[:, above] * w


class MarginalMap(nn.Module):
    """Per incident-energy bin (``log_energy_edges``: :func:`~caloforge.models.parts.energy_bins.energy_bin_edges`)
    and per coordinate, a monotone piecewise-linear map on ``knots`` uniform knots; the identity on
    [lo, hi] until :meth:`fit_` is called.  The tables are buffers: they travel with the weights.

    Buffers: ``grid_scale`` and ``grid_offset`` (bins, D) put a coordinate on its knot grid
    (t = y · scale + offset, knot k at t = k); ``knot_value`` and ``knot_rise`` (bins, D, knots) are each
    knot's value and the rise to the next one.  Applying the map is four gathers (two of rows, two
    flat: on one core a flat gather costs an eighth of a two-column one) and a few passes over (N, D),
    the index arithmetic in int32 (vectorised, unlike int64).
    """

    def __init__(self, log_energy_edges: Tensor, features: int, knots: int, lo: Tensor, hi: Tensor) -> None:
        super().__init__()
        if knots < 2:
            raise ValueError(f"a marginal map needs at least 2 knots, got {knots}")
        bins = len(log_energy_edges) + 1
        self.register_buffer("log_energy_edges", torch.as_tensor(log_energy_edges, dtype=torch.float64).reshape(-1))
        self.register_buffer("grid_scale", torch.zeros(bins, features))
        self.register_buffer("grid_offset", torch.zeros(bins, features))
        self.register_buffer("knot_value", torch.zeros(bins, features, knots))
        self.register_buffer("knot_rise", torch.zeros(bins, features, knots))
        lo, hi = (torch.as_tensor(v, dtype=torch.float64).reshape(features) for v in (lo, hi))
        grid = torch.linspace(0.0, 1.0, knots, dtype=torch.float64)
        identity = lo[:, None] + (hi - lo)[:, None] * grid
        for b in range(bins):
            self._set(b, lo, hi, identity)

    @property
    def knots(self) -> int:
        return self.knot_value.shape[2]

    def _set(self, b: int, lo: Tensor, hi: Tensor, values: Tensor) -> None:
        """Bin b's maps: knots uniform on [lo, hi] (D,), ``values`` (D, knots) at them."""
        scale = (self.knots - 1) / (hi - lo).clamp_min(1e-12)
        self.grid_scale[b], self.grid_offset[b] = scale.to(self.grid_scale), (-lo * scale).to(self.grid_offset)
        self.knot_value[b] = values.to(self.knot_value)
        self.knot_rise[b] = torch.cat([values.diff(dim=1), torch.zeros_like(values[:, :1])], 1).to(self.knot_rise)

    def forward(self, y: Tensor, incident_energy: Tensor) -> Tensor:
        """The mapped coordinates (N, D) of y (N, D) for showers of these incident energies (N,)."""
        b = energy_bin_index(incident_energy, self.log_energy_edges)
        n_features, knots = self.knot_value.shape[1], self.knot_value.shape[2]
        t = torch.addcmul(self.grid_offset.index_select(0, b), y, self.grid_scale.index_select(0, b))
        t = t.clamp(0.0, knots - 1.0)
        i = t.floor().clamp(max=knots - 2.0)
        # the knot's place in the flattened table: (bin · D + coordinate) · knots + i
        first = torch.arange(0, n_features * knots, knots, dtype=torch.int32, device=y.device)
        flat = (i.to(torch.int32) + first + (b.to(torch.int32) * (n_features * knots))[:, None]).reshape(-1)
        value = self.knot_value.reshape(-1).index_select(0, flat).reshape(y.shape)
        rise = self.knot_rise.reshape(-1).index_select(0, flat).reshape(y.shape)
        return value + (t - i) * rise

    @torch.no_grad()
    def fit_(self, source: Tensor, target: Tensor, incident_energy: Tensor, levels: int = 257) -> None:
        """Fit every bin's maps on paired rows (source, target: (N, D), same conditions row by row)
        by matching ``levels`` quantiles; a bin with fewer than 2 rows keeps its map."""
        self.fit_quantiles_(self.quantiles(source, incident_energy, levels),
                            self.quantiles(target, incident_energy, levels))

    @torch.no_grad()
    def quantiles(self, x: Tensor, incident_energy: Tensor, levels: int = 257) -> list[Tensor | None]:
        """Per bin, the (D, ``levels``) quantiles of the rows of x (N, D) in it; None for a bin with
        fewer than 2 rows.  A target that does not change between fits is sorted once this way."""
        b = energy_bin_index(incident_energy, self.log_energy_edges).to(x.device)
        q = torch.linspace(0.0, 1.0, levels, dtype=torch.float64, device=x.device)
        return [_quantiles(x[b == k], q) if int((b == k).sum()) >= 2 else None
                for k in range(self.knot_value.shape[0])]

    @torch.no_grad()
    def fit_quantiles_(self, source: list[Tensor | None], target: list[Tensor | None]) -> None:
        """Fit every bin's maps from per-bin quantiles (:meth:`quantiles`, same levels); a bin
        without them keeps its map."""
        for k, (xs, ys) in enumerate(zip(source, target)):
            if xs is None or ys is None:
                continue
            grid = torch.linspace(0.0, 1.0, self.knots, dtype=torch.float64, device=xs.device)
            lo, hi = xs[:, 0], xs[:, -1]
            self._set(k, lo, hi, _interp(lo[:, None] + (hi - lo)[:, None] * grid[None, :], xs, ys))
