"""From energy spots to voxel energies: the material stack, tilted axes, sampling.

The geometry is turned into a :class:`Stack` of depth segments (dead material
upstream, readout layers, and the gaps between layers), each with its own radiation
length, interaction length and Molière radius.  Shower models work in X0 or λ_I along
the shower axis; the stack converts those depths into a segment and a position, so
showers cross layers of different materials correctly.  Energy beyond the last layer
(back leakage), outside the readout (side leakage) or in dead material is lost.

Incident direction: ``theta`` is the polar angle of the particle with respect to the
axis that runs *along* the layers (detector convention: ``θ = 90°`` is perpendicular
incidence), ``phi`` the azimuth of the tilt in the layer plane (0 → the axis leans
towards +x).  The tilt with respect to the layer normal is ``|90° − θ|`` and the axis
moves by ``Δz · cot θ`` per depth ``Δz``.  ``impact`` is where the axis crosses the
front face of the first layer.

Visible energy: each voxel's deposit ``E_v`` becomes ``f · Gamma(k = E_v / (a²·1 GeV),
scale = a²·1 GeV)`` with the layer's sampling fraction ``f`` and stochastic term ``a``,
so the mean is ``f·E_v`` and the summed variance reproduces ``σ/E = a/√E``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caloforge.geometry import Geometry, Material

from .em import Spots
from .tuning import GFlashTuning, load_tuning

__all__ = ["Stack", "GAP_DENSITY", "VISIBLE_THRESHOLD", "READOUT_THRESHOLD", "deposit", "visible", "suppress", "mip_spots"]

# The gaps between readout layers (cryostat walls, services) are modelled as the
# preceding layer's material at this fraction of its density.
GAP_DENSITY = 0.25
# zero suppression of the readout [MeV visible]: 1 keV
VISIBLE_THRESHOLD = 1e-3
# readouts with their own published threshold [MeV visible]: the CaloChallenge Si-W files
# (DS2/DS3) zero-suppress below 0.5 keV in the silicon
READOUT_THRESHOLD = {"ds2": 0.5e-3, "ds3": 0.5e-3}


@dataclass(frozen=True)
class Stack:
    """Depth segments of a geometry, in order along the normal axis ``z`` [mm]."""

    geometry: Geometry
    z_front: np.ndarray  # (S,) mm
    thickness: np.ndarray  # (S,) mm
    X0: np.ndarray  # (S,) mm, effective (gaps diluted)
    lambda_I: np.ndarray
    moliere: np.ndarray
    critical: np.ndarray
    layer: np.ndarray  # (S,) position in geometry.layers, -1 for dead material
    cum_X0: np.ndarray  # (S+1,) depth at each segment front in X0 (normal incidence)
    cum_lambda: np.ndarray
    main: Material  # the material that dominates the EM shower (sets Z, Ec)
    sampling: bool  # GFlash sampling-calorimeter fluctuations
    voxel_fraction: np.ndarray  # (n_voxels,) sampling fraction of each voxel's layer
    voxel_term: np.ndarray  # (n_voxels,) stochastic term [√GeV] of each voxel's layer
    threshold: float = VISIBLE_THRESHOLD  # readout zero suppression [MeV visible]
    tuning: GFlashTuning = GFlashTuning()  # the main material's fitted corrections

    @classmethod
    def build(cls, geometry: Geometry, tuning: dict[str, GFlashTuning] | None = None) -> "Stack":
        """``tuning``: material name → corrections (default: the table fitted to Geant4,
        :mod:`caloforge.simulate.tuning`); a material not in it keeps the published GFlash."""
        table = load_tuning() if tuning is None else tuning
        tune = lambda m: table.get(m.name, GFlashTuning())  # noqa: E731
        segs: list[tuple[float, float, Material, float, int]] = []  # z, thick, material, density, layer
        thick_layers = [(i, L) for i, L in enumerate(geometry.layers) if L.thickness > 0]
        first = thick_layers[0][1]
        if geometry.upstream_X0 > 0:
            t = geometry.upstream_X0 * first.material.X0
            segs.append((first.z_front - t, t, first.material, 1.0, -1))
        z = first.z_front
        for i, L in thick_layers:
            if L.z_front > z + 1e-9 and segs:
                segs.append((z, L.z_front - z, segs[-1][2], GAP_DENSITY, -1))
            segs.append((L.z_front, L.thickness, L.material, 1.0, i))
            z = L.z_front + L.thickness
        zf = np.array([s[0] for s in segs])
        th = np.array([s[1] for s in segs])
        dens = np.array([s[3] for s in segs])
        mats = [s[2] for s in segs]
        X0 = np.array([m.X0 for m in mats]) / dens
        lam = np.array([m.lambda_I for m in mats]) / dens
        # the EM parametrisation uses the material holding most radiation lengths
        x0_by_mat: dict[str, float] = {}
        for L in geometry.layers:
            x0_by_mat[L.material.name] = x0_by_mat.get(L.material.name, 0.0) + L.thickness / L.material.X0
        main_name = max(x0_by_mat, key=x0_by_mat.get)
        main = next(L.material for L in geometry.layers if L.material.name == main_name)
        sampling = any(L.sampling_term > 0 for L in geometry.layers if L.material.name == main_name)
        return cls(
            geometry=geometry,
            z_front=zf,
            thickness=th,
            X0=X0,
            lambda_I=lam,
            moliere=np.array([m.moliere_radius for m in mats]) / dens,
            critical=np.array([m.critical_energy for m in mats]),
            layer=np.array([s[4] for s in segs], dtype=np.int64),
            cum_X0=np.concatenate([[0.0], np.cumsum(th / X0)]),
            cum_lambda=np.concatenate([[0.0], np.cumsum(th / lam)]),
            main=main,
            sampling=sampling,
            voxel_fraction=np.array([L.sampling_fraction * tune(L.material).sampling_fraction_scale
                                     for L in geometry.layers])[geometry.voxel_layer],
            voxel_term=np.array([L.sampling_term * tune(L.material).sampling_term_scale
                                 for L in geometry.layers])[geometry.voxel_layer],
            threshold=READOUT_THRESHOLD.get(geometry.name, VISIBLE_THRESHOLD),
            tuning=tune(main),
        )

    @property
    def z_entrance(self) -> float:
        """z of the first readout layer's front face (where ``impact`` is given)."""
        return float(self.z_front[np.argmax(self.layer >= 0)])

    def cum(self, unit: str) -> np.ndarray:
        return self.cum_X0 if unit == "X0" else self.cum_lambda

    def length(self, unit: str) -> np.ndarray:
        return self.X0 if unit == "X0" else self.lambda_I

    def _segment(self, depth_normal: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray]:
        """(segment holding the depth, or -1 outside; that index clipped into the stack,
        so the outer segments extrapolate) for a normal-incidence depth in ``unit``."""
        seg = np.searchsorted(self.cum(unit), depth_normal, side="right") - 1
        inside = (seg >= 0) & (seg < len(self.z_front))
        return np.where(inside, seg, -1), np.clip(seg, 0, len(self.z_front) - 1)

    def locate_depth(self, depth_normal: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray]:
        """Normal-incidence depth (X0 or λ) → (segment index or -1 beyond the back, z [mm])."""
        seg, s = self._segment(depth_normal, unit)
        return seg, self.z_front[s] + (depth_normal - self.cum(unit)[s]) * self.length(unit)[s]

    def convert(self, depth_normal: np.ndarray, src: str, dst: str) -> np.ndarray:
        """Convert a normal-incidence depth between X0 and λ units (beyond the back: extrapolated)."""
        _, s = self._segment(depth_normal, src)
        return self.cum(dst)[s] + (depth_normal - self.cum(src)[s]) * self.length(src)[s] / self.length(dst)[s]


