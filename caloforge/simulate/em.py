"""Electromagnetic showers: the Grindhammer–Peters (GFlash) parametrisation.

Reference: G. Grindhammer, S. Peters, *The parameterized simulation of electromagnetic
showers in homogeneous and sampling calorimeters*, hep-ex/0001020.  The numbers below
are the paper's (as also used by Geant4's ``GVFlashHomoShowerTuning`` and
``GFlashSamplingShowerTuning``).

Per shower (energy ``E``, material ``Z``, critical energy ``Ec``, ``y = E/Ec``):

* longitudinal profile ``dE/dt ∝ (βt)^(α-1) e^(-βt)`` in radiation lengths, with the
  shower maximum ``T = (α-1)/β``; ``ln T`` and ``ln α`` are drawn from a correlated
  2-d Gaussian (means, sigmas and correlation as functions of ``ln y``);
* radial profile ``f(r) = p·2rR_C²/(r²+R_C²)² + (1-p)·2rR_T²/(r²+R_T²)²`` in Molière
  radii, with core/tail radii and core weight depending on the relative depth
  ``τ = t/T`` and on ``E``;
* energy spots: ``N = 93 ln Z E^0.876`` (homogeneous) or ``10.3 ln Z E^0.959``
  (sampling), E in GeV.

Speed: the number of spots actually placed is capped (``cap``, then growing as √);
their depths are *stratified* (quantile ``(k + u)/M`` of the sampling profile), so
capping adds almost no longitudinal noise, and they are importance-sampled from a
slightly wider profile and heavier tail with weights ``f/g`` normalised per shower, so
the sparse edges of a shower get hits while its mean profile stays exact.  Sampling
fluctuations are applied later per voxel with the right variance
(:mod:`caloforge.simulate.deposit`).

>>> import numpy as np
>>> p = mean_parameters(np.array([1e3, 1e5]), Z=62.0, Ec=9.5)
>>> bool(np.all(np.diff(p.mean_ln_T) > 0))  # the maximum moves deeper with energy
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from .tuning import NEUTRAL, GFlashTuning

__all__ = ["Spots", "GFlashParameters", "mean_parameters", "sample_profiles", "n_spots", "em_spots",
           "radial_parameters", "gamma_quantile", "capped_spots", "spot_layout", "lorentz_radii"]

GOLDEN = 0.6180339887498949  # low-discrepancy pairing of depth and radius strata
WIDEN_DEPTH = 0.6  # importance sampling: proposal profile shape 1 + κ(α−1), same maximum
WIDEN_TAIL = 1.5  # … tail radius × 1.5
CORE_SHARE = 0.6  # … and the core drawn with 0.6 × its weight
MIN_SPOTS = 24  # spots placed even for the smallest shower
R_QUANTILE_MAX = 0.995  # the Lorentzian-like radial profiles are cut at √199 ≈ 14 R


@dataclass
class Spots:
    """Energy spots of a block of showers (flat, ragged over showers).

    ``depth`` is measured along the shower axis from the calorimeter entrance, in
    radiation lengths (``unit="X0"``) or interaction lengths (``unit="lambda"``);
    ``r`` is the distance from the axis in Molière radii (X0 spots) or in λ_I
    (λ spots); ``psi`` the azimuth around the axis; ``weight`` the deposited energy [MeV].
    """

    shower: np.ndarray
    depth: np.ndarray
    r: np.ndarray
    psi: np.ndarray
    weight: np.ndarray
    unit: str = "X0"

    def __len__(self) -> int:
        return len(self.shower)


@dataclass
class GFlashParameters:
    """Means, sigmas and correlation of (ln T, ln α) per shower."""

    mean_ln_T: np.ndarray
    sigma_ln_T: np.ndarray
    mean_ln_alpha: np.ndarray
    sigma_ln_alpha: np.ndarray
    rho: np.ndarray


def _ln_y(energy: np.ndarray, Ec: float) -> np.ndarray:
    # below y ≈ 3 the parametrisation is undefined (ln(ln y - 0.812)); such tiny
    # showers (sub-20 MeV) are a few spots anyway
    return np.log(np.maximum(np.asarray(energy, dtype=float) / Ec, np.exp(1.2)))


def mean_parameters(energy: np.ndarray, Z: float, Ec: float, sampling: bool = False,
                    tuning: GFlashTuning = NEUTRAL) -> GFlashParameters:
    """GFlash means/sigmas/correlation of ln T and ln α for energies [MeV] (``tuning``:
    the material's fitted shifts of the two means, :mod:`caloforge.simulate.tuning`)."""
    ly = _ln_y(energy, Ec)
    mean_ln_T = np.log(ly - 0.812) + tuning.ln_T_shift
    mean_ln_alpha = np.log(0.81 + (0.458 + 2.26 / Z) * ly) + tuning.ln_alpha_shift
    if sampling:  # sampling-calorimeter fluctuations (hep-ex/0001020, sec. 4)
        den_T, den_a, rho = -2.5 + 1.25 * ly, -0.82 + 0.79 * ly, 0.784 - 0.023 * ly
    else:
        den_T, den_a, rho = -1.4 + 1.26 * ly, -0.58 + 0.86 * ly, 0.705 - 0.023 * ly
    # the 1/(a + b ln y) sigmas diverge at small y: cap them at 0.6
    sigma_ln_T = 1.0 / np.maximum(den_T, 1.0 / 0.6)
    sigma_ln_alpha = 1.0 / np.maximum(den_a, 1.0 / 0.6)
    return GFlashParameters(mean_ln_T, sigma_ln_T, mean_ln_alpha, sigma_ln_alpha, np.clip(rho, -0.99, 0.99))


def sample_profiles(rng: np.random.Generator, energy: np.ndarray, Z: float, Ec: float, sampling: bool = False,
                    tuning: GFlashTuning = NEUTRAL):
    """Draw each shower's (α, β [1/X0], ⟨α⟩) with the correlated GFlash fluctuations."""
    p = mean_parameters(energy, Z, Ec, sampling, tuning)
    n = len(p.mean_ln_T)
    g1, g2 = rng.standard_normal(n), rng.standard_normal(n)
    c1, c2 = np.sqrt((1 + p.rho) / 2), np.sqrt((1 - p.rho) / 2)
    T = np.exp(p.mean_ln_T + p.sigma_ln_T * (c1 * g1 + c2 * g2))
    alpha = np.exp(p.mean_ln_alpha + p.sigma_ln_alpha * (c1 * g1 - c2 * g2))
    alpha = np.maximum(alpha, 1.05)  # a profile needs α > 1 to have a maximum
    beta = (alpha - 1.0) / np.maximum(T, 0.05)
    return alpha, beta, np.exp(p.mean_ln_alpha)


def n_spots(energy: np.ndarray, Z: float, sampling: bool = False) -> np.ndarray:
    """Physical number of GFlash energy spots for showers of ``energy`` [MeV]."""
    e_gev = np.asarray(energy, dtype=float) / 1e3
    if sampling:
        return 10.3 * np.log(Z) * e_gev**0.959
    return 93.0 * np.log(Z) * e_gev**0.876


def radial_parameters(energy: np.ndarray, tau: np.ndarray, Z: float):
    """Core radius, tail radius [Molière radii] and core weight at relative depth τ."""
    ln_e = np.log(np.maximum(energy, 1.0) / 1e3)
    r_core = 0.0251 + 0.00319 * ln_e + (0.1162 - 0.000381 * Z) * tau
    k1, k2, k3, k4 = 0.659 - 0.00309 * Z, 0.645, -2.59, 0.3585 + 0.0412 * ln_e
    r_tail = k1 * (np.exp(k3 * (tau - k2)) + np.exp(k4 * (tau - k2)))
    p1, p2, p3 = 2.632 - 0.00094 * Z, 0.401 + 0.00187 * Z, 1.313 - 0.0686 * ln_e
    x = (p2 - tau) / p3
    p_core = np.clip(p1 * np.exp(x - np.exp(x)), 0.0, 1.0)
    return np.maximum(r_core, 1e-3), np.maximum(r_tail, 1e-3), p_core


def gamma_quantile(alpha: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Wilson–Hilferty approximation of the Gamma(α, 1) quantile at ``u`` (fast, vectorised)."""
    c = 1.0 / (9.0 * alpha)
    return alpha * np.maximum(1.0 - c + ndtri(u) * np.sqrt(c), 0.0) ** 3


def capped_spots(n_physical: np.ndarray, min_spots: int, cap: int) -> np.ndarray:
    """Spots actually placed: the physical number up to ``cap``, then growing only as
    ``cap·(N/cap)^½`` (keeps hit occupancy rising with energy at a bounded cost).

    >>> capped_spots(np.array([10.0, 500.0, 16000.0]), 24, 1000).tolist()
    [24, 500, 4000]
    """
    n = np.maximum(np.asarray(n_physical, dtype=float), min_spots)
    over = n > cap
    n[over] = cap * (n[over] / cap) ** 0.5
    return np.round(n).astype(np.int64)


def ragged_index(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For per-shower counts → (owner shower of each item, index of the item within its shower)."""
    counts = np.asarray(counts, dtype=np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(len(owner)) - starts[owner]


def spot_layout(n_physical: np.ndarray, energy: np.ndarray, min_spots: int, cap: int):
    """Spots placed per shower (none for zero energy), then (counts, owner, index within shower)."""
    m = capped_spots(n_physical, min_spots, cap)
    m[np.asarray(energy) <= 0] = 0
    return (m, *ragged_index(m))


def lorentz_radii(radius: np.ndarray, k: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Radii from ``2rR²/(r²+R²)²`` (inverse CDF ``R·√(u/(1−u))``) at low-discrepancy
    quantiles ``u = (k·golden + shift) mod 1`` of the ``k``-th spot of a shower.

    >>> lorentz_radii(np.array([2.0, 2.0]), np.array([0, 0]), np.array([0.5, 0.8])).tolist()  # median: R
    [2.0, 4.0]
    """
    u = np.clip(np.mod(k * GOLDEN + shift, 1.0), 0.0, R_QUANTILE_MAX)
    return radius * np.sqrt(u / (1.0 - u))


def em_spots(
    rng: np.random.Generator,
    energy: np.ndarray,
    t_start: np.ndarray,
    Z: float,
    Ec: float,
    sampling: bool,
    cap: int,
    min_spots: int = MIN_SPOTS,
    shower_index: np.ndarray | None = None,
    tuning: GFlashTuning = NEUTRAL,
) -> Spots:
    """Spots of EM showers of ``energy`` [MeV] starting at depth ``t_start`` [X0 along the axis].

    Showers with zero energy get no spots.  ``shower_index`` maps the showers to rows
    of the output block (default: ``arange``).  ``tuning``: the material's corrections
    (depth, shape, radii, spot count); ``cap`` is taken as already scaled by its spot_scale.
    """
    energy = np.asarray(energy, dtype=float)
    n = len(energy)
    if shower_index is None:
        shower_index = np.arange(n)
    alpha, beta, mean_alpha = sample_profiles(rng, energy, Z, Ec, sampling, tuning)
    m, owner, k = spot_layout(n_spots(energy, Z, sampling) * tuning.spot_factor(energy), energy, min_spots, cap)
    shift = rng.random(n)  # per-shower offset of the low-discrepancy radius quantiles
    u_t = (k + rng.random(len(owner))) / m[owner]  # stratified depth quantiles
    # Importance sampling: spots are drawn from a wider profile (shape 1 + κ(α−1), same
    # maximum) and a heavier radial tail, and carry weights f/g normalised per shower,
    # so the early/late layers and the halo get hits while the mean profile is exact.
    a, b = alpha[owner], beta[owner]
    a_q = 1.0 + (a - 1.0) * WIDEN_DEPTH
    x = gamma_quantile(a_q, np.clip(u_t, 1e-9, 1 - 1e-9))
    t = x / (WIDEN_DEPTH * b)
    # log f/g up to per-shower constants (they cancel in the normalisation), shifted
    # by its maximum (at βt = α − 1) so that exp() never overflows
    c = a - a_q
    log_ratio = c * np.log(np.maximum(t * b, 1e-12)) - (1.0 - WIDEN_DEPTH) * b * t
    log_ratio -= c * (np.log(a - 1.0) - 1.0)
    depth = t_start[owner] + t
    # relative depth τ = t/T (Geant4 form: via the centre of gravity α/β)
    ma = mean_alpha[owner]
    tau = t * b / a * ma / (ma - 1.0)
    r_core, r_tail, p_core = radial_parameters(energy[owner], tau, Z)
    r_core, r_tail = r_core * tuning.r_core_scale, r_tail * tuning.r_tail_scale
    q_core = CORE_SHARE * p_core
    r_tail_q = r_tail * WIDEN_TAIL
    radius = np.where(rng.random(len(owner)) < q_core, r_core, r_tail_q)
    r = lorentz_radii(radius, k, shift[owner])
    r2 = r * r
    lorentz = lambda R: R * R / (r2 + R * R) ** 2  # noqa: E731  (2r/π factors cancel)
    ratio = (p_core * lorentz(r_core) + (1 - p_core) * lorentz(r_tail)) / (
        q_core * lorentz(r_core) + (1 - q_core) * lorentz(r_tail_q))
    ratio *= np.exp(log_ratio)
    norm = np.bincount(owner, weights=ratio, minlength=n)
    psi = rng.uniform(-np.pi, np.pi, len(owner))
    weight = energy[owner] * ratio / np.where(norm > 0, norm, 1.0)[owner]
    return Spots(shower_index[owner], depth, r, psi, weight, "X0")
