"""The CaloChallenge protocol: the official evaluator's definitions, stated as numbers.

Each test pins one fact of the official code (``CaloChallenge/homepage/code``): a feature value
on a hand-made shower, the bin edges of a feature, the classifier's layer sizes, the FPD/KPD
settings; and checks that ``compare(..., protocol="calochallenge")`` applies them (voxel cut
in every metric, 30-column set, fixed bins, official classifier), while the caloforge
protocol's pooled binning catches what the former reference-only binning missed.
"""

from __future__ import annotations

import numpy as np
import pytest

from caloforge.errors import ConfigError
from caloforge.evaluate import calochallenge as CC
from caloforge.evaluate import compare
from caloforge.evaluate import metrics as M
from caloforge.evaluate.features import calochallenge_matrix, calochallenge_matrix_names, eta_phi_layers
from caloforge.geometry import load_geometry
from caloforge.io import ShowerData

DS1 = load_geometry("ds1-photons")
QUICK = {"epochs": 3, "n_hidden": 32, "batch_size": 256}  # the official classifier is a GPU-sized job


def test_thresholds_and_protocol_choice():
    assert CC.voxel_cut("1-photons") == CC.voxel_cut("1-pions") == 1.0  # 1 MeV
    assert CC.voxel_cut("3") == pytest.approx(15.1515e-3, rel=1e-4)  # 0.5 keV / 0.033
    assert [CC.default_protocol(g) for g in ("ds1-photons", "ds1-pions", "ds2", "ds3", "calogan", "clic")] == \
        ["calochallenge"] * 4 + ["caloforge"] * 2
    with pytest.raises(ConfigError, match="needs a CaloChallenge geometry"):
        CC.resolve_protocol("calochallenge", "calogan")
    with pytest.raises(ConfigError, match="unknown protocol"):
        CC.resolve_protocol("official", "ds2")


def test_thirty_columns_on_a_hand_made_shower():
    """Two voxels of EMB2 (layer 2), one below the 1 MeV cut in the presampler."""
    s = np.zeros((1, DS1.n_voxels))
    sl2 = DS1.layer_slices[2]
    layer2 = DS1.layers[2]
    n_r = len(layer2.r_edges) - 1
    s[0, sl2.start] = 300.0  # α bin 0, r bin 0
    s[0, sl2.start + 1] = 100.0  # α bin 0, r bin 1
    s[0, DS1.layer_slices[0].start] = 0.5  # below the cut: gone in every metric
    e_inc = np.array([1000.0])
    x = calochallenge_matrix(CC.apply_cut(s, 1.0), e_inc, DS1)[0]
    names = calochallenge_matrix_names(DS1)
    col = dict(zip(names, x))
    assert len(names) == 30 and names[:6] == ["log10_E_inc", "log10_E_layer_0", "log10_E_layer_1",
                                              "log10_E_layer_2", "log10_E_layer_3", "log10_E_layer_12"]
    assert names[14:] == (["log10_E_tot"] + [f"sparsity_layer_{i}" for i in (0, 1, 2, 3, 12)]
                          + [f"CE_r_layer_{i}" for i in (0, 1, 2, 3, 12)] + [f"width_r_layer_{i}" for i in (0, 1, 2, 3, 12)])
    assert col["log10_E_inc"] == pytest.approx(3.0)
    assert col["log10_E_tot"] == pytest.approx(np.log10(400.0 + 1e-8))
    assert col["log10_E_layer_0"] == pytest.approx(-8.0)  # log10(0 + 1e-8): the 0.5 MeV voxel was cut
    assert col["sparsity_layer_2"] == pytest.approx(1.0 - 2.0 / layer2.n_voxels)
    assert col["sparsity_layer_0"] == pytest.approx(1.0)
    r_mid = 0.5 * (np.asarray(layer2.r_edges[:-1]) + np.asarray(layer2.r_edges[1:]))  # official radial centres
    ce_r = (300.0 * r_mid[0] + 100.0 * r_mid[1]) / 400.0
    width_r = np.sqrt((300.0 * r_mid[0] ** 2 + 100.0 * r_mid[1] ** 2) / 400.0 - ce_r**2)
    assert col["CE_r_layer_2"] == pytest.approx(ce_r / 100.0)
    assert col["width_r_layer_2"] == pytest.approx(width_r / 100.0)
    assert col["CE_r_layer_1"] == 0.0 and col["width_r_layer_12"] == 0.0  # empty layers: 0, not NaN
    assert n_r >= 2
    # ds1-pions: 1 + 7 layer energies + 4 × (α-binned layers) + 1 + 3 × 7
    pions = load_geometry("ds1-pions")
    assert len(calochallenge_matrix_names(pions)) == 1 + 7 + 4 * len(eta_phi_layers(pions)) + 1 + 21


