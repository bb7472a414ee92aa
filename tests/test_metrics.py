"""Histogram metrics, the total-energy χ², FPD/KPD and the memorisation check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caloforge.errors import DataError
from caloforge.evaluate import metrics as M


# ----------------------------------------------------------------------------------
# histograms
# ----------------------------------------------------------------------------------
def test_separation_power_properties(rng):
    p = rng.integers(0, 100, 20).astype(float)
    assert M.separation_power(p, p) == 0.0
    assert M.separation_power(p, 3 * p) == pytest.approx(0.0)  # shapes only
    assert M.separation_power(np.array([5.0, 0, 0]), np.array([0, 2.0, 1.0])) == pytest.approx(1.0)
    q = rng.integers(0, 100, 20).astype(float)
    sp = M.separation_power(p, q)
    assert 0 < sp < 1 and sp == pytest.approx(M.separation_power(q, p))
    # by hand: p = (1/2, 1/2), q = (1, 0): ½[(−½)²/1.5 + (½)²/½] = ½(1/6 + 1/2) = 1/3
    assert M.separation_power(np.array([1.0, 1.0]), np.array([4.0, 0.0])) == pytest.approx(1 / 3)
    assert math.isnan(M.separation_power(np.zeros(3), p[:3]))


def test_histogram_counts_has_flow_bins():
    edges = np.array([0.0, 1.0, 2.0])
    counts = M.histogram_counts(np.array([-5.0, 0.0, 1.0, 2.0, 2.5, np.nan]), edges)
    assert counts.tolist() == [1.0, 1.0, 2.0, 1.0]  # the right edge belongs to the last bin
    assert M.histogram_counts(np.array([0.5, 7.0]), edges, flow=False).tolist() == [1.0, 0.0]


def test_common_bins_modes(rng):
    energies = 10 ** rng.uniform(0, 5, 1000)
    log_edges = M.common_bins(energies, 10)
    assert np.allclose(np.diff(np.log10(log_edges)), np.diff(np.log10(log_edges))[0])
    lin = M.common_bins(rng.normal(size=1000), 10)
    assert np.allclose(np.diff(lin), np.diff(lin)[0])
    q = M.common_bins(rng.normal(size=1000), 4, "quantile")
    counts = M.histogram_counts(rng.normal(size=0), q)
    assert counts.sum() == 0
    x = rng.normal(size=1000)
    assert M.histogram_counts(x, M.common_bins(x, 4, "quantile"))[1:-1].tolist() == [250.0] * 4
    const = M.common_bins(np.full(10, 3.0), 5)
    assert len(const) == 2 and const[0] < 3.0 < const[1]
    with pytest.raises(ValueError):
        M.common_bins(x, 5, "bogus")


def test_histogram_chi2_properties(rng):
    ref = rng.normal(size=20_000)
    assert M.histogram_chi2(ref, ref, 30)[0] == 0.0
    chi2, ndf = M.histogram_chi2(ref, rng.normal(size=20_000), 30)
    assert 25 <= ndf <= 31 and 0.5 < chi2 / ndf < 1.7  # same distribution: χ²/ndf ≈ 1
    # generated is normalised to the reference count: a 5× larger sample is still ≈ 1
    chi2_big, ndf_big = M.histogram_chi2(ref, rng.normal(size=100_000), 30)
    assert 0.5 < chi2_big / ndf_big < 1.7
    chi2_shift, _ = M.histogram_chi2(ref, rng.normal(0.2, 1.0, 20_000), 30)
    assert chi2_shift / ndf > 5  # a 0.2σ shift
    # values outside the reference range are counted in the overflow bin, not dropped
    chi2_out, _ = M.histogram_chi2(ref, np.concatenate([ref, np.full(2000, 50.0)]), 30)
    assert chi2_out > 100


def test_compare_feature_keys(rng):
    d = M.compare_feature(rng.normal(size=500), rng.normal(1.0, 1.0, 500))
    for key in ("separation_power", "chi2", "ndf", "chi2_ndf", "mean_reference", "mean_generated",
                "std_reference", "std_generated", "n_reference", "n_generated", "edges"):
        assert key in d
    assert d["mean_generated"] - d["mean_reference"] == pytest.approx(1.0, abs=0.2)
    assert d["separation_power"] > 0.1


# ----------------------------------------------------------------------------------
# total-energy χ² (CaloShowerGAN checkpoint metric)
# ----------------------------------------------------------------------------------
def _response(e, rng, scale=1.0):
    return e * scale * rng.normal(0.9, 0.03 + 0.1 / np.sqrt(e / 1e3))


def test_total_energy_chi2_discrete_energies(rng):
    e = np.repeat(2.0 ** np.arange(8, 23), 400)  # DS1: 15 discrete energies
    t = _response(e, rng)
    assert M.total_energy_chi2(e, t, e, t) == 0.0
    per = M.total_energy_chi2_per_point(e, t, e, _response(e, rng))
    assert sorted(per) == pytest.approx(list(2.0 ** np.arange(8, 23)))
    chi2 = sum(c for c, _ in per.values())
    ndf = sum(n for _, n in per.values())
    assert 0.7 < chi2 / ndf < 1.4
    assert M.total_energy_chi2(e, t, e, _response(e, rng, 1.05)) > 3 * ndf  # a 5 % scale error
    # float32 round trips of the energies still match their points
    assert len(M.total_energy_chi2_per_point(e, t, e.astype(np.float32), t)) == 15


def test_total_energy_chi2_continuous_energies(rng):
    e_ref = 10 ** rng.uniform(3, 6, 20_000)
    e_gen = 10 ** rng.uniform(3, 6, 20_000)
    per = M.total_energy_chi2_per_point(e_ref, _response(e_ref, rng), e_gen, _response(e_gen, rng),
                                        n_bins=20, max_points=10)
    assert len(per) == 10
    keys = sorted(per)
    assert keys[0] > 1e3 and keys[-1] < 1e6 and np.allclose(np.diff(np.log10(keys)), 0.3, rtol=1e-3)
    ratio = sum(c for c, _ in per.values()) / sum(n for _, n in per.values())
    assert 0.6 < ratio < 1.5
    bad = M.total_energy_chi2(e_ref, _response(e_ref, rng), e_gen, _response(e_gen, rng, 1.05), max_points=10)
    assert bad > 3 * sum(n for _, n in per.values())


def test_total_energy_chi2_edge_cases(rng):
    e = np.repeat([1e3, 1e4, 1e5], 100)
    t = _response(e, rng)
    # a generated sample missing the 1e5 point: that point is left out, not an error
    keep = e < 5e4
    per = M.total_energy_chi2_per_point(e, t, e[keep], t[keep])
    assert sorted(per) == [1e3, 1e4]
    assert M.total_energy_chi2(e, t, np.full(5, 7e2), np.full(5, 600.0)) == math.inf
    with pytest.raises(DataError):
        M.total_energy_chi2(e, t[:-1], e, t)


# ----------------------------------------------------------------------------------
# FPD / KPD
# ----------------------------------------------------------------------------------
def test_frechet_distance_by_hand():
    assert M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3)) == pytest.approx(0.0, abs=1e-12)
    # 1-D: (μ1−μ2)² + (σ1 − σ2)²
    assert M.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([0.0]), np.array([[1.0]])) \
        == pytest.approx(1.0 + 1.0)


def _correlated(rng, n, shift=0.0):
    z = rng.normal(size=(n, 4))
    mix = np.array([[1.0, 0.5, 0, 0], [0, 1.0, 0.3, 0], [0, 0, 1.0, 0], [0.2, 0, 0, 1.0]])
    return z @ mix * np.array([1.0, 10.0, 0.1, 1e3]) + shift


def test_fpd_kpd_same_and_shifted(rng):
    a, b = _correlated(rng, 4000), _correlated(rng, 4000)
    shifted = _correlated(rng, 4000, shift=np.array([0.5, 0.0, 0.0, 0.0]))  # 0.5σ in one feature
    v, err = M.fpd(a, b, min_samples=500, max_samples=2500, num_batches=5, num_points=5)
    assert err > 0 and v < 3 * err + 2e-3  # consistent with zero
    v_s, err_s = M.fpd(a, shifted, min_samples=500, max_samples=2500, num_batches=5, num_points=5)
    # JetNet scales each feature by its largest |value| in the reference: expect (0.5 / max|x₀|)²
    expected = (0.5 / np.abs(a[:, 0]).max()) ** 2
    assert 0.5 * expected < v_s < 2 * expected and v_s > 5 * err_s + v
    k, kerr = M.kpd(a, b, num_batches=10, batch_size=1000)
    # batches drawn from one finite sample share showers, so the spread understates the
    # error a little: allow a small absolute margin on top
    assert abs(k) < 3 * kerr + 5e-3
    k_s, kerr_s = M.kpd(a, shifted, num_batches=10, batch_size=1000)
    assert k_s > 0.5 * expected and k_s > 3 * kerr_s + 3 * kerr
    # seeded: the same call gives the same number
    assert M.kpd(a, shifted, num_batches=10, batch_size=1000) == (k_s, kerr_s)


def test_fpd_needs_enough_showers(rng):
    with pytest.raises(DataError, match="FPD"):
        M.fpd(rng.normal(size=(10, 8)), rng.normal(size=(10, 8)))
    with pytest.raises(DataError, match="features"):
        M.kpd(rng.normal(size=(10, 3)), rng.normal(size=(10, 4)))


def test_mmd_is_unbiased_and_chunk_independent(rng):
    x, y = rng.normal(size=(400, 3)), rng.normal(size=(400, 3))
    full = M.mmd_poly_unbiased(x, y)
    assert full == pytest.approx(M.mmd_poly_unbiased(x, y, chunk=7))
    # brute force with the same kernel
    k = lambda a, b: (a @ b.T / 3 + 1) ** 3  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    brute = ((kxx.sum() - np.trace(kxx)) / (400 * 399) + (kyy.sum() - np.trace(kyy)) / (400 * 399)
             - 2 * k(x, y).mean())
    assert full == pytest.approx(brute)


def test_standardise_uses_reference_only(rng):
    ref = rng.normal(5.0, 2.0, size=(1000, 2))
    gen = ref + 1.0
    r, g = M.standardise(ref, gen)
    assert np.allclose(r.mean(0), 0, atol=1e-12) and np.allclose(r.std(0), 1)
    assert np.allclose(g.mean(0), 1.0 / ref.std(0))  # shifted by 1 / σ_ref
    r2, _ = M.standardise(np.array([[1.0, np.nan], [1.0, 2.0]]))
    assert np.all(np.isfinite(r2))


# ----------------------------------------------------------------------------------
# memorisation
# ----------------------------------------------------------------------------------
def test_memorisation_detects_copies(rng):
    train = rng.exponential(1.0, (600, 40))
    reference2 = rng.exponential(1.0, (300, 40))
    honest = rng.exponential(1.0, (300, 40))
    copies = train[rng.choice(600, 300, replace=False)] * (1 + 1e-9)
    ok = M.memorisation(train, honest, reference2)
    bad = M.memorisation(train, copies, reference2)
    assert 0.85 < ok["median_ratio"] < 1.15 and ok["n_copies"] == 0
    assert ok["fraction_below_reference_1pct"] < 0.06
    assert bad["median_ratio"] < 1e-6 and bad["n_copies"] == 300
    assert bad["fraction_below_reference_1pct"] == 1.0
    # nearest index points at the copied shower; tiny chunks give the same answer
    small = M.memorisation(train, copies, reference2, chunk_elements=500)
    assert np.array_equal(small["nearest_train_index"], bad["nearest_train_index"])
    assert np.allclose(train[bad["nearest_train_index"]] * (1 + 1e-9), copies)
    assert np.allclose(small["reference_distance"], bad["reference_distance"])
    with pytest.raises(DataError):
        M.memorisation(train, honest[:, :5], reference2)


def test_compare_feature_per_energy_finds_the_bad_point(rng):
    e = np.repeat([1e3, 1e4, 1e5], 3000)
    ref = rng.normal(size=e.size)
    gen = rng.normal(size=e.size)
    gen[e == 1e4] += 0.3  # wrong at one energy only
    per = M.compare_feature_per_energy(ref, e, gen, e, n_bins=20)
    assert sorted(per) == [1e3, 1e4, 1e5]
    assert per[1e4]["chi2_ndf"] > 5
    assert per[1e3]["chi2_ndf"] < 2 and per[1e5]["chi2_ndf"] < 2
    # inclusive the shift is diluted by the two good points
    assert M.compare_feature(ref, gen, bins=20)["chi2_ndf"] < per[1e4]["chi2_ndf"]


def test_kpd_error_is_nonzero_when_samples_are_smaller_than_a_batch() -> None:
    from caloforge.evaluate.metrics import kpd

    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(600, 4)), rng.normal(size=(600, 4))
    value, error = kpd(a, b, batch_size=5000)
    assert error > 0
    assert abs(value) < 3 * error + 1e-3


def test_continuous_energy_points_keep_the_highest_shower() -> None:
    from caloforge.evaluate.metrics import assign_energy_points, energy_points

    e = np.random.default_rng(3).uniform(1e3, 1e6, 5000)
    points, discrete = energy_points(e, max_points=10)
    assert not discrete
    assert np.all(assign_energy_points(e, points, discrete) >= 0)
