"""Per-shower features against values worked out by hand on tiny showers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caloforge.errors import GeometryError
from caloforge.evaluate import features as F
from caloforge.geometry import load_geometry
from caloforge.simulate import simulate


@pytest.fixture(scope="module")
def ds1():
    return load_geometry("ds1-photons")


@pytest.fixture(scope="module")
def calogan():
    return load_geometry("calogan")


@pytest.fixture(scope="module")
def atlas():
    return load_geometry("atlas-4layer")


def _polar_shower(g):
    """Layer 0 (1 α bin × 8 r): 6 MeV in r bin 1 (r 0..? see below).
    Layer 1 (10 α × 16 r, r edges 0,2,4,6,...): 1 MeV at (α bin 5, r bin 0) and
    3 MeV at (α bin 5, r bin 2), i.e. at r = 1 and r = 5 mm, α = 0.1π."""
    s = np.zeros((2, g.n_voxels))  # second row: an empty shower
    s[0, g.layer_slices[0].start + 1] = 6.0
    l1 = g.layer_slices[1].start
    n_r = g.layers[1].n_r
    s[0, l1 + 5 * n_r + 0] = 1.0
    s[0, l1 + 5 * n_r + 2] = 3.0
    return s


def test_polar_layout_by_hand(ds1):
    g = ds1
    assert g.layers[1].n_alpha == 10 and g.layers[1].r_edges[:4] == (0.0, 2.0, 4.0, 6.0)
    s = _polar_shower(g)
    f = F.high_level_features(s, np.array([20.0, 20.0]), g)
    alpha = -math.pi + 5.5 * 2 * math.pi / 10  # centre of α bin 5 = 0.1π
    assert alpha == pytest.approx(0.1 * math.pi)
    # r-weighted: (1·1 + 3·5)/4 = 4 mm; width √((1 + 75)/4 − 16) = √3
    assert f["E_tot"][0] == pytest.approx(10.0)
    assert f["E_ratio"][0] == pytest.approx(0.5)
    assert f["E_layer_0"][0] == pytest.approx(6.0) and f["E_layer_1"][0] == pytest.approx(4.0)
    assert f["CE_r_layer_1"][0] == pytest.approx(4.0)
    assert f["width_r_layer_1"][0] == pytest.approx(math.sqrt(3.0))
    assert f["CE_eta_layer_1"][0] == pytest.approx(4.0 * math.cos(alpha))
    assert f["CE_phi_layer_1"][0] == pytest.approx(4.0 * math.sin(alpha))
    assert f["width_eta_layer_1"][0] == pytest.approx(math.sqrt(3.0) * math.cos(alpha))
    assert f["width_phi_layer_1"][0] == pytest.approx(math.sqrt(3.0) * math.sin(alpha))
    assert f["sparsity_layer_1"][0] == pytest.approx(1 - 2 / 160)
    assert f["sparsity_layer_0"][0] == pytest.approx(1 - 1 / 8)
    # layer 0 has a single α bin: no η/φ structure, as CaloChallenge's layersBinnedInAlpha
    assert "CE_eta_layer_0" not in f and "CE_r_layer_0" in f
    assert f["CE_r_layer_0"][0] == pytest.approx(0.5 * sum(g.layers[0].r_edges[1:3]))
    # CaloGAN shapes: fractions 0.6 / 0.4, l_d = 0·6 + 1·4, s_d = 0.4, σ = √(0.4 − 0.16)
    assert f["frac_layer_0"][0] == pytest.approx(0.6) and f["frac_layer_1"][0] == pytest.approx(0.4)
    assert f["depth_weighted_energy"][0] == pytest.approx(4.0)
    assert f["shower_depth"][0] == pytest.approx(0.4)
    assert f["shower_depth_width"][0] == pytest.approx(math.sqrt(0.24))
    assert f["nonzero_fraction_layer_1"][0] == pytest.approx(2 / 160)
    assert f["n_hits"][0] == 3
    z0, z1 = g.layers[0].z_center, g.layers[1].z_center
    assert f["CoG_z"][0] == pytest.approx((6 * z0 + 4 * z1) / 10)
    assert f["CoG_x"][0] == pytest.approx((6 * f["CE_r_layer_0"][0] + 16 * math.cos(alpha)) / 10)
    # empty layers (4..11) get no columns; the empty shower gives zeros, never NaN
    assert "E_layer_4" not in f and "E_layer_12" in f
    for name, values in f.items():
        assert np.all(np.isfinite(values)), name
        if name.startswith("sparsity"):
            assert values[1] == 1.0
        else:
            assert values[1] == 0.0, name
    assert not any(k.startswith("atlas_") for k in f)


def test_cartesian_layout_by_hand(calogan):
    g = calogan
    s = np.zeros((1, g.n_voxels))
    l0 = g.layer_slices[0].start  # 3 × 96 cells of 5 × 160 mm, row-major (y, x)
    s[0, l0 + 1 * 96 + 0] = 1.0  # x = (0 − 47.5)·5 = −237.5, y = 0
    s[0, l0 + 1 * 96 + 1] = 1.0  # x = −232.5
    s[0, l0 + 2 * 96 + 1] = 2.0  # x = −232.5, y = +160
    f = F.high_level_features(s, np.array([8.0]), g)
    ce_x = (-237.5 - 232.5 - 2 * 232.5) / 4
    assert f["CE_eta_layer_0"][0] == pytest.approx(ce_x)
    assert f["CE_phi_layer_0"][0] == pytest.approx(80.0)
    assert f["width_phi_layer_0"][0] == pytest.approx(80.0)  # 2 of 4 MeV at +160, rest at 0
    wx = math.sqrt((237.5**2 + 3 * 232.5**2) / 4 - ce_x**2)
    assert f["width_eta_layer_0"][0] == pytest.approx(wx)
    assert f["lateral_width_layer_0"][0] == pytest.approx(wx)
    assert f["E_ratio"][0] == pytest.approx(0.5)
    assert f["frac_layer_0"][0] == pytest.approx(1.0)
    assert f["shower_depth"][0] == 0.0
    assert f["sparsity_layer_0"][0] == pytest.approx(1 - 3 / 288)
    ce_eta, ce_phi = F.centre_of_energy(s, g)
    assert ce_eta.shape == (1, 3) and ce_eta[0, 0] == pytest.approx(ce_x) and ce_phi[0, 1] == 0.0
    w_eta, w_phi = F.shower_widths(s, g)
    assert w_eta[0, 0] == pytest.approx(wx) and w_phi[0, 0] == pytest.approx(80.0)
    cog = F.centre_of_gravity(s, g)
    assert cog[0].tolist() == pytest.approx([ce_x, 80.0, g.layers[0].z_center])
    assert F.sparsity(s, g)[0, 0] == pytest.approx(1 - 3 / 288)
    assert F.sparsity(s, g, threshold=1.5)[0, 0] == pytest.approx(1 - 1 / 288)


def test_atlas_variables_by_hand(atlas):
    g = atlas
    s = np.zeros((1, g.n_voxels))
    strips = g.layer_slices[1].start  # 3 × 56
    s[0, strips + 10] = 10.0  # η profile: 10 at strip 10 (first maximum)
    s[0, strips + 56 + 11] = 4.0  # 4 at strip 11 (not a local maximum: its neighbour has 10)
    s[0, strips + 2 * 56 + 20] = 6.0  # 6 at strip 20 (second maximum)
    middle = g.layer_slices[2].start  # 7 × 7 cells of 37.5 mm
    s[0, middle + 3 * 7 + 3] = 8.0  # hottest cell, x = 0
    s[0, middle + 3 * 7 + 4] = 2.0  # x = +37.5, inside the 3 × 5 window
    s[0, middle + 3 * 7 + 6] = 1.0  # x = +112.5, outside the window
    back = g.layer_slices[3].start
    s[0, back + 5] = 5.0
    f = F.high_level_features(s, np.array([40.0]), g)
    total = 20.0 + 11.0 + 5.0
    assert f["atlas_Eratio"][0] == pytest.approx((10 - 6) / (10 + 6))
    assert f["atlas_f1"][0] == pytest.approx(20 / total)
    assert f["atlas_f3"][0] == pytest.approx(5 / total)
    assert f["atlas_weta1"][0] == pytest.approx(math.sqrt(4 / 14))  # strips 9..11: 0, 10, 4
    # middle window: 8 MeV at 0, 2 MeV at 37.5 → mean 7.5, RMS √(281.25 − 56.25) = 15
    assert f["atlas_weta2"][0] == pytest.approx(15.0)
    # a single peak gives Eratio = 1; empty strips give 0
    single = np.zeros((2, g.n_voxels))
    single[0, strips + 30] = 3.0
    shapes = F.atlas_shapes(single, g)
    assert shapes["Eratio"].tolist() == [1.0, 0.0]
    assert all(np.all(np.isfinite(v)) for v in shapes.values())


def test_atlas_layers_by_name_or_mapping(calogan, atlas):
    assert F.atlas_layers(atlas) == {"strips": 1, "middle": 2, "back": 3}
    assert F.atlas_layers(calogan) is None
    with pytest.raises(GeometryError, match="strips"):
        F.atlas_shapes(np.zeros((1, calogan.n_voxels)), calogan)
    # explicitly mapped: CaloGAN's fine first layer as strips, its last layer as back
    s = np.zeros((1, calogan.n_voxels))
    s[0, calogan.layer_slices[0].start + 40] = 2.0
    s[0, calogan.layer_slices[2].start] = 2.0
    out = F.atlas_shapes(s, calogan, {"strips": 0, "back": 2})
    assert out["f3"][0] == pytest.approx(0.5) and "weta2" not in out
    f = F.high_level_features(s, np.array([4.0]), calogan, atlas={"strips": 0, "back": 2})
    assert f["atlas_f3"][0] == pytest.approx(0.5)
    off = F.high_level_features(np.ones((1, atlas.n_voxels)), np.array([4.0]), atlas, atlas=False)
    assert not any(k.startswith("atlas") for k in off)
    with pytest.raises(GeometryError, match="back"):
        F.atlas_layers(calogan, {"strips": 0})


def test_profiles_and_spectra(ds1, rng):
    g = ds1
    s = rng.exponential(1.0, (50, g.n_voxels)) * (rng.random((50, g.n_voxels)) < 0.2)
    z, long = F.longitudinal_profile(s, g)
    assert long.shape == (50, g.n_layers) and np.allclose(long.sum(1), s.sum(1))
    assert np.all(np.diff(z) >= 0) and z[3] > z[0]  # empty layers are 0 mm thick
    _, norm = F.longitudinal_profile(s, g, normalise=True)
    assert np.allclose(norm.sum(1), 1.0)
    edges, radial = F.radial_profile(s, g)
    assert edges[0] == 0.0 and edges[-1] == max(layer.r_edges[-1] for layer in g.layers if layer.n_voxels)
    assert np.allclose(radial.sum(1), s.sum(1))
    # a voxel in r bin [4, 6) of layer 1 lands in the 4..5 or 5..6 union bin holding r = 5
    one = np.zeros((1, g.n_voxels))
    one[0, g.layer_slices[1].start + 2] = 7.0
    e, r1 = F.radial_profile(one, g)
    assert r1[0, np.searchsorted(e, 5.0, side="right") - 1] == 7.0
    assert F.n_hits(s).tolist() == np.count_nonzero(s, axis=1).tolist()
    assert F.voxel_energy_spectrum(s).size == np.count_nonzero(s)
    assert np.allclose(F.hit_energy_spectrum(s, 0.5, mip=0.5), s[s > 0.5] / 0.5)


def test_chunking_does_not_change_results(ds1, rng, monkeypatch):
    s = rng.exponential(1.0, (37, ds1.n_voxels)).astype(np.float32)
    e = np.full(37, 500.0)
    full = F.high_level_features(s, e, ds1)
    matrix = F.high_level_matrix(s, e, ds1)
    monkeypatch.setattr(F, "_CHUNK", 5)
    chunked = F.high_level_features(s, e, ds1)
    for k in full:
        assert np.allclose(full[k], chunked[k]), k
    assert np.allclose(matrix, F.high_level_matrix(s, e, ds1))


def test_high_level_matrix_columns(ds1):
    g = ds1
    s = _polar_shower(g)[:1]
    names = F.high_level_matrix_names(g)
    m = F.high_level_matrix(s, np.array([1000.0]), g)
    assert m.shape == (1, len(names))
    col = dict(zip(names, m[0]))
    assert col["log10_E_inc"] == pytest.approx(3.0)
    assert col["log10_E_layer_0"] == pytest.approx(math.log10(6.0 + 1e-8))
    assert col["log10_E_layer_2"] == pytest.approx(-8.0)
    assert col["CE_eta_layer_1"] == pytest.approx(4.0 * math.cos(0.1 * math.pi) / 100)
    assert col["width_phi_layer_1"] == pytest.approx(math.sqrt(3) * math.sin(0.1 * math.pi) / 100)
    # η/φ columns only for layers binned in α: 1 and 2 for DS1 photons
    assert [n for n in names if n.startswith("CE_eta")] == ["CE_eta_layer_1", "CE_eta_layer_2"]
    extra = F.high_level_matrix(s, np.array([20.0]), g, with_energy_ratio=True, include_incident=False)
    assert extra.shape[1] == len(names) and extra[0, -1] == pytest.approx(0.5)


def test_bad_input(ds1):
    with pytest.raises(GeometryError):
        F.high_level_features(np.zeros((2, 10)), np.ones(2), ds1)
    with pytest.raises(GeometryError, match="incident"):
        F.high_level_features(np.zeros((2, ds1.n_voxels)), np.ones(3), ds1)
    with pytest.raises(ValueError, match="groups"):
        F.high_level_features(np.zeros((1, ds1.n_voxels)), np.ones(1), ds1, groups=("nope",))


def test_features_on_simulated_electrons(atlas):
    """Reference-simulator EM showers: the shapes behave like ATLAS electrons."""

    low = simulate("atlas-4layer", "electron", [10_000.0] * 150, seed=11)
    high = simulate("atlas-4layer", "electron", [200_000.0] * 150, seed=12)
    f_low = F.high_level_features(low.showers, low.incident_energy, atlas)
    f_high = F.high_level_features(high.showers, high.incident_energy, atlas)
    # the shower maximum moves deeper as ln E: centre of gravity and CaloGAN depth grow
    assert f_high["CoG_z"].mean() > f_low["CoG_z"].mean() + 10.0
    assert f_high["shower_depth"].mean() > f_low["shower_depth"].mean()
    assert f_high["atlas_f3"].mean() > f_low["atlas_f3"].mean()  # more leakage to the back
    for f in (f_low, f_high):
        assert 0.8 < np.median(f["atlas_Eratio"]) <= 1.0  # one EM core: a single strip peak
        assert 0.05 < f["atlas_f1"].mean() < 0.6
        assert f["atlas_f3"].mean() < 0.05
        # middle-layer width of an EM core ~ 0.01 in η, i.e. ~15 mm at r = 1.5 m
        assert 8.0 < np.median(f["atlas_weta2"]) < 25.0
        assert np.all(np.abs(f["CE_eta_layer_2"]) < 37.5)  # centred within one middle cell


def test_high_level_tables_match_the_separate_calls(ds1, rng):
    """compare() takes features, matrix and layer energies from one pass over the voxels."""
    s = (rng.exponential(1.0, (23, ds1.n_voxels)) * (rng.random((23, ds1.n_voxels)) < 0.3)).astype(np.float32)
    e = rng.choice([1e3, 1e4], 23)
    feats, matrix, layer_e = F.high_level_tables(s, e, ds1)
    alone = F.high_level_features(s, e, ds1)
    assert list(feats) == list(alone)
    for k in alone:
        np.testing.assert_allclose(feats[k], alone[k], rtol=1e-12, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(matrix, F.high_level_matrix(s, e, ds1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer_e, F.layer_energies(s, ds1), rtol=1e-9)
    np.testing.assert_allclose(feats["E_ratio"], F.energy_ratio(s, e), rtol=1e-9)
    assert F.high_level_tables(s, e, ds1, matrix=False)[1] is None
