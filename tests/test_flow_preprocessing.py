"""Preprocessing of the flow families: round trips, log-Jacobians against autograd, zeros."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from caloforge.models.parts.representation import ShowerRepresentation
from caloforge.preprocessing import (Chain, LayerEnergyRatios, Log, Logit, RadialSplit, ScaleByEnergy, Standardize,
                                     split_layers, transform_from_state, transform_state)

SIZES = [3, 5, 2]


def _showers(n: int = 40, seed: int = 0, empty: float = 0.4, sizes=SIZES) -> tuple[torch.Tensor, torch.Tensor]:
    """Showers with empty voxels (zero-suppressed below 1 keV) and whole empty layers, like the data."""
    g = torch.Generator().manual_seed(seed)
    e = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(np.log(256.0), np.log(4e6), generator=g))
    x = torch.rand(n, sum(sizes), generator=g, dtype=torch.float64) * e[:, None] * 0.02
    x[torch.rand(x.shape, generator=g) < empty] = 0.0
    x[:3, -sizes[-1]:] = 0.0  # a whole empty layer
    x[x < 1e-3] = 0.0
    return x, e


def _autograd_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    out = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda r: fn(r[None])[0], row)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


CHAINS = {
    "scale-log-standardize": lambda: Chain([ScaleByEnergy(100.0), Log(1e-3), Standardize()]),
    "logit-standardize": lambda: Chain([Logit(1e-6), Standardize()]),
    "layer-ratios-logit": lambda: Chain([LayerEnergyRatios(1.2), Logit(1e-6), Standardize()]),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_chains_round_trip_and_log_jacobian_match_autograd(name):
    g = torch.Generator().manual_seed(1)
    e = torch.full((12,), 1000.0, dtype=torch.float64)
    if name == "scale-log-standardize":
        x = torch.rand(12, 4, generator=g, dtype=torch.float64) * 50
    elif name == "logit-standardize":
        x = torch.rand(12, 4, generator=g, dtype=torch.float64) * 0.98 + 0.01
    else:  # layer energies with a total response below 1.2 E_inc
        x = torch.rand(12, 4, generator=g, dtype=torch.float64) * 200 + 1
    chain = CHAINS[name]().fit(x, e)
    y = chain.forward(x, e)
    assert torch.allclose(chain.inverse(y, e), x, rtol=1e-9, atol=1e-9)
    ours = chain.log_abs_det_jacobian(x, e)
    ref = _autograd_logdet(lambda r: chain.forward(r, e[: len(r)]), x)
    assert torch.allclose(ours, ref, rtol=1e-8, atol=1e-8)
    again = transform_from_state(transform_state(chain))  # JSON state → the same map
    assert torch.allclose(again.forward(x, e), y)


def test_representation_round_trip_restores_empty_voxels_exactly():
    x, e = _showers()
    g = torch.Generator().manual_seed(2)
    rep = ShowerRepresentation.fit(x, e, SIZES, noise_mev=1e-3, generator=g)
    y1, y2, _ = rep.encode(x, e, g)
    back = rep.decode(y1, y2, e)
    assert torch.equal(back == 0, x == 0)  # dequantised zeros fall below the 1 keV threshold again
    # hits come back within the dequantisation noise (< 1 keV each, layer sums < size × 1 keV)
    assert torch.allclose(back, x, atol=1e-3 * max(SIZES), rtol=1e-4)
    assert torch.isfinite(y1).all() and torch.isfinite(y2).all()
    # a representation restored from its JSON state encodes identically
    again = ShowerRepresentation.from_state(rep.state())
    a = again.encode(x, e, torch.Generator().manual_seed(5))
    b = rep.encode(x, e, torch.Generator().manual_seed(5))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_representation_log_jacobian_matches_autograd():
    """log|∂(y₁, y₂)/∂(layer energies, fractions)| is the sum of the two chains' terms."""
    x, e = _showers(6, seed=3, empty=0.0)
    rep = ShowerRepresentation.fit(x, e, SIZES, noise_mev=0.0)
    _, _, logdet = rep.encode(x, e)
    layer_energy, fractions = split_layers(x, SIZES)
    z = torch.cat([layer_energy, fractions], 1)
    L = len(SIZES)
    ref = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(
        lambda r, i=i: torch.cat([rep.layer_chain.forward(r[None, :L], e[i:i + 1]),
                                  rep.voxel_chain.forward(r[None, L:], e[i:i + 1])], 1)[0], z[i]))[1]
        for i in range(len(z))])
    assert torch.allclose(logdet, ref, rtol=1e-8, atol=1e-6)


