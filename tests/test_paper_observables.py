"""The CaloGAN / ATLAS GAN paper observables and their place in compare + the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caloforge.evaluate import compare, write_report
from caloforge.evaluate.paper_observables import (atlas_observables, calogan_observables, nearest_neighbours,
                                                  paper_observables, particle_classifier_proxy, shower_eta)
from caloforge.geometry import load_geometry
from caloforge.io import ShowerData


def _calogan_toy(n: int, seed: int, depth: float = 1.0) -> ShowerData:
    rng = np.random.default_rng(seed)
    geo = load_geometry("calogan")
    e = rng.uniform(1e3, 1e5, n)
    layers = [rng.exponential(1.0, (n, layer.n_voxels)) * w for layer, w in zip(geo.layers, (1.0, depth, depth**2))]
    x = np.concatenate(layers, 1)
    return ShowerData(e, (x * (e / x.sum(1))[:, None]).astype(np.float32))


def test_calogan_observables_separate_shallow_from_deep_showers():
    ref = _calogan_toy(300, 0)
    same = calogan_observables(ref, _calogan_toy(300, 1))
    deep = calogan_observables(ref, _calogan_toy(300, 1, depth=3.0))
    assert set(same["features"]) >= {"etot_gev", "shower_depth", "shower_depth_width", "frac_layer_2",
                                     "lateral_width_layer_1", "sparsity_layer_0"}
    assert deep["features"]["shower_depth"]["mean_generated"] > same["features"]["shower_depth"]["mean_generated"]
    assert deep["features"]["shower_depth"]["chi2_ndf"] > 10 * max(same["features"]["shower_depth"]["chi2_ndf"], 0.1)
    assert [np.shape(a) for a in same["mean_images"]["reference"]] == [(3, 96), (12, 12), (12, 6)]


def test_nearest_neighbour_finds_a_copied_shower():
    train = np.random.default_rng(0).exponential(1.0, (50, 504))
    gen = train[[7, 3, 40]] + 1e-9
    nn = nearest_neighbours(train, gen, n=3, seed=0)
    assert sorted(nn["training_index"]) == [3, 7, 40] and max(nn["distance"]) < 1e-6


@pytest.mark.slow
def test_particle_classifier_proxy():
    ref = {"positron": _calogan_toy(150, 0), "pion": _calogan_toy(150, 1, depth=4.0)}
    good = {"positron": _calogan_toy(150, 2), "pion": _calogan_toy(150, 3, depth=4.0)}
    swapped = {"positron": good["pion"], "pion": good["positron"]}
    a = particle_classifier_proxy(ref, good, epochs=10)
    b = particle_classifier_proxy(ref, swapped, epochs=10)
    assert a["train_reference_test_reference"] > 0.9 and a["train_reference_test_generated"] > 0.9
    assert b["train_reference_test_generated"] < 0.1  # a model that mixes up particles is caught


def _atlas_toy(n: int, seed: int, shift_mm: float = 0.0) -> ShowerData:
    """Narrow showers centred at the impact η (x = (η − 0.225) · 1500 mm) in every layer."""
    rng = np.random.default_rng(seed)
    geo = load_geometry("atlas-4layer")
    e = np.repeat([16e3, 32e3], n // 2)
    eta = rng.uniform(0.2, 0.25, len(e))
    x0 = (eta - 0.225) * 1500 + shift_mm
    cols = []
    for layer in geo.layers:
        xc = (np.arange(layer.nx) - 0.5 * (layer.nx - 1)) * layer.cell_x
        prof = np.exp(-0.5 * ((xc[None, :] - x0[:, None]) / 10.0) ** 2)
        cols.append(np.repeat(prof[:, None, :], layer.ny, 1).reshape(len(e), -1))
    x = np.concatenate(cols, 1) * rng.gamma(50, 1 / 50, (len(e), 1))
    return ShowerData(e, (x * (0.2 * e / x.sum(1))[:, None]).astype(np.float32), {"impact_eta": eta})


def test_atlas_average_eta_follows_particle_eta():
    ref = _atlas_toy(400, 0)
    geo = load_geometry("atlas-4layer")
    assert np.corrcoef(shower_eta(ref.showers, geo, "strips"), ref.conditions["impact_eta"])[0, 1] > 0.95
    good = atlas_observables(ref, _atlas_toy(400, 1))
    bad = atlas_observables(ref, _atlas_toy(400, 1, shift_mm=15.0))
    assert [p["energy_gev"] for p in good["energy_points"]] == [16.0, 32.0]
    centres = 0.5 * (np.array(good["eta_profile"]["edges"][1:]) + np.array(good["eta_profile"]["edges"][:-1]))
    strips = np.array(good["eta_profile"]["strips"]["generated"], dtype=float)
    assert np.nanmax(np.abs(strips - centres)) < 0.002  # fine strips (Δη 0.003) follow the particle
    mid = np.array(good["eta_profile"]["middle"]["generated"], dtype=float)
    assert np.all(np.diff(mid) > 0)  # the middle layer's coarse cells (Δη 0.025) give the slides' S shape
    assert np.abs(mid - centres).max() > np.abs(strips - centres).max()
    shifted = np.array(bad["eta_profile"]["strips"]["generated"], dtype=float)
    assert np.nanmean(shifted - centres) > 0.008  # 15 mm = Δη 0.01
    for key in ("etot_gev", "Eratio", "f3", "weta1", "e_strips_gev"):
        assert key in good["energy_points"][0]


@pytest.mark.slow
def test_compare_and_report_carry_the_paper_section(tmp_path):
    from caloforge.evaluate.paper_observables import write_paper_plots

    ref, gen = _atlas_toy(200, 0), _atlas_toy(200, 1)
    res = compare(ref, gen, "atlas-4layer", fpd_kpd=False, per_energy=False)
    assert res.metrics["paper"]["paper"] == "atlas"
    html = write_report(res, tmp_path / "rep", plots=False).read_text()
    assert "ATLAS GAN paper observables" in html
    json.loads((tmp_path / "rep" / "metrics.json").read_text())
    files = [f for _, f in write_paper_plots(res.metrics["paper"], "atlas-4layer", tmp_path / "rep")]
    assert "paper_atlas_eta.png" in files and all((tmp_path / "rep" / f).stat().st_size > 0 for f in files)
    cal = compare(_calogan_toy(100, 0), _calogan_toy(100, 1), "calogan", fpd_kpd=False, per_energy=False,
                  training=_calogan_toy(100, 2))
    assert cal.metrics["paper"]["nearest_neighbours"]["training_index"]
    html = write_report(cal, tmp_path / "cal", plots=False).read_text()
    assert "CaloGAN paper observables" in html
    files = [f for _, f in write_paper_plots(cal.metrics["paper"], "calogan", tmp_path / "cal")]
    assert {"paper_calogan_mean_images.png", "paper_calogan_nearest.png"} <= set(files)
    assert paper_observables(ref, gen, "ds1-photons") is None
