"""Simulator API: energies/conditions, determinism across seeds and workers, files, presets."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

import caloforge
import caloforge.simulate as sim
from caloforge.errors import ConfigError
from caloforge.geometry import load_geometry
from caloforge.io import read_showers
from caloforge.simulate import EnergySpec, parse_angle, parse_energy, parse_energy_list, parse_range, simulate


# ----------------------------------------------------------------------------------
# units
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, mev", [("1GeV", 1e3), ("256 MeV", 256.0), ("4.2TeV", 4.2e6), ("0.5gev", 500.0),
                                        ("1e2GeV", 1e5), ("300", 300.0)])
def test_parse_energy(text, mev):
    assert parse_energy(text) == pytest.approx(mev)


@pytest.mark.parametrize("text", ["1GeX", "GeV", "-1GeV", "0MeV", "1 2 GeV", "", "nanGeV"])
def test_parse_energy_rejects_bad_values(text):
    with pytest.raises(ConfigError):
        parse_energy(text)


def test_parse_lists_ranges_angles():
    assert parse_energy_list("1GeV,2GeV").tolist() == [1e3, 2e3]
    assert parse_range("1GeV:100GeV", parse_energy) == (1e3, 1e5)
    assert parse_angle("90") == pytest.approx(math.pi / 2)
    for bad in ("100GeV:1GeV", "1GeV", "1:2:3"):
        with pytest.raises(ConfigError):
            parse_range(bad, parse_energy)
    for bad in ("0", "180", "abc", "-5"):
        with pytest.raises(ConfigError):
            parse_angle(bad)
    assert EnergySpec.parse("log:1GeV:1TeV").kind == "log-uniform"
    with pytest.raises(ConfigError):
        EnergySpec.parse("1GeV", log=True)


# ----------------------------------------------------------------------------------
# the call forms
# ----------------------------------------------------------------------------------
def test_the_package_exports_its_functions():
    assert sim.simulate is simulate and sim.simulate_preset is caloforge.simulate.simulate_preset
    assert not callable(caloforge.simulate)  # a plain package: no module class-swapping
    d = simulate("calogan", "gamma", np.array([1e3, 2e3, 3e3]), seed=1)
    assert d.showers.shape == (3, 504) and d.showers.dtype == np.float32
    assert d.conditions == {}  # perpendicular, centred: nothing to record
    assert np.all(d.showers >= 0) and np.all(np.isfinite(d.showers))


def test_energy_specs():
    listed = sim.simulate("calogan", "e-", [1e3, 4e3], n=5, seed=1)
    assert listed.incident_energy.tolist() == [1e3] * 5 + [4e3] * 5
    uni = sim.simulate("calogan", "photon", EnergySpec.uniform(1e3, 1e5), n=300, seed=1)
    assert len(uni) == 300 and uni.incident_energy.min() >= 1e3 and uni.incident_energy.max() <= 1e5
    log = sim.simulate("calogan", "photon", "log:1GeV:100GeV", n=300, seed=1)
    # log-uniform: the median sits near the geometric mean (10 GeV), uniform's near 50 GeV
    assert 6e3 < np.median(log.incident_energy) < 16e3
    assert 40e3 < np.median(uni.incident_energy) < 60e3
    assert len(sim.simulate("calogan", "photon", "1GeV,2GeV", n=3)) == 6


@pytest.mark.parametrize("kwargs", [
    dict(particle="muon", energies=[1e3]),
    dict(particle="photon", energies=[-1.0]),
    dict(particle="photon", energies=[1e3], theta=0.0),
    dict(particle="photon", energies=[1e3], theta=math.pi),
    dict(particle="photon", energies="1GeV:2GeV"),  # a range needs n
    dict(particle="photon", energies=[1e3], n=-2),
    dict(particle="photon", energies=[1e3], impact=(1.0,)),
])
def test_bad_arguments_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        sim.simulate("calogan", **kwargs)


def test_conditions_recorded_for_angles():
    d = sim.simulate("ild", "photon", [20e3] * 20, theta=(math.radians(30), math.radians(90)), seed=2)
    th = d.conditions["incident_theta"]
    assert np.all((th >= math.radians(30)) & (th <= math.radians(90))) and th.std() > 0
    assert np.all(d.conditions["incident_phi"] == 0)
    # default impact: the axis crosses the readout centre near the shower maximum,
    # so a forward-tilted shower enters on the -x side
    assert np.all(d.conditions["impact_x"][th < math.radians(80)] < 0)
    assert d.showers.sum(1).min() > 0


# ----------------------------------------------------------------------------------
# reproducibility
# ----------------------------------------------------------------------------------
def test_same_seed_identical_different_seed_differs():
    a = sim.simulate("ds1-pions", "pion", [1e4] * 50, seed=7)
    b = sim.simulate("ds1-pions", "pion", [1e4] * 50, seed=7)
    c = sim.simulate("ds1-pions", "pion", [1e4] * 50, seed=8)
    assert np.array_equal(a.showers, b.showers)
    assert not np.array_equal(a.showers, c.showers)


def test_workers_do_not_change_the_result():
    geo = load_geometry("calogan")
    n = 2 * sim.block_size(geo) + 37  # three blocks
    spec = EnergySpec.log_uniform(1e3, 5e4)
    one = sim.simulate(geo, "photon", spec, n=n, theta=(1.2, 1.9), seed=3, workers=1)
    two = sim.simulate(geo, "photon", spec, n=n, theta=(1.2, 1.9), seed=3, workers=2)
    assert np.array_equal(one.showers, two.showers)
    assert np.array_equal(one.incident_energy, two.incident_energy)
    for k in one.conditions:
        assert np.array_equal(one.conditions[k], two.conditions[k])


# ----------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------
def test_simulate_to_file_matches_memory(tmp_path):
    path = tmp_path / "out.h5"
    n = sim.simulate_to_file(path, "calogan", "photon", "1GeV:10GeV", n=700, theta=(1.0, 2.0), seed=4,
                             workers=1, chunk=256)
    assert n == 700
    mem = sim.simulate("calogan", "photon", "1GeV:10GeV", n=700, theta=(1.0, 2.0), seed=4)
    disk = read_showers(path, geometry="calogan")
    assert np.array_equal(disk.showers, mem.showers)
    assert np.allclose(disk.incident_energy, mem.incident_energy)
    assert np.allclose(disk.conditions["incident_theta"], mem.conditions["incident_theta"])
    with h5py.File(path) as f:
        assert f.attrs["generator"] == "caloforge.simulate" and int(f.attrs["seed"]) == 4


def test_interrupted_run_leaves_complete_showers(tmp_path, monkeypatch):
    from caloforge.simulate import api

    real = api.simulate_block
    calls = {"n": 0}

    def flaky(stack, task, seed):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(stack, task, seed)

    monkeypatch.setattr(api, "simulate_block", flaky)
    path = tmp_path / "run.h5"
    with pytest.raises(KeyboardInterrupt):
        sim.simulate_to_file(path, "calogan", "photon", [2e3] * 2000, seed=1, workers=1, chunk=1)
    assert not path.exists()
    partial = tmp_path / "run.partial.h5"
    data = read_showers(partial, geometry="calogan")
    block = sim.block_size(load_geometry("calogan"))
    assert len(data) == 2 * block  # two complete blocks
    monkeypatch.setattr(api, "simulate_block", real)
    full = sim.simulate("calogan", "photon", [2e3] * (2 * block), seed=1)
    assert np.array_equal(data.showers, full.showers)


# ----------------------------------------------------------------------------------
# presets
# ----------------------------------------------------------------------------------
def test_preset_counts_and_energies():
    photons = sim.preset_parts("ds1-photons")
    assert sum(p.n for p in photons) == 121_000
    e = np.unique(photons[0].energies)
    assert len(e) == 15 and e[0] == 256.0 and e[-1] == 2.0**22
    assert 118_000 <= sum(p.n for p in sim.preset_parts("ds1-pions")) <= 122_000
    atlas = np.unique(sim.preset_parts("atlas-4layer")[0].energies)
    assert atlas.tolist() == [e * 1e3 for e in (1, 2, 4, 8, 16, 32, 65, 131, 262)]
    with pytest.raises(ConfigError):
        sim.preset_parts("ds1-photons", particle="pion")
    with pytest.raises(ConfigError):
        sim.preset_parts("nope")


def test_simulate_preset_small_scale():
    d = sim.simulate_preset("ds1-photons", seed=1, scale=0.001, workers=1)
    assert d.showers.shape[1] == 368
    counts = dict(zip(*np.unique(d.incident_energy, return_counts=True)))
    assert counts[256.0] == 10 and counts[2.0**22] == 1
    clic = sim.simulate_preset("clic", seed=1, scale=0.002, workers=1, particle="pion")
    th = clic.conditions["incident_theta"]
    assert np.allclose(th[:20], math.pi / 2)  # the perpendicular set
    assert np.all((th[20:] >= math.radians(60)) & (th[20:] <= math.radians(120)))
    assert np.all((clic.incident_energy >= 1e4) & (clic.incident_energy <= 5e5))