def test_radial_split_gives_the_ring_profile_and_inverts():
    """Ring fractions are the α-sums of each ring, the α fractions of a ring sum to one, the
    inverse restores the voxels, and the log-Jacobian is that of the free coordinates."""
    sizes, rings = [3, 12, 2], [0, 4, 0]  # the middle layer: 3 α × 4 r (α-major)
    x, e = _showers(8, seed=6, empty=0.3, sizes=sizes)
    _, f = split_layers(x + 1e-3, sizes)
    t = RadialSplit(sizes, rings)
    y = t.forward(f, e)
    assert y.shape == (8, sum(sizes) + 4) and t.added == 4
    grid = f[:, 3:15].reshape(8, 3, 4)
    assert torch.allclose(y[:, 3:7], grid.sum(1))  # the radial profile
    assert torch.allclose(y[:, 7:19].reshape(8, 3, 4).sum(1), torch.ones(8, 4, dtype=torch.float64))
    assert torch.equal(y[:, :3], f[:, :3]) and torch.equal(y[:, -2:], f[:, -2:])  # other layers untouched
    assert torch.allclose(t.inverse(y, e), f, rtol=1e-12, atol=1e-15)
    # the inverse normalises both levels: a scaled ring profile or ring decodes to the same voxels
    scaled = y.clone()
    scaled[:, 3:7] *= 2.5
    scaled[:, 7:19:4] *= 3.0  # ring 0's α fractions
    assert torch.allclose(t.inverse(scaled, e), f, rtol=1e-12, atol=1e-15)
    assert torch.equal(transform_from_state(transform_state(t)).forward(f, e), y)

    def free(r):  # per ring: its total and all but its last α fraction (a square map of the layer)
        g = r.reshape(3, 4)
        return torch.cat([torch.cat([g[:, k].sum()[None], (g[:, k] / g[:, k].sum())[:-1]]) for k in range(4)])

    ref = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(free, row[3:15]))[1] for row in f])
    assert torch.allclose(t.log_abs_det_jacobian(f, e), ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="do not divide"):
        RadialSplit([3, 12], [0, 5])


def test_representation_with_rings_round_trips_and_bounds():
    """``rings`` adds one column per ring to y₂; decoding still restores the showers and their zeros."""
    sizes, rings = [3, 12, 2], [0, 4, 0]
    x, e = _showers(40, seed=7, empty=0.4, sizes=sizes)
    g = torch.Generator().manual_seed(2)
    rep = ShowerRepresentation.fit(x, e, sizes, noise_mev=1e-3, generator=g, rings=rings, envelope_bins=8)
    y1, y2, logdet = rep.encode(x, e, g)
    assert rep.n_features == 17 + 4 and y2.shape == (40, 21) and torch.isfinite(logdet).all()
    back = rep.decode(y1, y2, e)
    assert torch.equal(back == 0, x == 0)
    assert torch.allclose(back, x, atol=1e-3 * max(sizes), rtol=1e-4)
    lo, hi = rep.bounds()
    assert lo.shape == hi.shape == (3 + 21,) and (lo < hi).all()
    again = ShowerRepresentation.from_state(rep.state())
    assert again.n_features == 21
    a, b = (r.encode(x, e, torch.Generator().manual_seed(5)) for r in (again, rep))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_layer_energy_ratios_bound_the_response():
    """u₀ ≤ 1 for every training shower: the fitted bound sits above the largest response."""
    x, e = _showers(50, seed=4)
    rep = ShowerRepresentation.fit(x, e, SIZES, noise_mev=1e-3, generator=torch.Generator().manual_seed(0))
    u = rep.layer_chain.transforms[0].forward(split_layers(x + 1e-3, SIZES)[0], e)
    assert (u >= 0).all() and (u[:, 0] < 1).all()


def test_response_bound_sees_every_shower_of_a_subsampled_fit_and_clamps_beyond():
    """The standardisations may be fitted on a subsample, the response bound never: a rare
    high-response shower outside the subsample once made u₀ > 1 and the training loss NaN."""
    x, e = _showers(400, seed=5)
    x[7] *= 4 * (x.sum(1) / e).max().item() * e[7].item() / x[7].sum().item()  # 4× the largest response
    rep = ShowerRepresentation.fit(x, e, SIZES, max_showers=40, generator=torch.Generator().manual_seed(0))
    assert rep.layer_chain.transforms[0].max_response >= (x.sum(1) / e).max().item()  # not only rows 0, 10, …
    y1, y2, logdet = rep.encode(x, e, torch.Generator().manual_seed(1))
    assert torch.isfinite(y1).all() and torch.isfinite(y2).all() and torch.isfinite(logdet).all()
    # a shower above any fitted bound is read at the bound, finite, not as a NaN
    s = rep.layer_chain.transforms[0].max_response
    hot = x[:1] * 2 * s * e[0].item() / x[0].sum().item()  # twice the bound
    y1, y2, logdet = rep.encode(hot, e[:1])
    assert torch.isfinite(y1).all() and torch.isfinite(logdet).all()
    assert rep.decode(y1, y2, e[:1]).sum().item() == pytest.approx(s * e[0].item(), rel=1e-3)