def test_official_bin_edges():
    e = CC.feature_edges
    assert np.array_equal(e("E_ratio", "1-photons"), np.linspace(0.5, 1.5, 101))
    assert np.array_equal(e("CE_phi_layer_2", "1-photons"), np.linspace(-100, 100, 101))
    assert np.array_equal(e("CE_eta_layer_12", "1-pions"), np.linspace(-500, 500, 101))
    assert np.array_equal(e("width_phi_layer_13", "1-pions"), np.linspace(0, 400, 101))
    assert np.array_equal(e("CE_eta_layer_20", "3"), np.linspace(-30, 30, 101))
    assert np.array_equal(e("width_eta_layer_1", "2"), np.linspace(0, 30, 101))
    assert np.array_equal(e("sparsity_layer_3", "1-photons"), np.linspace(0, 1, 20))
    layer = e("E_layer_12", "1-photons", np.array([3.0, 5e4]))
    assert len(layer) == 40 and layer[0] == pytest.approx(1.0) and layer[-1] == pytest.approx(5e4)
    assert e("E_layer_5", "2", np.array([1.0]))[0] == pytest.approx(0.5e-3 / 0.033)
    assert e("n_hits", "1-photons") is None  # not an official histogram
    # E_tot / E_inc per DS1 energy: 0.4–1.4 in 20 bins, 0.9–1.1 for photons from 4 GeV
    assert np.array_equal(CC.per_energy_ratio_edges("1-photons", 2048.0), np.linspace(0.4, 1.4, 21))
    assert np.array_equal(CC.per_energy_ratio_edges("1-photons", 4096.0), np.linspace(0.9, 1.1, 21))
    assert np.array_equal(CC.per_energy_ratio_edges("1-pions", 65536.0), np.linspace(0.4, 1.4, 21))


def _official_layer_separation_power(reference: np.ndarray, generated: np.ndarray, min_energy: float) -> float:
    """``plot_E_layers`` + ``_separation_power`` of the official evaluator, written out from its
    definition: 40 log-spaced edges from ``min_energy`` to the largest *reference* layer energy
    (``np.log10`` of that maximum in the layer sums' own dtype: float32 for float32 files), both
    histograms ``density=True`` over those edges (entries outside, zeros among them, are dropped),
    densities times bin widths, then ½ Σ (p − q)² / (p + q + 1e-16)."""
    bins = np.logspace(np.log10(min_energy), np.log10(reference.max()), 40)
    p, _ = np.histogram(reference, bins=bins, density=True)
    q, _ = np.histogram(generated, bins=bins, density=True)
    p, q = p * np.diff(bins), q * np.diff(bins)
    return float(0.5 * np.sum((p - q) ** 2 / (p + q + 1e-16)))


def test_layer_energy_separation_power_matches_the_official_formula():
    """Layer energies with many exact zeros (after the 1 MeV cut) and over three decades of range, stored
    as float32 like the CaloChallenge files: the E-layer separation powers of ``compare`` equal the
    official histogram's, layer by layer (its lower edge, its zeros, its float32 upper edge)."""
    rng = np.random.default_rng(3)

    def sample(n: int, slope: float) -> ShowerData:
        # integer voxel energies (so every float32 layer sum is exact, whatever the summation order),
        # log-uniform over 0.1 MeV … 10^slope MeV: most voxels round to 0 or fall below the cut
        v = np.round(10.0 ** rng.uniform(-1.0, slope, (n, DS1.n_voxels)))
        occupancy = 10.0 ** rng.uniform(-2.5, -0.3, (n, 1))  # from a voxel or two to half the shower
        v[rng.random((n, DS1.n_voxels)) > occupancy] = 0.0
        for sl in DS1.layer_slices:  # every layer empty in about a fifth of the showers
            v[rng.random(n) < 0.2, sl] = 0.0
        v *= np.round(10.0 ** rng.uniform(0.0, 1.5, (n, 1)))  # per-shower scale: a wider range, still integer
        return ShowerData(rng.choice([256.0, 2.0**14, 2.0**20], n), v.astype(np.float32))

    ref, gen = sample(600, 3.0), sample(500, 3.2)
    res = compare(ref, gen, DS1, protocol="calochallenge", per_energy=False, fpd_kpd=False)
    cut = CC.voxel_cut("1-photons")
    checked = 0
    for layer_id in DS1.active_layers:
        sl = DS1.layer_slices[layer_id]
        # the official order: cut the voxels, then sum each layer in the file's dtype
        e_ref = np.where(ref.showers < cut, 0, ref.showers)[:, sl].sum(axis=1)
        e_gen = np.where(gen.showers < cut, 0, gen.showers)[:, sl].sum(axis=1)
        assert e_ref.dtype == np.float32 and np.mean(e_ref == 0) > 0.0  # zeros present (dropped officially)
        assert e_ref.max() / e_ref[e_ref > 0].min() > 1e3
        want = _official_layer_separation_power(e_ref, e_gen, cut)
        got = res.metrics["features"][f"E_layer_{layer_id}"]["inclusive"]["separation_power"]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), f"E layer {layer_id}"
        checked += 1
    assert checked == 5
    # the float32 upper edge of the official code lies below the reference maximum here: that shower
    # is outside the histogram in both
    top = float(np.logspace(0.0, np.log10(e_ref.max()), 40)[-1])
    assert top != float(e_ref.max())


