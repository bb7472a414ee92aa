"""Cartesian-grid pieces shared by the 3D-convolutional families (``gan3d``, ``bibae``) on Cartesian grids.

A highly granular Si-W calorimeter (``clic``, ``clic-angled``, ``ild``, ``ild-angled``)
is a stack of ``Z`` layers of ``Y × X`` cells; a flat shower vector (layer after layer,
row-major inside a layer) is the image ``(Z, Y, X)``.  This module gives that shape,
the cell coordinates, the MIP scale of each layer, and the differentiable shower
observables the families' losses use (the incident angle measured from the shower's
per-layer centroids, soft cell-energy histograms, kernel MMDs).

>>> from caloforge.geometry import load_geometry
>>> grid_shape(load_geometry("clic-angled")), grid_shape(load_geometry("ild-angled"))
((25, 51, 51), (30, 60, 30))
>>> import torch
>>> g = load_geometry("clic")
>>> c = GridCoordinates.from_geometry(g)
>>> img = torch.zeros(1, 25, 25, 25)
>>> for z in range(25): img[0, z, 12, z] = 1.0   # one 5 mm cell towards +x per 5 mm layer: cot θ = 1
>>> round(math.degrees(float(measured_theta(img, c, phi=0.0)[0])), 1)
45.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from caloforge.errors import ConfigError

__all__ = ["grid_shape", "generation_chunk", "GridCoordinates", "mip_per_layer", "measured_theta", "soft_histogram",
           "gaussian_mmd", "sorted_kernel_mmd", "to_image", "to_flat"]


def grid_shape(geometry, source: str = "config") -> tuple[int, int, int]:
    """(Z, Y, X) of a geometry whose layers are all Cartesian grids of the same size."""
    layers = [layer for layer in geometry.layers if layer.n_voxels]
    shapes = {(layer.kind, layer.ny, layer.nx) for layer in layers}
    if len(shapes) != 1 or next(iter(shapes))[0] != "cartesian":
        raise ConfigError(f"{source}: model.geometry {geometry.name!r} is not a regular Cartesian grid "
                          "(3D-convolutional families need every layer to be the same ny × nx grid)")
    _, ny, nx = next(iter(shapes))
    return len(layers), ny, nx


def generation_chunk(n_voxels: int, channels: int, budget_bytes: float = 2**29) -> int:
    """Showers decoded at once so that one float32 activation map of ``channels`` stays within
    ``budget_bytes`` (512 MiB): generation of any number of showers runs in bounded memory.

    >>> generation_chunk(54_000, 32)
    77
    """
    return max(1, int(budget_bytes // (4 * n_voxels * max(channels, 1))))


def to_image(flat: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """(N, V) → (N, 1, Z, Y, X)."""
    return flat.reshape(-1, 1, *shape)


def to_flat(image: Tensor) -> Tensor:
    """(N, 1, Z, Y, X) or (N, Z, Y, X) → (N, V)."""
    return image.flatten(1)  # not reshape(len(image), -1): a traced graph must keep the batch dynamic


@dataclass(frozen=True)
class GridCoordinates:
    """Cell centres of a regular grid [mm]: ``z`` (Z,), ``y`` (Y,), ``x`` (X,)."""

    z: tuple[float, ...]
    y: tuple[float, ...]
    x: tuple[float, ...]

    @classmethod
    def from_geometry(cls, geometry) -> "GridCoordinates":
        layers = [layer for layer in geometry.layers if layer.n_voxels]
        first = layers[0]
        x = (np.arange(first.nx) - 0.5 * (first.nx - 1)) * first.cell_x
        y = (np.arange(first.ny) - 0.5 * (first.ny - 1)) * first.cell_y
        return cls(tuple(layer.z_center for layer in layers), tuple(y.tolist()), tuple(x.tolist()))

    def tensors(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        kw = dict(dtype=like.dtype, device=like.device)
        return torch.tensor(self.z, **kw), torch.tensor(self.y, **kw), torch.tensor(self.x, **kw)


def mip_per_layer(geometry) -> np.ndarray:
    """Visible energy [MeV] of a minimum-ionising particle crossing each readout layer at normal
    incidence: sampling fraction × E_c × (thickness / X0) (Rossi: a MIP loses ≈ E_c per X0)."""
    return np.array([layer.sampling_fraction * layer.material.critical_energy * layer.thickness / layer.material.X0
                     for layer in geometry.layers if layer.n_voxels])


def measured_theta(image: Tensor, coords: GridCoordinates, phi: float = 0.0, eps: float = 1e-12) -> Tensor:
    """Polar angle [rad] of the shower axis from its per-layer centroids (differentiable).

    The energy-weighted centroid of each layer along the tilt direction ``(cos φ, sin φ)``
    is fitted by a weighted straight line in depth; its slope is cot θ (θ = 90°:
    perpendicular).  3DGAN's angle loss measures the angle the same way (per-layer
    barycentres around the shower's barycentre).  ``image``: (N, Z, Y, X) or (N, 1, Z, Y, X),
    physical energies.
    """
    img = image.reshape(len(image), *image.shape[-3:])
    z, y, x = coords.tensors(img)
    layer = img.sum(dim=(2, 3))  # (N, Z)
    cx = (img.sum(2) * x).sum(2) / layer.clamp_min(eps)
    cy = (img.sum(3) * y).sum(2) / layer.clamp_min(eps)
    t = cx * math.cos(phi) + cy * math.sin(phi)
    w = layer / layer.sum(1, keepdim=True).clamp_min(eps)
    zbar = (w * z).sum(1, keepdim=True)
    tbar = (w * t).sum(1, keepdim=True)
    slope = (w * (z - zbar) * (t - tbar)).sum(1) / ((w * (z - zbar) ** 2).sum(1) + eps)
    return torch.atan2(torch.ones_like(slope), slope)


def soft_histogram(values: Tensor, edges: Tensor, temperature: float = 0.1) -> Tensor:
    """Differentiable counts per shower of ``values`` (N, V) in bins ``edges`` (B+1,): sigmoid bin walls
    of width ``temperature`` (same units as the values).  (N, B)."""
    v = values.unsqueeze(-1)
    walls = torch.sigmoid((v - edges) / temperature)  # (N, V, B+1)
    return (walls[..., :-1] - walls[..., 1:]).sum(1)


def gaussian_mmd(a: Tensor, b: Tensor, alphas: tuple[float, ...] = (1.0, 0.01)) -> Tensor:
    """Biased MMD² between samples ``a`` (N, D) and ``b`` (M, D), sum of Gaussian kernels exp(−α‖·‖²)."""
    aa, bb, ab = torch.cdist(a, a) ** 2, torch.cdist(b, b) ** 2, torch.cdist(a, b) ** 2
    out = a.new_zeros(())
    for alpha in alphas:
        out = out + torch.exp(-alpha * aa).mean() + torch.exp(-alpha * bb).mean() - 2 * torch.exp(-alpha * ab).mean()
    return out


def sorted_kernel_mmd(fake: Tensor, real: Tensor, kernel_size: int = 100, stride: int = 100, cutoff: int = 2000,
                      alpha: float = 200.0) -> Tensor:
    """The BIB-AE "sorted kernel" hit MMD: each shower's cells sorted by energy (descending), then a
    Gaussian-kernel MMD between the fake and real values inside windows of ``kernel_size`` ranks
    (every ``stride`` ranks up to ``cutoff``), averaged.  It pulls the spectrum of the brightest
    cells into shape, and the MIP peak with it, without a pixel-wise loss."""
    f = torch.sort(fake.reshape(len(fake), -1), dim=1, descending=True).values
    r = torch.sort(real.reshape(len(real), -1), dim=1, descending=True).values
    total, n = fake.new_zeros(()), 0
    for j in range(0, min(cutoff, f.shape[1]), stride):
        fx, rx = f[:, j:j + kernel_size, None], r[:, j:j + kernel_size, None]  # (N, K, 1)
        kff = torch.exp(-alpha * torch.cdist(fx, fx) ** 2).mean((1, 2))
        krr = torch.exp(-alpha * torch.cdist(rx, rx) ** 2).mean((1, 2))
        kfr = torch.exp(-alpha * torch.cdist(fx, rx) ** 2).mean((1, 2))
        total = total + (kff + krr - 2 * kfr).mean()
        n += 1
    return total / max(n, 1)