# ----------------------------------------------------------------------------------
# The fraction envelope
# ----------------------------------------------------------------------------------
def test_envelope_leaves_training_showers_unchanged():
    """Training showers lie inside their envelope: the round trip is (within the dequantisation
    noise) the one without it."""
    x, e = _showers(60, seed=4)
    plain = ShowerRepresentation.fit(x, e, SIZES, noise_mev=1e-3, generator=torch.Generator().manual_seed(1))
    capped = ShowerRepresentation.fit(x, e, SIZES, noise_mev=1e-3, generator=torch.Generator().manual_seed(1),
                                      envelope_bins=4)
    assert capped.envelope is not None and plain.envelope is None
    y1, y2, _ = capped.encode(x, e, torch.Generator().manual_seed(2))
    # other dequantisation noise than the fit's and float32 y₂ may touch a cap: within the 1 keV noise
    assert torch.allclose(capped.decode(y1, y2, e), plain.decode(y1, y2, e), rtol=1e-3, atol=1e-3)


def test_envelope_caps_a_leaked_voxel_and_keeps_the_layer_energy():
    """An outer voxel that never took more than 1 % of its layer in training is drawn at 50 %:
    decoding caps it at 1 % and hands the rest to the other voxels in proportion."""
    g = torch.Generator().manual_seed(3)
    n = 200
    e = torch.full((n,), 4096.0, dtype=torch.float64)
    x = torch.rand(n, sum(SIZES), generator=g, dtype=torch.float64) + 1.0
    x[:, 4] = 0.005 * x[:, 3:8].sum(1)  # layer 1 (voxels 3..7): voxel 4 holds < 1 %
    rep = ShowerRepresentation.fit(x, e, SIZES, noise_mev=0.0, threshold_mev=0.0, envelope_bins=8)
    cap = rep.envelope.max_fraction[0, 4].item()
    assert 0.004 < cap < 0.008
    y1, y2, _ = rep.encode(x[:1], e[:1])
    _, fractions = split_layers(x[:1], SIZES)
    wild = fractions.clone()
    wild[0, 4] = 0.5 * wild[0, 3:8].sum()  # a leak: voxel 4 at half of the layer
    y2_wild = rep.voxel_chain.forward(wild, e[:1]).to(torch.float32)
    out = rep.decode(y1, y2_wild, e[:1])
    layer = out[0, 3:8]
    assert torch.isclose(layer.sum(), x[0, 3:8].sum(), rtol=1e-4)  # the layer keeps its energy
    assert layer[1] / layer.sum() <= cap * (1 + 1e-6)  # global voxel 4 is the layer's second
    assert layer[1] / layer.sum() > 0.9 * cap  # capped, not emptied
    ratio = layer[[0, 2, 3, 4]] / fractions[0, [3, 5, 6, 7]]  # the uncapped voxels scale together
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3)
    # every voxel of every layer stays inside its cap
    frac_out = split_layers(out, SIZES)[1]
    assert (frac_out <= rep.envelope.max_fraction[0] * (1 + 1e-6)).all()


def test_envelope_bins_follow_the_incident_energy():
    """One bin per distinct energy for DS1-like data, quantile bins for continuous energies; the cap
    of a shower is its own energy's bin, the nearest one outside the fitted range."""
    from caloforge.models.parts.envelope import FractionEnvelope

    e = torch.tensor([256.0, 256.0, 4096.0, 65536.0], dtype=torch.float64)
    f = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8], [0.9, 0.1]], dtype=torch.float64)
    env = FractionEnvelope.fit(f, e, bins=16)
    assert env.max_fraction.tolist() == [[1.0, 0.5], [0.2, 0.8], [0.9, 0.1]]
    probe = torch.tensor([100.0, 256.0, 4096.0, 5000.0, 1e7], dtype=torch.float64)
    assert env.bin_index(probe).tolist() == [0, 0, 1, 1, 2]
    g = torch.Generator().manual_seed(0)
    cont = torch.exp(torch.empty(1000, dtype=torch.float64).uniform_(np.log(1e3), np.log(1e6), generator=g))
    env = FractionEnvelope.fit(torch.rand(1000, 3, generator=g, dtype=torch.float64), cont, bins=8)
    counts = torch.bincount(env.bin_index(cont), minlength=8)
    assert len(env.max_fraction) == 8 and counts.min() >= 100  # quantile bins: ~125 showers each
    # the JSON state never lowers a cap (rounded up) and restores the same bins
    back = FractionEnvelope.from_state(env.state())
    assert (back.max_fraction >= env.max_fraction).all()
    assert torch.allclose(back.max_fraction, env.max_fraction, rtol=1e-5)
    assert torch.equal(back.bin_index(cont), env.bin_index(cont))