def test_official_separation_power_drops_entries_outside_the_range():
    edges = np.linspace(-100, 100, 101)
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 10, 5000)
    gen = np.concatenate([rng.normal(0, 10, 5000), np.full(5000, 1e4)])  # half of it far outside
    assert CC.separation_power(ref, gen, edges) < 0.02  # the official number does not see it …
    p, q = M.histogram_counts(ref, edges), M.histogram_counts(gen, edges)
    assert M.separation_power(p, q) == pytest.approx(1 / 3, abs=0.01)  # … one with an overflow bin does
    # in range both conventions agree
    inside = np.histogram(ref, edges)[0], np.histogram(gen, edges)[0]
    assert CC.separation_power(ref, gen, edges) == pytest.approx(M.separation_power(*inside), abs=1e-12)
    assert CC.separation_power(np.array([0.5]), np.array([50.5]), edges) == pytest.approx(1.0)


def test_official_classifier_layer_sizes():
    from caloforge.evaluate.classifier import _network

    s = CC.CLASSIFIER_SETTINGS
    assert (s["n_layers"], s["n_hidden"], s["epochs"], s["lr"], s["batch_size"], s["split"]) == \
        (2, 2048, 50, 2e-4, 1000, (0.6, 0.2, 0.2))
    assert s["selection"] == "accuracy" and s["standardise"] is False and s["dtype"] == "float64"
    net = _network(369, s["n_layers"], s["n_hidden"], s["dropout"])
    linear = [m for m in net if hasattr(m, "weight")]
    assert [tuple(m.weight.shape) for m in linear] == [(2048, 369), (2048, 2048), (2048, 2048), (1, 2048)]
    assert sum(p.numel() for p in net.parameters()) == 369 * 2048 + 2048 + 2 * (2048 * 2048 + 2048) + 2048 + 1
    assert CC.FPD_SETTINGS == {"min_samples": 10_000} and CC.KPD_SETTINGS == {"batch_size": 10_000}


