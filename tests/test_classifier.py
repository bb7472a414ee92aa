"""The classifier two-sample test: null AUC ≈ 0.5, clear differences caught, seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caloforge.errors import ConfigError, DataError
from caloforge.evaluate import classifier as C
from caloforge.geometry import load_geometry
from caloforge.io import ShowerData

SMALL = dict(epochs=30, n_hidden=32, n_layers=1, batch_size=64, lr=1e-2, patience=10)


def _showers(rng, g, n, *, occupancy=0.3, scale=1.0):
    """Toy showers: exponential voxels at 30 % occupancy, normalised to 0.9 E_inc."""
    e = 2.0 ** rng.integers(8, 16, n).astype(float)
    s = rng.exponential(1.0, (n, g.n_voxels)) * (rng.random((n, g.n_voxels)) < occupancy)
    s *= (0.9 * scale * e / np.maximum(s.sum(1), 1e-9))[:, None]
    return ShowerData(e, s.astype(np.float32))


@pytest.fixture(scope="module")
def geo():
    return load_geometry("atlas-4layer")


def test_roc_auc_matches_pair_counting(rng):
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + 0.5 * y, 1)  # rounded: plenty of ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert C.roc_auc(y, s) == pytest.approx(pairs)
    assert C.roc_auc(y, -s) == pytest.approx(1 - pairs)


def test_isotonic_calibration_is_monotone_and_calibrated(rng):
    p = rng.random(2000)
    y = (rng.random(2000) < p**2).astype(float)  # true probability p²
    f = C.isotonic_calibration(p, y)
    grid = np.linspace(0, 1, 101)
    out = f(grid)
    assert np.all(np.diff(out) >= 0) and out.min() >= 1e-6 and out.max() <= 1 - 1e-6
    assert f(np.array([0.5]))[0] == pytest.approx(0.25, abs=0.08)


def test_identical_distributions_give_auc_half(rng, geo):
    ref, gen = _showers(rng, geo, 2000), _showers(rng, geo, 2000)
    r = C.classifier_test(ref, gen, geometry=geo, mode="high", seed=3, **SMALL)
    # test part: 400 + 400 showers, σ(AUC) ≈ 0.02
    assert abs(r["auc"] - 0.5) < 0.07 and abs(r["auc_raw"] - 0.5) < 0.07
    assert r["jsd"] < 0.05
    assert r["n_test"] == 800 and r["n_train"] == 2400 and r["n_validation"] == 800
    assert r["mode"] == "high" and r["device"] == "cpu"


@pytest.mark.parametrize("mode", ["low", "high"])
def test_energy_scale_error_is_caught(rng, geo, mode):
    ref = _showers(rng, geo, 1000)
    gen = ShowerData(ref.incident_energy, ref.showers * np.float32(1.3))  # 30 % energy scale
    r = C.classifier_test(ref, (gen.incident_energy, gen.showers), geometry=geo, mode=mode, seed=1, **SMALL)
    assert r["auc"] > 0.9 and r["jsd"] > 0.3
    assert 1 <= r["best_epoch"] <= r["epochs_run"] <= SMALL["epochs"]


def test_low_normed_catches_a_shape_change(rng, geo):
    ref = _showers(rng, geo, 1000)
    gen = _showers(rng, geo, 1000, occupancy=0.05)  # sparser showers
    r = C.classifier_test(ref, gen, geometry=geo, mode="low-normed", seed=1, **SMALL)
    assert r["n_features"] == 1 + geo.n_voxels + 4  # log E_inc, voxels / E_layer, log E_layer
    assert r["auc"] > 0.9


def test_seeded_runs_are_reproducible(rng, geo):
    ref = _showers(rng, geo, 400)
    gen = _showers(rng, geo, 400, scale=1.1)
    a = C.classifier_test(ref, gen, geometry=geo, mode="low", seed=7, **SMALL)
    b = C.classifier_test(ref, gen, geometry=geo, mode="low", seed=7, **SMALL)
    assert a == b


def test_unequal_sizes_and_max_showers(rng, geo):
    ref, gen = _showers(rng, geo, 900), _showers(rng, geo, 500)
    r = C.classifier_test(ref, gen, geometry=geo, mode="high", seed=0, max_showers=300, **SMALL)
    assert r["n_train"] + r["n_validation"] + r["n_test"] == 600
    r = C.classifier_test(ref, gen, geometry=geo, mode="high", seed=0, **SMALL)
    assert r["n_train"] + r["n_validation"] + r["n_test"] == 1000  # cut to the smaller sample


def test_bad_settings(rng, geo):
    ref = _showers(rng, geo, 50)
    with pytest.raises(ConfigError, match="mode"):
        C.classifier_test(ref, ref, geometry=geo, mode="medium")
    with pytest.raises(ConfigError, match="geometry"):
        C.classifier_test(ref, ref, mode="high")
    with pytest.raises(ConfigError, match="device"):
        C.classifier_test(ref, ref, device="tpu", epochs=1)
    with pytest.raises(ConfigError, match="split"):
        C.classifier_test(ref, ref, split=(0.5, 0.5, 0.5), epochs=1)
    with pytest.raises(DataError, match="too few"):
        C.classifier_test(ShowerData(ref.incident_energy[:4], ref.showers[:4]), ref, epochs=1)
    with pytest.raises(DataError, match="positive"):
        C.classifier_test((np.zeros(50), ref.showers), ref, epochs=1)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            C.classifier_test(ref, ref, device="cuda", epochs=1)
    assert math.isnan(C.roc_auc(np.ones(3), np.arange(3.0)))


@pytest.mark.parametrize("percent", [True, False])
def test_low_level_input_is_the_float64_formula_stored_float32(rng, percent):
    # prepare_low works a block at a time (memory on DS2/DS3-sized samples); the values must be
    # those of the whole-array float64 formula, across block edges and for list input
    n = 5000  # more than two blocks
    showers = (rng.gamma(0.3, 5.0, (n, 7)) * (rng.random((n, 7)) < 0.5)).astype(np.float32)
    e = rng.uniform(100.0, 1e6, n)
    scale = 100.0 if percent else 1.0
    expected = np.concatenate([np.log10(e)[:, None], scale * showers.astype(np.float64) / e[:, None]], 1)
    got = C.prepare_low(showers, e, percent=percent)
    assert got.dtype == np.float32 and got.shape == (n, 8)
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    np.testing.assert_array_equal(C.prepare_low(showers[:3].tolist(), e[:3].tolist(), percent=percent), got[:3])