# ----------------------------------------------------------------------------------
# The water-filling behind the envelope: two exact solvers, one answer
# ----------------------------------------------------------------------------------
def _bisection_water_fill(p: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Reference for one layer of one shower: bisect c in Σ min(c·p, cap) = 1 (float64)."""
    lo, hi = 1.0, 1.0
    while np.minimum(hi * p, cap).sum() < 1 and hi < 1e30:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.minimum(mid * p, cap).sum() < 1 else (lo, mid)
    return np.minimum(hi * p, cap)


@given(st.integers(0, 2**31 - 1), st.sampled_from([torch.float32, torch.float64]))
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
def test_water_fill_solvers_agree_with_bisection(seed, dtype):
    """Newton (generation) and the sorted solution (exported graphs) both give the capped fractions
    with every layer summing to one and no voxel above its cap, for wild leaks and long cascades."""
    from caloforge.models.parts.envelope import water_fill_newton, water_fill_sorted

    rng = np.random.default_rng(seed)
    sizes = [int(n) for n in rng.integers(1, 40, size=rng.integers(1, 5))]
    n = 16
    p = rng.exponential(size=(n, sum(sizes))) ** rng.uniform(1, 6)  # heavy tails: cascades of caps
    p[rng.random(p.shape) < 0.3] = 0.0
    cap = rng.uniform(0.0, 1.0, size=p.shape) ** rng.uniform(0.5, 4)
    parts_p, parts_c = np.split(p, np.cumsum(sizes)[:-1], 1), np.split(cap, np.cumsum(sizes)[:-1], 1)
    for q, m in zip(parts_p, parts_c):  # a layer with energy sums to one; its caps can hold it
        q[q.sum(1) == 0, 0] = 1.0
        q /= q.sum(1, keepdims=True)
        room = (m * (q > 0)).sum(1)  # only voxels with energy can take the excess
        m[(room < 1.0) & (room > 0)] /= room[(room < 1.0) & (room > 0), None] * 0.999
        m[room == 0] = 1.0
    p, cap = np.concatenate(parts_p, 1), np.concatenate(parts_c, 1)
    want = np.concatenate([np.stack([_bisection_water_fill(q[i], m[i]) for i in range(n)])
                           for q, m in zip(parts_p, parts_c)], 1)
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    pt, ct = torch.tensor(p, dtype=dtype), torch.tensor(cap, dtype=dtype)
    for solver in (water_fill_newton, water_fill_sorted):
        got = solver(pt, ct, sizes)
        assert got.dtype == dtype
        got = got.double().numpy()
        assert np.abs(got - want).max() <= tol, solver.__name__
        assert (got <= cap * (1 + tol) + tol).all(), solver.__name__
        sums = np.stack([s.sum(1) for s in np.split(got, np.cumsum(sizes)[:-1], 1)], 1)
        assert np.abs(sums - 1).max() <= tol * 10, solver.__name__


def test_decode_in_float32_matches_float64():
    """Generation decodes in float32 (voxels, envelope, merge): the same showers as float64 to
    float32 precision, the same empty voxels, every layer's energy kept."""
    x, e = _showers(200, seed=9)
    rep = ShowerRepresentation.fit(x, e, SIZES, noise_mev=1e-3, generator=torch.Generator().manual_seed(1),
                                   envelope_bins=4)
    g = torch.Generator().manual_seed(2)
    y1 = torch.randn(200, len(SIZES), generator=g)
    y2 = torch.randn(200, sum(SIZES), generator=g) * 2  # wide: many voxels over their caps
    wide = rep.decode(y1, y2, e)
    single = rep.decode(y1, y2, e, dtype=torch.float32)
    assert wide.dtype == torch.float64 and single.dtype == torch.float32
    assert torch.allclose(single.double(), wide, rtol=1e-5, atol=1e-6 * float(wide.max()))
    assert torch.equal(single == 0, wide == 0)
    assert torch.allclose(split_layers(single.double(), SIZES)[0], split_layers(wide, SIZES)[0], rtol=1e-5)
