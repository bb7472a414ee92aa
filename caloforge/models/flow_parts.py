"""Shared parts of the likelihood / flow-matching families: the two-stage shower
representation and the conditional normalising flows built with zuko.

The representation follows CaloFlow / CaloINN / CaloDREAM: a shower (N, V) in MeV is

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

After sampling, the fractions of a layer are renormalised to sum to one.  That makes a
flow's leakage into the tail of a nearly-always-empty voxel costly: one outer voxel
drawn at a large fraction takes its share from the shower core (seen as the outermost
ring of a 65 GeV photon shower's second layer holding half the layer's energy).  The
optional *envelope* (``envelope_bins``) is the largest fraction every voxel took in the
training showers, per incident-energy bin; decoding caps each fraction at it and hands
the excess to the uncapped voxels in proportion (water-filling, so every layer keeps its
energy).  Training showers lie inside their envelope, so encoding and decoding them is
unchanged.

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

import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.preprocessing import (Chain, LayerEnergyRatios, Logit, RadialSplit, Standardize, exporting,
                                     merge_layers, split_layers, transform_from_state, transform_state)

__all__ = ["ShowerRepresentation", "radial_rings", "FractionEnvelope", "energy_bin_edges", "energy_bin_index",
           "water_fill_newton", "water_fill_sorted", "FlowConfig",
           "conditional_flow", "flow_log_prob", "flow_inverse", "flow_forward", "MLP", "ACTIVATIONS", "scheduled_step",
           "check_schedule_keys", "optimizer_steps", "WeightAverage", "check_average_key"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU,
                                           "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


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
            showers = self.envelope.apply(fractions, e, self.layer_sizes) * _per_voxel(layer_energy, self.layer_sizes)
        else:
            showers = merge_layers(layer_energy, fractions, self.layer_sizes)
        return showers * _float_mask(torch.ge, showers, self.threshold_mev)  # the readout's zero suppression

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


def _float_mask(compare, a: Tensor, b) -> Tensor:
    """compare(a, b) as 0/1 in a's dtype; written straight into a float tensor where not exporting
    (PyTorch's boolean kernels, any(), bool × float, cost several float passes each on the CPU)."""
    if exporting():  # exporters reject out=
        return compare(a, b).to(a.dtype)
    return compare(a, b, out=torch.empty_like(a))


def _layer_sums(x: Tensor, sizes: Sequence[int]) -> Tensor:
    """(N, V) → (N, L): the sum over each layer's voxels."""
    return torch.stack([part.sum(1) for part in torch.split(x, list(sizes), 1)], 1)


def _per_voxel(per_layer: Tensor, sizes: Sequence[int]) -> Tensor:
    """(N, L) → (N, V): each layer's value repeated over its voxels (a gather: any batch size in ONNX)."""
    return per_layer.index_select(1, _layer_of_voxel(tuple(int(n) for n in sizes)).to(per_layer.device))


@functools.lru_cache(maxsize=64)
def _layer_of_voxel(sizes: tuple[int, ...]) -> Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


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
    over = _float_mask(torch.gt, p, cap)  # masks are 0/1 floats (see _float_mask)
    rows = (over.amax(1) > 0).nonzero().squeeze(1)  # showers with a voxel over its cap
    if len(rows) == 0:
        return p
    out = p.clone()
    p, cap, over = (t.index_select(0, rows) for t in (p, cap, over))
    while len(rows):  # at most V rounds: S grows by at least one voxel per round in every row kept
        capped = _layer_sums(cap * over, layer_sizes)
        free = _layer_sums(torch.addcmul(p, p, over, value=-1.0), layer_sizes)  # p where not capped
        # a layer capped all over (free = 0) keeps its caps; bounded so that 0·c stays 0
        c = ((1 - capped) / free.clamp_min(1e-30)).clamp(1.0, 1e30)
        scaled = p * _per_voxel(c, layer_sizes)
        grown = torch.maximum(over, _float_mask(torch.gt, scaled, cap))
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


def energy_bin_edges(incident_energy: Tensor, bins: int) -> Tensor:
    """Inner edges in log E_inc (float64) of at most ``bins`` bins: one bin per distinct energy when
    the training set has at most ``bins`` of them (the CaloChallenge DS1 energies), otherwise quantile
    bins of log E_inc.

    >>> energy_bin_edges(torch.tensor([256.0, 256.0, 1024.0]), bins=8).exp().round().tolist()
    [512.0]
    """
    log_e = incident_energy.to(torch.float64).reshape(-1).log()
    distinct = torch.unique(log_e)
    if len(distinct) <= bins:  # midpoints between the distinct energies
        return (distinct[1:] + distinct[:-1]) / 2
    return torch.unique(torch.quantile(log_e, torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]))