def deposit(
    stack: Stack,
    spots: Spots,
    n_showers: int,
    cos_tilt: np.ndarray,
    slope: tuple[np.ndarray, np.ndarray],
    impact: tuple[np.ndarray, np.ndarray],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Add spot energies into ``out`` (n_showers, n_voxels) [deposited MeV, before sampling].

    ``cos_tilt``: cosine of the angle between the axis and the layer normal, per shower;
    ``slope``: (dx/dz, dy/dz) of the axis; ``impact``: (x, y) at the entrance face.
    """
    geo = stack.geometry
    if out is None:
        out = np.zeros((n_showers, geo.n_voxels))
    if len(spots) == 0:
        return out
    sh = spots.shower
    c = cos_tilt[sh]
    seg, z = stack.locate_depth(spots.depth * c, spots.unit)
    keep = seg >= 0
    keep &= stack.layer[np.where(keep, seg, 0)] >= 0
    if not np.any(keep):
        return out
    sh, seg, z, c = sh[keep], seg[keep], z[keep], c[keep]
    r = spots.r[keep] * (stack.moliere if spots.unit == "X0" else stack.lambda_I)[seg]
    psi = spots.psi[keep]
    w = spots.weight[keep]
    dz = z - stack.z_entrance
    x_axis = impact[0][sh] + dz * slope[0][sh]
    y_axis = impact[1][sh] + dz * slope[1][sh]
    # offset in the plane ⟂ axis, projected onto the layer along the axis: the
    # component along the tilt direction (unit vector u, per shower) is stretched by 1/cos(tilt)
    a = r * np.cos(psi) / c
    b = r * np.sin(psi)
    tilt_norm = np.hypot(slope[0], slope[1])
    has_tilt = tilt_norm > 0
    ux = np.where(has_tilt, slope[0] / np.where(has_tilt, tilt_norm, 1.0), 1.0)[sh]
    uy = np.where(has_tilt, slope[1] / np.where(has_tilt, tilt_norm, 1.0), 0.0)[sh]
    x = x_axis + a * ux - b * uy
    y = y_axis + a * uy + b * ux
    # group the spots by layer (a stable sort keeps their order, hence the summation order)
    layer_of = stack.layer[seg]
    order = np.argsort(layer_of, kind="stable")
    n_vox = geo.n_voxels
    idx_parts, w_parts = [], []
    for group in np.split(order, np.flatnonzero(np.diff(layer_of[order])) + 1):
        li = layer_of[group[0]]
        L = geo.layers[li]
        if L.n_voxels == 0:
            continue
        local = L.locate(x[group], y[group])
        hit = local >= 0
        idx_parts.append(sh[group][hit] * n_vox + geo.layer_slices[li].start + local[hit])
        w_parts.append(w[group][hit])
    if idx_parts:
        flat = out.reshape(-1)
        flat += np.bincount(np.concatenate(idx_parts), weights=np.concatenate(w_parts), minlength=flat.size)
    return out


def visible(rng: np.random.Generator, stack: Stack, deposited: np.ndarray, stochastic_scale: float = 1.0,
            threshold: float = VISIBLE_THRESHOLD) -> np.ndarray:
    """Deposited → visible energy: sampling fraction and per-voxel sampling fluctuations.

    ``threshold`` [MeV visible] is the readout's zero suppression; pass 0 for one
    component of a voxel's signal and apply the threshold to the sum (:func:`suppress`).
    """
    out = np.zeros_like(deposited)
    rows, cols = np.nonzero(deposited > 0)
    e = deposited[rows, cols]
    var_unit = (stack.voxel_term[cols] * stochastic_scale) ** 2 * 1e3  # MeV: variance = a² · E[GeV] · (1 GeV)²
    smear = var_unit > 0
    vis = e.copy()
    if np.any(smear):
        vis[smear] = rng.gamma(e[smear] / var_unit[smear], var_unit[smear])
    vis *= stack.voxel_fraction[cols]
    vis[vis < threshold] = 0.0  # zero suppression (on the hit voxels only: the rest are 0 already)
    out[rows, cols] = vis
    return out


def suppress(showers: np.ndarray, threshold: float = VISIBLE_THRESHOLD) -> np.ndarray:
    """Zero suppression, in place: a voxel whose visible signal is below ``threshold`` reads zero."""
    showers[showers < threshold] = 0.0
    return showers


def mip_spots(stack: Stack, length_lambda: np.ndarray, cos_tilt: np.ndarray, energy: np.ndarray) -> Spots:
    """A minimum-ionising track on the axis from the entrance to ``length_lambda`` (λ along the axis).

    The energy loss per radiation length of a MIP is about the critical energy (Rossi's
    definition of Ec), so each segment receives ``Ec · (X0 crossed)``, until the
    particle's ``energy`` is used up (it ranges out); the deposit is placed at the
    middle of the crossed part of the segment.
    """
    n = len(length_lambda)
    S = len(stack.z_front)
    end = (length_lambda * cos_tilt)[:, None]  # normal λ depth of the track end
    lo = stack.cum_lambda[None, :-1]
    hi = stack.cum_lambda[None, 1:]
    cross = np.clip(np.minimum(end, hi) - lo, 0.0, None)  # λ crossed per segment (normal)
    x0_crossed = cross * (stack.lambda_I / stack.X0)[None, :] / cos_tilt[:, None]
    loss = np.minimum(np.cumsum(x0_crossed * stack.critical[None, :], axis=1), np.asarray(energy)[:, None])
    dep = np.diff(loss, axis=1, prepend=0.0).ravel()  # per (shower, segment)
    mid_lambda = lo + 0.5 * cross
    mid_x0 = stack.convert(mid_lambda.ravel(), "lambda", "X0").reshape(n, S) / cos_tilt[:, None]
    sh = np.repeat(np.arange(n), S)
    keep = dep > 0
    return Spots(sh[keep], mid_x0.ravel()[keep], np.zeros(keep.sum()), np.zeros(keep.sum()), dep[keep], "X0")
