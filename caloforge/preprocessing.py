"""Invertible preprocessing of showers, fitted from training data and saved with the model.

Each transform maps a batch ``x`` (N, D) given the incident energies ``e`` (N,) to
``y`` (N, D) and back, and gives ``log|det ∂y/∂x|`` per shower for likelihood
models.  Transforms are small, stateless or fitted once (:meth:`Transform.fit`),
and serialise to JSON (:func:`transform_state` / :func:`transform_from_state`).

==================  ===============================================  ====================
transform           y                                                fitted
==================  ===============================================  ====================
ScaleByEnergy       x · scale / E_inc (CaloShowerGAN's voxels/E_inc)  –
Log                 log(x + α)                                        –
Logit               logit(α + (1 − 2α) x), for x in [0, 1]            –
Standardize         (x − mean) / std per column                       mean, std
LayerEnergyRatios   CaloFlow's u: E_tot/(s·E_inc), E_i / Σ_{j≥i} E_j  –
RadialSplit         r–α layer fractions → ring fractions + α          –
                    fractions within each ring (adds n_r columns)
==================  ===============================================  ====================

:func:`split_layers` / :func:`merge_layers` turn a shower into its layer energies
plus the voxel fractions within each layer (CaloFlow / CaloINN's two-stage split).

>>> import torch
>>> chain = Chain([ScaleByEnergy(100.0), Log(1e-3), Standardize()])
>>> x, e = torch.rand(64, 5).double() * 50, torch.full((64,), 1000.0, dtype=torch.float64)
>>> chain = chain.fit(x, e)
>>> torch.allclose(chain.inverse(chain.forward(x, e), e), x)
True
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["Transform", "ScaleByEnergy", "Log", "Logit", "Standardize", "LayerEnergyRatios", "RadialSplit", "Chain",
           "transform_state", "transform_from_state", "split_layers", "merge_layers", "exporting"]


def exporting() -> bool:
    """True while a graph is traced or compiled for export (no data-dependent loops, no ``out=`` there)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _col(e: Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(e, dtype=like.dtype, device=like.device).reshape(-1, 1)


class Transform:
    """Base: identity.  Subclasses override forward / inverse / log_abs_det_jacobian."""

    name = "identity"

    def fit(self, x: Tensor, e: Tensor) -> "Transform":
        """Fit constants on training data (returns self)."""
        return self

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        return x

    def inverse(self, y: Tensor, e: Tensor) -> Tensor:
        return y

    def log_abs_det_jacobian(self, x: Tensor, e: Tensor) -> Tensor:
        """log|det ∂forward/∂x| per row, shape (N,)."""
        return torch.zeros(len(x), dtype=x.dtype, device=x.device)

    def params(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items() if not isinstance(v, list))})"


class ScaleByEnergy(Transform):
    """y = x · scale / E_inc: voxel energies as fractions of the incident energy."""

    name = "scale_by_energy"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    def forward(self, x, e):
        return x * (self.scale / _col(e, x))

    def inverse(self, y, e):
        return y * (_col(e, y) / self.scale)

    def log_abs_det_jacobian(self, x, e):
        return x.shape[1] * torch.log(self.scale / _col(e, x).reshape(-1))

    def params(self):
        return {"scale": self.scale}


class Log(Transform):
    """y = log(x + α); α regularises empty voxels."""

    name = "log"

    def __init__(self, alpha: float = 1e-6) -> None:
        self.alpha = float(alpha)

    def forward(self, x, e):
        return torch.log(x + self.alpha)

    def inverse(self, y, e):
        return (torch.exp(y) - self.alpha).clamp_min(0.0)

    def log_abs_det_jacobian(self, x, e):
        return -torch.log(x + self.alpha).sum(1)

    def params(self):
        return {"alpha": self.alpha}


class Logit(Transform):
    """y = logit(α + (1 − 2α) x) for x in [0, 1]; α keeps 0 and 1 finite."""

    name = "logit"

    def __init__(self, alpha: float = 1e-6) -> None:
        self.alpha = float(alpha)

    def forward(self, x, e):
        u = self.alpha + (1 - 2 * self.alpha) * x
        return torch.log(u) - torch.log1p(-u)

    def inverse(self, y, e):
        # ONNX Runtime's float32 Sigmoid kernel is an approximation (~1e-6 relative, 1e-5 of a
        # shower after the logit's amplification); exported graphs spell it out with Exp instead
        s = 1 / (1 + torch.exp(-y)) if exporting() else torch.sigmoid(y)
        return ((s - self.alpha) / (1 - 2 * self.alpha)).clamp(0.0, 1.0)

    def log_abs_det_jacobian(self, x, e):
        u = self.alpha + (1 - 2 * self.alpha) * x
        return (math.log(1 - 2 * self.alpha) - torch.log(u) - torch.log1p(-u)).sum(1)

    def params(self):
        return {"alpha": self.alpha}