def energy_bin_index(incident_energy: Tensor, log_energy_edges: Tensor) -> Tensor:
    """The bin of each incident energy (N,) under :func:`energy_bin_edges`; energies outside the
    fitted range fall in the first or last bin."""
    # a comparison count rather than bucketize: the same numbers, and it exports to ONNX
    edges = log_energy_edges.to(incident_energy.device)
    return (incident_energy.to(torch.float64).reshape(-1).log()[:, None] > edges[None, :]).sum(1)


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
        p = p / _per_voxel(_layer_sums(p, sizes).clamp_min(1e-30), sizes)
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


# ----------------------------------------------------------------------------------
# Conditional normalising flows (zuko)
# ----------------------------------------------------------------------------------
@dataclass
class FlowConfig:
    """One conditional coupling flow: ``transform`` affine (RealNVP-like) or spline (neural spline)."""

    transform: str = "affine"
    transforms: int = 6
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    bins: int = 8
    randperm: bool = True

    def check(self, require, key: str) -> None:
        require(self.transform in ("affine", "spline"), f"{key}.transform", "affine or spline", self.transform)
        require(self.transforms > 0, f"{key}.transforms", "a positive integer", self.transforms)
        require(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), f"{key}.hidden",
                "a non-empty list of positive integers", self.hidden)
        require(self.bins > 1, f"{key}.bins", "an integer > 1", self.bins)


def conditional_flow(features: int, context: int, cfg: FlowConfig, seed: int = 0) -> nn.Module:
    """A zuko coupling flow over ``features`` given ``context`` (two-pass masked transforms = coupling).

    Random feature permutations between the coupling layers come from ``seed``, so a flow
    is rebuilt identically when a checkpoint is loaded.

    >>> f = conditional_flow(3, 2, FlowConfig(transforms=2, hidden=[8]))
    >>> y, c = torch.randn(5, 3), torch.randn(5, 2)
    >>> torch.allclose(flow_inverse(f, flow_forward(f, y, c), c), y, atol=1e-5)
    True
    """
    import zuko

    passes = 2 if features > 1 else None
    kwargs = dict(features=features, context=context, transforms=cfg.transforms, passes=passes,
                  hidden_features=list(cfg.hidden), randperm=cfg.randperm and features > 2)
    ambient = torch.empty(0).device  # e.g. "meta" while a checkpoint's shapes are checked
    # zuko builds its masks with torch.unique, which the meta device lacks: build on the CPU, then move
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)  # zuko draws its permutations from the global RNG
        flow = zuko.flows.NSF(bins=cfg.bins, **kwargs) if cfg.transform == "spline" else zuko.flows.MAF(**kwargs)
    return flow.to(ambient)


def flow_forward(flow: nn.Module, y: Tensor, context: Tensor) -> Tensor:
    """Data → latent."""
    return flow(context).transform(y)


def flow_inverse(flow: nn.Module, z: Tensor, context: Tensor) -> Tensor:
    """Latent → data: one pass through the coupling layers."""
    return flow(context).transform.inv(z)


def flow_log_prob(flow: nn.Module, y: Tensor, context: Tensor) -> Tensor:
    """Exact log-density of ``y`` given ``context`` (N,)."""
    return flow(context).log_prob(y)


