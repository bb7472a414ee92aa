"""The two-stage shower representation of the likelihood / flow-matching families
(CaloFlow, CaloINN, CaloDREAM) and of the student distilled from them.

A shower (N, V) in MeV is

1. *dequantised*: uniform noise in [0, δ) MeV is added to every voxel (``noise_mev``).
   The reference readout zero-suppresses below 1 keV, so with δ = 1 keV every
   dequantised empty voxel lies below δ and every real hit at or above it: the
   threshold applied after sampling restores the empty voxels exactly where the
   model put their density.  The threshold is fitted: the smallest energy of the
   training showers (their readout's zero suppression, e.g. 1 keV visible = ~4 keV in
   the calibrated DS1 files), never below δ.  Generated voxels below it are a model's
   leakage out of the empty-voxel peak: a real readout cannot produce them;
2. split into layer energies (N, L) and voxel fractions within each layer (N, V)
   (:func:`~caloforge.preprocessing.split_layers`);
3. layer energies → CaloFlow's u-variables
   (:class:`~caloforge.preprocessing.LayerEnergyRatios`) → logit → standardised:
   the *layer vector* y₁ (N, L), modelled given the incident energy;
4. voxel fractions → logit → standardised: the *voxel vector* y₂ (N, V), modelled
   given the incident energy and y₁.  With ``rings`` (``model.radial_split``), the
   fractions of every r–α layer are first split into the layer's ring fractions and the
   α fractions within each ring (:class:`~caloforge.preprocessing.RadialSplit`): y₂ then
   has V + R columns (:attr:`ShowerRepresentation.n_features`), the radial profile among them.

After sampling, the fractions of a layer are renormalised to sum to one; the optional fraction
envelope (``envelope_bins``, :mod:`caloforge.models.parts.envelope`) caps each voxel's fraction first.

Every step is a :mod:`caloforge.preprocessing` transform with its log-Jacobian, so
a flow's exact log-likelihood of y₁, y₂ becomes the log-density of (layer energies in
MeV, dequantised voxel fractions): ``log p = log p(y) + log|∂y/∂x|``.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> showers = torch.rand(8, 6, generator=g, dtype=torch.float64) * 10
>>> e = torch.full((8,), 100.0, dtype=torch.float64)
>>> rep = ShowerRepresentation.fit(showers, e, [2, 4], noise_mev=1e-3, generator=g)
>>> y1, y2, logdet = rep.encode(showers, e, g)
>>> tuple(y1.shape), tuple(y2.shape), bool(torch.isfinite(logdet).all())
((8, 2), (8, 6), True)
>>> torch.allclose(rep.decode(y1, y2, e), showers, atol=2e-3)
True
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from caloforge.models.parts.envelope import FractionEnvelope
from caloforge.models.parts.layers import float_mask, per_voxel
from caloforge.preprocessing import (Chain, LayerEnergyRatios, Logit, RadialSplit, Standardize, merge_layers,
                                     split_layers, transform_from_state, transform_state)

__all__ = ["ShowerRepresentation", "radial_rings"]


def _dequantise(showers: Tensor, noise_mev: float, generator: torch.Generator | None) -> Tensor:
    if noise_mev <= 0:
        return showers
    u = torch.rand(showers.shape, generator=generator, dtype=showers.dtype, device=showers.device)
    return showers.clamp_min(0.0) + noise_mev * u


class ShowerRepresentation:
    """Showers in MeV ↔ (layer vector y₁, voxel vector y₂); see the module docstring."""

    def __init__(self, layer_sizes: Sequence[int], layer_chain: Chain, voxel_chain: Chain,
                 noise_mev: float, threshold_mev: float, envelope: "FractionEnvelope | None" = None) -> None:
        self.layer_sizes = [int(n) for n in layer_sizes]
        self.layer_chain, self.voxel_chain = layer_chain, voxel_chain
        self.noise_mev, self.threshold_mev = float(noise_mev), float(threshold_mev)
        self.envelope = envelope

    @property
    def n_layers(self) -> int:
        return len(self.layer_sizes)

    @property
    def n_voxels(self) -> int:
        return sum(self.layer_sizes)

    @property
    def n_features(self) -> int:
        """Columns of the voxel vector y₂: the voxels, plus one per ring where layers are split radially."""
        return self.n_voxels + sum(t.added for t in self.voxel_chain.transforms if isinstance(t, RadialSplit))

    @classmethod
    def fit(cls, showers: Tensor, incident_energy: Tensor, layer_sizes: Sequence[int], *, noise_mev: float = 1e-3,
            threshold_mev: float | None = None, alpha: float = 1e-6, generator: torch.Generator | None = None,
            max_showers: int = 200_000, envelope_bins: int = 0,
            rings: Sequence[int] | None = None) -> "ShowerRepresentation":
        """Fit the standardisations, the response bound of u₀, (``threshold_mev=None``)
        the readout threshold and (``envelope_bins`` > 0) the fraction envelope on training showers;
        ``rings`` (n_r per layer, 0 for none: :func:`radial_rings`) splits r–α layers radially."""
        step = -(-len(showers) // max_showers) if len(showers) > max_showers else 1
        # every step-th shower, not the first ones: a file sorted by energy is covered end to end
        x = showers[::step].to(torch.float64)
        e = incident_energy[::step].to(torch.float64)
        layer_energy, fractions = split_layers(_dequantise(x, noise_mev, generator), layer_sizes)
        # u₀ = E_tot / (s · E_inc) must stay below 1: s a little above the largest response seen
        if threshold_mev is None:  # the training file's zero suppression (its smallest recorded energy)
            hits = x[x > 0]
            threshold_mev = max(noise_mev, hits.min().item() if hits.numel() else 0.0)
        # the largest response of *every* training shower, not of the subsample: the low-energy
        # tail is sparse (a 605 000-shower file: 4.03 over all rows, 2.74 over every 4th), and a
        # shower above the bound would be squashed onto it
        response = max((_response(showers[i:i + 65536], incident_energy[i:i + 65536])
                        for i in range(0, len(showers), 65536)), default=1.0)
        s = max(1.2 * response, 1e-12)
        layer_chain = Chain([LayerEnergyRatios(s), Logit(alpha), Standardize()]).fit(layer_energy, e)
        radial = [RadialSplit(layer_sizes, rings)] if rings is not None and any(rings) else []
        voxel_chain = Chain(radial + [Logit(alpha), Standardize()]).fit(fractions, e)
        envelope = FractionEnvelope.fit(fractions, e, envelope_bins) if envelope_bins > 0 else None
        return cls(layer_sizes, layer_chain, voxel_chain, noise_mev, threshold_mev, envelope)

    def encode(self, showers: Tensor, incident_energy: Tensor,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(y₁, y₂ float32; log|∂(y₁, y₂)/∂(layer energies, fractions)| float64) of dequantised showers."""
        e = incident_energy.to(torch.float64)
        layer_energy, fractions = split_layers(_dequantise(showers.to(torch.float64), self.noise_mev, generator),
                                               self.layer_sizes)
        y1 = self.layer_chain.forward(layer_energy, e)
        y2 = self.voxel_chain.forward(fractions, e)
        logdet = self.layer_chain.log_abs_det_jacobian(layer_energy, e) + \
            self.voxel_chain.log_abs_det_jacobian(fractions, e)
        return y1.to(torch.float32), y2.to(torch.float32), logdet

    def decode(self, y1: Tensor, y2: Tensor, incident_energy: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        """Showers in MeV (``dtype``): inverse transforms, merge, zero below the threshold.

        The layer energies are always inverted in float64 (L numbers per shower); the voxel
        fractions, the envelope and the merge run in ``dtype``.  Generation uses float32 (the
        files are float32): a voxel then carries float32's relative precision, ~1e-7, at a
        third of the float64 cost.
        """
        e = incident_energy.to(torch.float64)
        layer_energy = self.layer_chain.inverse(y1.to(torch.float64), e).to(dtype)
        fractions = self.voxel_chain.inverse(y2.to(dtype), e)
        if self.envelope is not None:  # capped and normalised per layer
            showers = self.envelope.apply(fractions, e, self.layer_sizes) * per_voxel(layer_energy, self.layer_sizes)
        else:
            showers = merge_layers(layer_energy, fractions, self.layer_sizes)
        return showers * float_mask(torch.ge, showers, self.threshold_mev)  # the readout's zero suppression

    def bounds(self) -> tuple[Tensor, Tensor]:
        """(lo, hi) of the concatenated (y₁, y₂): beyond them the logit saturates and :meth:`decode`
        no longer changes, so clamping a representation to the box changes no shower.

        A flow's inverse can throw rare tail noise to ±10¹³ there; regression targets are
        clamped to this box (the student) so such outliers do not swamp the loss.
        """
        lo, hi = [], []
        for chain, n in ((self.layer_chain, self.n_layers), (self.voxel_chain, self.n_features)):
            first = next(i for i, t in enumerate(chain.transforms) if isinstance(t, Logit))
            tail = Chain(chain.transforms[first:])  # Logit, Standardize: increasing in every coordinate
            one = torch.ones(1, dtype=torch.float64)
            lo.append(tail.forward(torch.zeros(1, n, dtype=torch.float64), one)[0])
            hi.append(tail.forward(torch.ones(1, n, dtype=torch.float64), one)[0])
        return torch.cat(lo).to(torch.float32), torch.cat(hi).to(torch.float32)

    def state(self) -> dict[str, Any]:
        return {"layer_sizes": self.layer_sizes, "layer_chain": transform_state(self.layer_chain),
                "voxel_chain": transform_state(self.voxel_chain), "noise_mev": self.noise_mev,
                "threshold_mev": self.threshold_mev,
                "envelope": self.envelope.state() if self.envelope is not None else None}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "ShowerRepresentation":
        envelope = state.get("envelope")  # absent in models trained before the envelope existed
        return cls(state["layer_sizes"], transform_from_state(state["layer_chain"]),
                   transform_from_state(state["voxel_chain"]), state["noise_mev"], state["threshold_mev"],
                   FractionEnvelope.from_state(envelope) if envelope else None)


def radial_rings(geometry) -> list[int]:
    """n_r of every read-out layer that has both several rings and several α bins, else 0
    (the ``rings`` of :meth:`ShowerRepresentation.fit`; Cartesian layers are never split)."""
    return [layer.n_r if layer.kind == "polar" and layer.n_r > 1 and layer.n_alpha > 1 else 0
            for layer in geometry.layers if layer.n_voxels]


def _response(showers: Tensor, incident_energy: Tensor) -> float:
    """max E_tot / E_inc of a block of showers."""
    return (showers.to(torch.float64).clamp_min(0.0).sum(1) / incident_energy.to(torch.float64)).max().item()