class Standardize(Transform):
    """y = (x − mean) / std per column, fitted on training data."""

    name = "standardize"

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float64)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float64)

    def fit(self, x, e):
        x = x.to(torch.float64)
        self.mean = x.mean(0)
        self.std = x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones(x.shape[1], dtype=torch.float64)
        return self

    def _ms(self, like: Tensor) -> tuple[Tensor, Tensor]:
        if self.mean is None:
            raise RuntimeError("Standardize used before fit()")
        return self.mean.to(like.device, like.dtype), self.std.to(like.device, like.dtype)

    def forward(self, x, e):
        m, s = self._ms(x)
        return (x - m) / s

    def inverse(self, y, e):
        m, s = self._ms(y)
        return y * s + m

    def log_abs_det_jacobian(self, x, e):
        _, s = self._ms(x)
        return (-torch.log(s).sum()).expand(len(x))

    def params(self):
        return {"mean": self.mean.tolist() if self.mean is not None else None,
                "std": self.std.tolist() if self.std is not None else None}


class LayerEnergyRatios(Transform):
    """Layer energies (N, L) ↔ CaloFlow's u-variables in [0, 1] (given E_inc).

    u₀ = E_tot / (s · E_inc) and u_i = E_{i−1} / Σ_{j≥i−1} E_j for i = 1 … L−1: the
    total response, then what each layer takes of what the deeper layers still hold.
    ``s`` (``max_response``) bounds u₀ ≤ 1 for calibrated files (E_tot/E_inc ≈ 1); a shower
    beyond it is encoded at u₀ = 1 (its total read as s · E_inc), never as a NaN.
    """

    name = "layer_energy_ratios"

    def __init__(self, max_response: float = 1.0, eps: float = 1e-12) -> None:
        self.max_response, self.eps = float(max_response), float(eps)

    def forward(self, x, e):
        x = x.clamp_min(0.0)
        remaining = torch.flip(torch.cumsum(torch.flip(x, [1]), 1), [1])  # Σ_{j≥i} E_j
        u0 = (remaining[:, :1] / (self.max_response * _col(e, x))).clamp_max(1.0)
        ratios = x[:, :-1] / remaining[:, :-1].clamp_min(self.eps)
        return torch.cat([u0, ratios], dim=1)

    def inverse(self, y, e):
        total = y[:, 0] * self.max_response * _col(e, y).reshape(-1)
        out, remaining = [], total
        for i in range(1, y.shape[1]):
            layer = y[:, i].clamp(0.0, 1.0) * remaining
            out.append(layer)
            remaining = (remaining - layer).clamp_min(0.0)
        out.append(remaining)
        return torch.stack(out, dim=1)

    def log_abs_det_jacobian(self, x, e):
        remaining = torch.flip(torch.cumsum(torch.flip(x, [1]), 1), [1])
        return -torch.log(self.max_response * _col(e, x).reshape(-1)) \
            - torch.log(remaining[:, :-1].clamp_min(self.eps)).sum(1)

    def params(self):
        return {"max_response": self.max_response, "eps": self.eps}


