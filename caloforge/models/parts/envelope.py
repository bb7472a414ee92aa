"""The fraction envelope: the largest fraction of its layer each voxel took in training.

After sampling, the fractions of a layer are renormalised to sum to one.  That makes a
flow's leakage into the tail of a nearly-always-empty voxel costly: one outer voxel
drawn at a large fraction takes its share from the shower core (seen as the outermost
ring of a 65 GeV photon shower's second layer holding half the layer's energy).  The
optional *envelope* (``envelope_bins``) is the largest fraction every voxel took in the
training showers, per incident-energy bin; decoding caps each fraction at it and hands
the excess to the uncapped voxels in proportion (water-filling, so every layer keeps its
energy).  Training showers lie inside their envelope, so encoding and decoding them is
unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from caloforge.models.parts.energy_bins import energy_bin_edges, energy_bin_index
from caloforge.models.parts.layers import float_mask, layer_sums, per_voxel
from caloforge.preprocessing import exporting

__all__ = ["FractionEnvelope", "water_fill_newton", "water_fill_sorted"]


def water_fill_newton(p: Tensor, cap: Tensor, layer_sizes: Sequence[int]) -> Tensor:
    """min(c·p, cap) with c per row and layer such that every layer sums to one.

    ``p`` (N, V) sums to one in each layer; ``cap`` (N, V) sums to at least one.  f(c) =
    Σ min(c·p, cap) is increasing, concave and piecewise linear, so Newton's method from
    c = 1 climbs to the root from below: with S = {c·p > cap} capped, c' = (1 − Σ_S cap) /
    Σ_{not S} p, S only grows, and once S stops growing c is the root: exact, not iterated
    to a tolerance.  Whole-row operations and no sort; a shower leaves the loop as soon as its
    S stops growing (10 000 DS1-photon student showers: 78 % capped, all settled within 4 rounds).

    Capping the first voxel pushes the second over its cap, the second round caps it too:

    >>> p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    >>> water_fill_newton(p, torch.tensor([[0.4, 0.32, 1.0]], dtype=torch.float64), [3]).round(decimals=9).tolist()
    [[0.4, 0.32, 0.28]]
    """
    over = float_mask(torch.gt, p, cap)  # masks are 0/1 floats (see float_mask)
    rows = (over.amax(1) > 0).nonzero().squeeze(1)  # showers with a voxel over its cap
    if len(rows) == 0:
        return p
    out = p.clone()
    p, cap, over = (t.index_select(0, rows) for t in (p, cap, over))
    while len(rows):  # at most V rounds: S grows by at least one voxel per round in every row kept
        capped = layer_sums(cap * over, layer_sizes)
        free = layer_sums(torch.addcmul(p, p, over, value=-1.0), layer_sizes)  # p where not capped
        # a layer capped all over (free = 0) keeps its caps; bounded so that 0·c stays 0
        c = ((1 - capped) / free.clamp_min(1e-30)).clamp(1.0, 1e30)
        scaled = p * per_voxel(c, layer_sizes)
        grown = torch.maximum(over, float_mask(torch.gt, scaled, cap))
        settled = grown.sum(1) == over.sum(1)  # S stopped growing (sums of 0/1: exact): c is the root
        done = settled.nonzero().squeeze(1)
        # lerp with weight 0 or 1 returns scaled or cap exactly
        out.index_copy_(0, rows.index_select(0, done), torch.lerp(scaled.index_select(0, done),
                                                                  cap.index_select(0, done),
                                                                  over.index_select(0, done)))
        left = (~settled).nonzero().squeeze(1)  # only the rows still cascading go round again
        rows, p, cap, over = (t.index_select(0, left) for t in (rows, p, cap, grown))
    return out


def water_fill_sorted(p: Tensor, cap: Tensor, layer_sizes: Sequence[int]) -> Tensor:
    """The same solution as :func:`water_fill_newton` without a data-dependent loop (for export).

    Σ min(c·p, cap) has its kinks at tᵢ = capᵢ/pᵢ.  With the voxels sorted by t, capping
    the first k gives c = (1 − Σ_{<k} cap) / Σ_{≥k} p; k is the number of kinks where the
    sum is still below 1.  No capped voxel: k = 0, c = 1.

    >>> p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    >>> water_fill_sorted(p, torch.tensor([[0.4, 0.32, 1.0]], dtype=torch.float64), [3]).round(decimals=9).tolist()
    [[0.4, 0.32, 0.28]]
    """
    out = []
    for q, m in zip(torch.split(p, list(layer_sizes), 1), torch.split(cap, list(layer_sizes), 1)):
        t, order = (m / q.clamp_min(1e-30)).clamp_max(1e30).sort(1)  # empty voxels (p = 0) last
        capped = m.gather(1, order).cumsum(1)  # Σ cap of the voxels up to and including each kink
        # Σ p from each kink on, summed from the end: 1 − Σ_{<k} p would lose the small remainders
        rest = torch.cat([q.gather(1, order).flip(1).cumsum(1).flip(1), torch.zeros_like(q[:, :1])], 1)
        k = (capped + t * rest[:, 1:] < 1).sum(1, keepdim=True)  # kinks still below 1
        capped_before = torch.cat([torch.zeros_like(capped[:, :1]), capped], 1).gather(1, k)
        free_before = rest.gather(1, k)
        c = ((1 - capped_before) / free_before.clamp_min(1e-30)).clamp(1.0, 1e30)
        out.append(torch.minimum(q * c, m))
    return torch.cat(out, 1)


class FractionEnvelope:
    """The largest fraction of its layer each voxel took in training, per incident-energy bin.

    Bins: one per distinct incident energy when the training set has at most ``bins`` of
    them (the CaloChallenge DS1 energies), otherwise ``bins`` quantile bins of log E_inc.
    Energies outside the fitted range use the nearest bin; other conditions (angles) are
    not binned, so the envelope there is the maximum over them.

    >>> f = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]], dtype=torch.float64)
    >>> e = torch.tensor([10.0, 10.0, 1000.0, 1000.0], dtype=torch.float64)
    >>> env = FractionEnvelope.fit(f, e, bins=8)
    >>> env.max_fraction.tolist()
    [[0.9, 0.4], [0.3, 0.8]]
    >>> env.apply(torch.tensor([[0.1, 0.9]], dtype=torch.float64), e[:1], [2]).round(decimals=9).tolist()
    [[0.6, 0.4]]
    """

    def __init__(self, log_energy_edges: Sequence[float], max_fraction: Tensor) -> None:
        self.log_energy_edges = torch.as_tensor(log_energy_edges, dtype=torch.float64).reshape(-1)
        self.max_fraction = torch.as_tensor(max_fraction, dtype=torch.float64)

    @classmethod
    def fit(cls, fractions: Tensor, incident_energy: Tensor, bins: int) -> "FractionEnvelope":
        inner = energy_bin_edges(incident_energy, bins)
        index = torch.bucketize(incident_energy.to(torch.float64).log(), inner)
        fractions = fractions.to(torch.float64)
        overall = fractions.amax(0)  # for a bin no shower fell in (tied quantiles)
        top = torch.stack([fractions[index == b].amax(0) if (index == b).any() else overall
                           for b in range(len(inner) + 1)])
        return cls(inner, top)

    def bin_index(self, incident_energy: Tensor) -> Tensor:
        return energy_bin_index(incident_energy, self.log_energy_edges)

    def apply(self, fractions: Tensor, incident_energy: Tensor, layer_sizes: Sequence[int]) -> Tensor:
        """Fractions capped at the envelope, each layer renormalised with the excess spread over
        the voxels below their cap: min(c·p, cap) with Σ min(c·p, cap) = 1 per layer, solved
        exactly in the dtype of ``fractions`` (:func:`water_fill_newton`; an exported graph,
        which cannot hold a data-dependent loop, uses :func:`water_fill_sorted`)."""
        sizes = [int(n) for n in layer_sizes]
        cap = self.max_fraction.to(fractions.device, fractions.dtype)[self.bin_index(incident_energy)]
        p = fractions.clamp_min(0.0)
        p = p / per_voxel(layer_sums(p, sizes).clamp_min(1e-30), sizes)
        if exporting():
            return water_fill_sorted(p, cap, sizes)
        return water_fill_newton(p, cap, sizes)

    def state(self) -> dict[str, Any]:
        # rounded up to 6 significant digits: the JSON stays short and no cap shrinks
        top = self.max_fraction.numpy()
        scale = 10.0 ** (np.floor(np.log10(np.maximum(top, 1e-300))) - 5)
        rounded = np.where(top > 0, np.ceil(top / scale) * scale, 0.0)
        return {"log_energy_edges": self.log_energy_edges.tolist(),
                "max_fraction": [[float(f"{v:.6g}") for v in row] for row in rounded]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "FractionEnvelope":
        return cls(state["log_energy_edges"], torch.tensor(state["max_fraction"], dtype=torch.float64))