def test_fpd_of_two_fixed_gaussians_with_jetnet_settings():
    """JetNet FPD (max-|x| scaling, 1/N extrapolation, official min_samples=10k): two 4-d unit
    Gaussians 0.1 apart in each feature.  The true Fréchet distance after scaling each feature by
    the reference's max |x| (s_j) is Σ (0.1 / s_j)²."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50_000, 4))
    y = rng.normal(size=(50_000, 4)) + 0.1
    s = np.abs(x).max(axis=0)
    expected = float(np.sum((0.1 / s) ** 2))
    value, error = M.fpd(x, y, **CC.FPD_SETTINGS)
    assert value == pytest.approx(expected, rel=0.1, abs=3 * error)
    null, null_err = M.fpd(x, rng.normal(size=(50_000, 4)), **CC.FPD_SETTINGS)
    assert null < max(5 * null_err, 0.05 * expected)


def test_zero_fraction_missed_by_reference_bins_caught_by_pooled_bins():
    """60 % empty (zero) values in the reference; the model fills 20 % of them with tiny
    energies instead.  Reference-only bins put zeros and tiny values in one bin; pooled bins
    give the zeros a bin of their own."""
    rng = np.random.default_rng(0)
    n = 20_000
    ref = np.where(rng.random(n) < 0.6, 0.0, rng.exponential(1.0, n))
    u = rng.random(n)
    gen = np.where(u < 0.4, 0.0, np.where(u < 0.6, rng.uniform(0, 0.01, n), rng.exponential(1.0, n)))
    null = np.where(rng.random(n) < 0.6, 0.0, rng.exponential(1.0, n))

    def scores(edges_of, g):
        e = edges_of(g)
        r_c, g_c = M.histogram_counts(ref, e), M.histogram_counts(g, e)
        chi2, ndf = M._chi2_counts(r_c, g_c)
        return M.separation_power(r_c, g_c), chi2 / ndf

    old = lambda g: M.reference_edges(ref, 50)  # noqa: E731
    new = lambda g: M.pooled_edges(ref, g, 50)  # noqa: E731
    sp_old, chi_old = scores(old, gen)
    sp_new, chi_new = scores(new, gen)
    sp_null, chi_null = scores(new, null)
    assert sp_old < 3 * sp_null + 1e-3 and chi_old < 2  # missed: as good as an independent sample
    assert sp_new > 0.05 and chi_new > 20  # caught
    e = M.pooled_edges(ref, gen, 50)
    zero_bin = np.flatnonzero((e[:-1] < 0) & (e[1:] > 0))
    assert len(zero_bin) == 1 and e[zero_bin[0] + 1] <= 0.5 * gen[gen > 0].min()


@pytest.fixture(scope="module")
def samples():
    from caloforge.simulate import simulate

    def sim(seed):
        return simulate(DS1, "photon", [4096.0, 65536.0], 600, seed=seed)

    return sim(1), sim(2)


def test_cut_acts_in_every_metric(samples):
    """Energy added below 1 MeV to empty voxels changes nothing under the official protocol
    (the cut removes it first) but changes sparsity under the caloforge protocol."""
    ref, gen = samples
    noisy = gen.showers.copy()
    empty = noisy == 0
    noisy[empty] = np.random.default_rng(0).uniform(0.1, 0.9, int(empty.sum()))
    gen_noisy = ShowerData(gen.incident_energy, noisy)
    kw = dict(per_energy=False, classifier=True, classifier_settings=QUICK, seed=0)
    clean = compare(ref, gen, "ds1-photons", **kw)
    dirty = compare(ref, gen_noisy, "ds1-photons", **kw)
    assert clean.metrics["protocol"]["name"] == dirty.headline["protocol"] == "calochallenge"
    for key in ("fpd_x1e3", "kpd_x1e3", "auc_low", "auc_high"):
        assert dirty.headline[key] == pytest.approx(clean.headline[key], rel=1e-9, abs=1e-12), key
    sp = lambda r, f: r.metrics["features"][f]["inclusive"]["separation_power"]  # noqa: E731
    assert sp(dirty, "sparsity_layer_2") == sp(clean, "sparsity_layer_2")
    cf = compare(ref, gen_noisy, "ds1-photons", per_energy=False, fpd_kpd=False, protocol="caloforge")
    assert cf.metrics["features"]["sparsity_layer_2"]["inclusive"]["separation_power"] > 0.9


def test_compare_reports_official_names_bins_and_settings(samples):
    ref, gen = samples
    r = compare(ref, gen, "ds1-photons", classifier=True, classifier_settings=QUICK, seed=0)
    m = r.metrics
    assert m["protocol"]["voxel_cut_mev"] == 1.0 and m["protocol"]["fpd"] == {"min_samples": 10_000}
    assert m["protocol"]["official_classifier"] is False  # QUICK overrides it, and says so
    assert m["protocol"]["classifier"]["n_hidden"] == 32 and m["protocol"]["classifier"]["selection"] == "accuracy"
    f = m["features"]["CE_phi_layer_2"]["inclusive"]
    assert f["binning"] == "calochallenge" and f["official_name"] == "EC Phi layer 2"
    assert np.array_equal(r.features["CE_phi_layer_2"].edges, np.linspace(-100, 100, 101))
    assert m["features"]["n_hits"]["inclusive"]["binning"] == "pooled"
    assert m["classifier"]["high"]["n_features"] == 30 and m["classifier"]["low"]["n_features"] == 369
    assert m["classifier"]["low"]["selection"] == "accuracy"
    h = r.headline
    assert h["fpd_x1e3"] == pytest.approx(1e3 * m["fpd"]["value"]) and h["auc_high"] == m["classifier"]["high"]["auc"]
    # same physics: indistinguishable under the official definitions too
    assert abs(h["auc_low"] - 0.5) < 0.1 and abs(h["auc_high"] - 0.5) < 0.1
    assert m["summary"]["max_separation_power"] < 0.1
