"""Hadronic (π±) showers: first interaction, EM fraction, hadronic profile, invisible energy.

Model per event (energies in MeV, depths along the shower axis):

1. the pion travels an exponential distance (mean 1 λ_I) before its first inelastic
   interaction, depositing like a MIP on its way (:func:`~caloforge.simulate.deposit.mip_spots`);
   beyond the back of the calorimeter it simply punches through;
2. the remaining energy splits into an electromagnetic part (π⁰ → γγ) with fraction
   ``f_em``, mean ``1 − (E/E0)^(k−1)`` (Groom's power law, E0 = 1 GeV, k = 0.816)
   and wide event-by-event fluctuations (Beta distributed, absolute width growing
   slowly with energy), which showers with the GFlash EM model as a few π⁰ showers
   starting at and after the interaction point (:func:`pi0_showers`); and a hadronic part;
3. the hadronic part deposits only ``1/(e/h)`` of its energy on average (nuclear
   binding, neutrons: non-compensation, e/h ≈ 1.35), with its own fluctuation, and
   develops with the Bock et al. longitudinal profile (Gamma in λ_I:
   ``a = 0.6165 + 0.3183 ln E``, ``d = 0.9099 − 0.0237 ln E``, E in GeV), whose shape
   varies event by event; its lateral profile is a core + halo of λ_I-scale radii that
   widen with depth.

Its sampling fluctuations are larger than for EM showers (``HADRONIC_SAMPLING_SCALE``).

>>> import numpy as np
>>> f = em_fraction_mean(np.array([1e4, 1e5, 1e6]))
>>> bool(np.all(np.diff(f) > 0) and 0.3 < f[0] < 0.4)
True
"""

from __future__ import annotations

import numpy as np

from .em import MIN_SPOTS, Spots, lorentz_radii, ragged_index, spot_layout

__all__ = ["E_OVER_H", "HADRONIC_SAMPLING_SCALE", "em_fraction_mean", "sample_em_fraction",
           "sample_hadronic_visible", "sample_interaction_depth", "pi0_showers", "hadronic_spots"]

E0_MEV = 1000.0
K_EXP = 0.816
E_OVER_H = 1.35
HADRONIC_SAMPLING_SCALE = 2.0  # hadronic sampling fluctuations ≈ 2× the EM ones (Wigmans)
MAX_PI0 = 6  # π⁰ showers per event


def em_fraction_mean(energy: np.ndarray) -> np.ndarray:
    """Mean EM fraction of a pion shower, ``1 − (E/E0)^(k−1)``, floored at 2 %."""
    e = np.maximum(np.asarray(energy, dtype=float), E0_MEV)
    return np.maximum(1.0 - (e / E0_MEV) ** (K_EXP - 1.0), 0.02)


def sample_em_fraction(rng: np.random.Generator, energy: np.ndarray) -> np.ndarray:
    """Per-event EM fraction: Beta with the mean above and σ = 0.10 + 0.012 ln(E/GeV)."""
    mu = em_fraction_mean(energy)
    sigma = 0.10 + 0.012 * np.log(np.maximum(energy, E0_MEV) / 1e3)
    sigma = np.minimum(sigma, 0.8 * np.sqrt(mu * (1 - mu)))
    nu = mu * (1 - mu) / sigma**2 - 1.0
    return rng.beta(mu * nu, (1 - mu) * nu)


def sample_hadronic_visible(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-event visible share of the hadronic energy: ``1/(e/h)`` with an 8 % Gaussian
    spread (nuclear binding losses fluctuate), kept within [0.3, 1]."""
    return np.clip((1.0 / E_OVER_H) * (1.0 + 0.08 * rng.standard_normal(n)), 0.3, 1.0)


def sample_interaction_depth(rng: np.random.Generator, n: int) -> np.ndarray:
    """Distance to the first inelastic interaction, in λ_I along the axis."""
    return rng.exponential(1.0, n)


def pi0_showers(rng: np.random.Generator, em_energy: np.ndarray, s_int: np.ndarray):
    """Split each event's EM energy into π⁰ showers: ``1 + Poisson(0.5 ln(E_em/GeV))`` of
    them (at most 6), sharing the energy with flat Dirichlet fractions; the first starts
    at the interaction point, the others after an extra Exp(0.3 λ_I) (π⁰s from later
    interactions).  Returns (event index, energy [MeV], start depth [λ_I]) per shower."""
    em_energy = np.asarray(em_energy, dtype=float)
    n = len(em_energy)
    mean_extra = 0.5 * np.log(np.maximum(em_energy, 1e3) / 1e3)
    k = np.minimum(1 + rng.poisson(mean_extra), MAX_PI0)
    owner, j = ragged_index(k)
    share = rng.exponential(1.0, len(owner))  # flat Dirichlet via normalised exponentials
    share /= np.bincount(owner, weights=share, minlength=n)[owner]
    start = s_int[owner] + np.where(j == 0, 0.0, rng.exponential(0.3, len(owner)))
    return owner, em_energy[owner] * share, start


def hadronic_spots(
    rng: np.random.Generator,
    energy: np.ndarray,
    s_start: np.ndarray,
    cap: int,
    min_spots: int = MIN_SPOTS,
    shower_index: np.ndarray | None = None,
) -> Spots:
    """Spots of the hadronic component (``energy`` = visible-equivalent deposit [MeV]),
    starting at ``s_start`` [λ_I along the axis].  ``r`` of the spots is in λ_I."""
    energy = np.asarray(energy, dtype=float)
    n = len(energy)
    if shower_index is None:
        shower_index = np.arange(n)
    ln_e = np.log(np.maximum(energy, 100.0) / 1e3)
    a = np.maximum(0.6165 + 0.3183 * ln_e, 0.5) * np.exp(0.25 * rng.standard_normal(n))
    d = np.maximum(0.9099 - 0.0237 * ln_e, 0.3) * np.exp(0.10 * rng.standard_normal(n))
    m, owner, k = spot_layout(40.0 * (energy / 1e3) ** 0.8, energy, min_spots, cap)
    depth_rel = rng.gamma(a[owner]) / d[owner]  # λ after the interaction point
    tau = depth_rel * d[owner] / a[owner]  # relative to the profile's mean depth
    widen = 0.6 + 0.4 * np.minimum(tau, 3.0)
    radius = np.where(rng.random(len(owner)) < 0.55, 0.07, 0.30) * widen
    r = lorentz_radii(radius, k, rng.random(n)[owner])
    psi = rng.uniform(-np.pi, np.pi, len(owner))
    weight = (energy / np.maximum(m, 1))[owner]
    return Spots(shower_index[owner], s_start[owner] + depth_rel, r, psi, weight, "lambda")