class RadialSplit(Transform):
    """Voxel fractions of r–α layers (N, V) ↔ (ring fractions, α fractions within each ring) (N, V + R).

    A layer of ``n_alpha × n_r`` voxels (α-major, the CaloChallenge order) becomes its n_r ring
    fractions (the radial profile, summing to one) followed by the n_alpha · n_r fractions
    of each ring's energy in its α bins; a voxel is their product.  The radial profile of the
    fine layers is what a classifier separates generated showers by (docs/benchmarks-log.md), so
    a generative model gets it as coordinates of their own instead of a sum over α.

    ``rings`` gives n_r per layer, 0 for a layer kept as it is (one radial or one α bin,
    Cartesian grids).  :meth:`inverse` normalises both levels, so any positive output decodes
    to fractions that sum to one per split layer.  The log-Jacobian is that of the free
    coordinates (a ring's total and n_alpha − 1 of its α fractions): −(n_alpha − 1) Σ log q_ring.

    >>> t = RadialSplit(layer_sizes=[6], rings=[3])  # 2 α × 3 r
    >>> f = torch.tensor([[0.1, 0.2, 0.1, 0.3, 0.2, 0.1]], dtype=torch.float64)
    >>> y = t.forward(f, None)
    >>> y[0, :3].tolist()  # ring fractions: α-bin 0 + α-bin 1 of each ring
    [0.4, 0.4, 0.2]
    >>> torch.allclose(t.inverse(y, None), f)
    True
    """

    name = "radial_split"

    def __init__(self, layer_sizes: Sequence[int], rings: Sequence[int], eps: float = 1e-12) -> None:
        self.layer_sizes, self.rings, self.eps = [int(n) for n in layer_sizes], [int(r) for r in rings], float(eps)
        if len(self.rings) != len(self.layer_sizes) or any(r and n % r for n, r in zip(self.layer_sizes, self.rings)):
            raise ValueError(f"rings {self.rings} do not divide the layer sizes {self.layer_sizes}")

    @property
    def added(self) -> int:
        """Columns added: one per ring of every split layer."""
        return sum(self.rings)

    def forward(self, x, e):
        out = []
        for part, size, n_r in zip(torch.split(x, self.layer_sizes, 1), self.layer_sizes, self.rings):
            if n_r:  # no len(x) in shapes: an exported graph keeps its batch dimension dynamic
                grid = part.reshape(-1, size // n_r, n_r)  # (N, n_alpha, n_r)
                ring = grid.sum(1)
                out += [ring, (grid / ring[:, None, :].clamp_min(self.eps)).reshape(-1, size)]
            else:
                out.append(part)
        return torch.cat(out, 1)

    def inverse(self, y, e):
        out = []
        widths = [size + n_r for size, n_r in zip(self.layer_sizes, self.rings)]  # forward's column blocks
        for part, size, n_r in zip(torch.split(y, widths, 1), self.layer_sizes, self.rings):
            if n_r:
                ring = part[:, :n_r].clamp_min(0.0)
                ring = ring / ring.sum(1, keepdim=True).clamp_min(self.eps)
                grid = part[:, n_r:].clamp_min(0.0).reshape(-1, size // n_r, n_r)
                grid = grid / grid.sum(1, keepdim=True).clamp_min(self.eps)
                out.append((grid * ring[:, None, :]).reshape(-1, size))
            else:
                out.append(part)
        return torch.cat(out, 1)

    def log_abs_det_jacobian(self, x, e):
        total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for part, size, n_r in zip(torch.split(x, self.layer_sizes, 1), self.layer_sizes, self.rings):
            if n_r:
                ring = part.reshape(-1, size // n_r, n_r).sum(1)
                total = total - (size // n_r - 1) * ring.clamp_min(self.eps).log().sum(1)
        return total

    def params(self):
        return {"layer_sizes": self.layer_sizes, "rings": self.rings, "eps": self.eps}


class Chain(Transform):
    """Transforms applied in order; the inverse runs them backwards."""

    name = "chain"

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def fit(self, x, e):
        for t in self.transforms:
            t.fit(x, e)
            x = t.forward(x, e)
        return self

    def forward(self, x, e):
        for t in self.transforms:
            x = t.forward(x, e)
        return x

    def inverse(self, y, e):
        for t in reversed(self.transforms):
            y = t.inverse(y, e)
        return y

    def log_abs_det_jacobian(self, x, e):
        total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for t in self.transforms:
            total = total + t.log_abs_det_jacobian(x, e)
            x = t.forward(x, e)
        return total

    def __repr__(self) -> str:
        return " → ".join(repr(t) for t in self.transforms) or "identity"


_TRANSFORMS: dict[str, type[Transform]] = {
    cls.name: cls for cls in (Transform, ScaleByEnergy, Log, Logit, Standardize, LayerEnergyRatios, RadialSplit)}


def transform_state(t: Transform) -> dict:
    """JSON-able description of a (fitted) transform."""
    if isinstance(t, Chain):
        return {"name": "chain", "transforms": [transform_state(s) for s in t.transforms]}
    return {"name": t.name, **t.params()}


def transform_from_state(state: Mapping) -> Transform:
    """Inverse of :func:`transform_state`; unknown names raise ValueError."""
    state = dict(state)
    name = state.pop("name")
    if name == "chain":
        return Chain([transform_from_state(s) for s in state["transforms"]])
    if name not in _TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}")
    return _TRANSFORMS[name](**state)


def split_layers(showers: Tensor, layer_sizes: Sequence[int], eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Showers (N, V) → (layer energies (N, L), voxel fractions within each layer (N, V)).

    Empty layers get zero fractions.

    >>> e, f = split_layers(torch.tensor([[1.0, 3.0, 2.0]]), [2, 1])
    >>> e.tolist(), f.tolist()
    ([[4.0, 2.0]], [[0.25, 0.75, 1.0]])
    """
    parts = torch.split(showers, list(layer_sizes), dim=1)
    energies = torch.stack([p.sum(1) for p in parts], dim=1)
    fractions = torch.cat([p / p.sum(1, keepdim=True).clamp_min(eps) for p in parts], dim=1)
    return energies, fractions


def merge_layers(layer_energy: Tensor, fractions: Tensor, layer_sizes: Sequence[int], eps: float = 1e-12) -> Tensor:
    """Inverse of :func:`split_layers`: fractions are clipped at 0 and renormalised per layer."""
    parts = torch.split(fractions.clamp_min(0.0), list(layer_sizes), dim=1)
    out = [p / p.sum(1, keepdim=True).clamp_min(eps) * layer_energy[:, i:i + 1] for i, p in enumerate(parts)]
    return torch.cat(out, dim=1)