class MLP(nn.Sequential):
    """Dense layers with an activation between them (none after the last)."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: str = "silu") -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_in, width), ACTIVATIONS[activation]()]
            n_in = width
        layers.append(nn.Linear(n_in, n_out))
        super().__init__(*layers)


def check_schedule_keys(cfg: Any, require) -> None:
    """The keys :func:`scheduled_step` reads: ``lr``, ``lr_min``, ``lr_decay_iterations``, ``grad_clip``."""
    require(cfg.lr > 0, "model.lr", "positive", cfg.lr)
    require(0 <= cfg.lr_min <= cfg.lr, "model.lr_min", "in [0, lr]", cfg.lr_min)
    require(cfg.lr_decay_iterations >= 0, "model.lr_decay_iterations", "≥ 0", cfg.lr_decay_iterations)
    require(cfg.grad_clip >= 0, "model.grad_clip", "≥ 0 (0: no clipping)", cfg.grad_clip)


def scheduled_step(model, optimizer: torch.optim.Optimizer, loss: Tensor, cfg: Any) -> None:
    """One optimiser step of ``model`` (:meth:`ShowerModel.optimize`) with the family's cosine
    learning-rate decay (``cfg.lr`` → ``cfg.lr_min`` over ``cfg.lr_decay_iterations`` of the
    optimiser's own steps, so it resumes exactly) and gradient-norm clipping (``cfg.grad_clip``)."""
    import math

    if cfg.lr_decay_iterations > 0:
        done = min(optimizer_steps(optimizer) / cfg.lr_decay_iterations, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * done))
    model.optimize(_ClipThenStep(optimizer, cfg.grad_clip) if cfg.grad_clip > 0 else optimizer, loss)


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """Steps the optimiser has taken (Adam's own counter: restored on resume, so schedules resume exactly)."""
    return next((int(st["step"]) for st in optimizer.state.values() if "step" in st), 0)


class _ClipThenStep:
    """An optimiser view whose ``step`` clips the gradient norm first (after the rank averaging)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        self.optimizer, self.max_norm = optimizer, max_norm
        self.param_groups = optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"]], self.max_norm)
        self.optimizer.step()


def check_average_key(cfg: Any, require) -> None:
    """``ema_decay``: 0 (off) or the decay of :class:`WeightAverage` in [0.9, 1)."""
    require(cfg.ema_decay == 0 or 0.9 <= cfg.ema_decay < 1, "model.ema_decay",
            "0 (off) or in [0.9, 1) (e.g. 0.999)", cfg.ema_decay)


class WeightAverage(nn.Module):
    """An exponential moving average of some networks' weights (Polyak averaging): the
    weights a flow family samples and validates with when ``model.ema_decay`` > 0.

    Averaging the last few thousand optimiser steps removes the step-to-step noise of
    stochastic training, which a likelihood or flow-matching model otherwise carries into
    every sample (the diffusion and flow-matching literature samples from such an average
    as a rule).  The averaged copies are ordinary submodules, so checkpoints save them and
    a resumed run continues the same average.  The decay ramps up as (1 + k) / (10 + k)
    over the first steps k so the average forgets its random initialisation.

    >>> net = nn.Linear(2, 1)
    >>> avg = WeightAverage({"net": net}, decay=0.9)
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(1.0)
    >>> avg.update({"net": net}, step=100)
    >>> bool(torch.allclose(avg["net"].weight, net.weight - 0.9))
    True
    """

    def __init__(self, networks: Mapping[str, nn.Module | None], decay: float) -> None:
        super().__init__()
        self.decay = float(decay)
        self.networks = nn.ModuleDict({name: copy.deepcopy(net).requires_grad_(False)
                                       for name, net in networks.items() if net is not None})

    def __getitem__(self, name: str) -> nn.Module:
        return self.networks[name]

    @torch.no_grad()
    def update(self, networks: Mapping[str, nn.Module | None], step: int) -> None:
        """Move the average towards ``networks`` after optimiser step number ``step`` (from 1)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, average in self.networks.items():
            for a, p in zip(average.parameters(), networks[name].parameters()):
                a.lerp_(p, 1.0 - decay)
            for a, b in zip(average.buffers(), networks[name].buffers()):
                a.copy_(b)
