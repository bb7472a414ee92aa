"""`caloforge simulate` on the command line."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.io import read_showers

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["simulate", *args])


def test_simulate_energies_writes_a_valid_file(tmp_path):
    out = tmp_path / "photons.h5"
    r = run("--geometry", "calogan", "--particle", "photon", "--energies", "1GeV,10GeV", "--n", "40",
            "--seed", "3", "-o", str(out), "--workers", "1", "--quiet")
    assert r.exit_code == 0, r.output
    assert "wrote 80 showers" in r.output
    d = read_showers(out, geometry="calogan")
    assert sorted(set(d.incident_energy.tolist())) == [1e3, 1e4]
    # same seed → identical file contents
    out2 = tmp_path / "again.h5"
    run("--geometry", "calogan", "--particle", "photon", "--energies", "1GeV,10GeV", "--n", "40",
        "--seed", "3", "-o", str(out2), "--workers", "2", "--quiet")
    assert np.array_equal(read_showers(out2).showers, d.showers)


def test_simulate_range_log_theta(tmp_path):
    out = tmp_path / "ild.h5"
    r = run("-g", "ild", "-p", "photon", "--energy-range", "10GeV:100GeV", "--log", "--theta", "30:90",
            "--n", "30", "--seed", "1", "-o", str(out), "-j", "1")
    assert r.exit_code == 0, r.output
    d = read_showers(out, geometry="ild")
    assert len(d) == 30 and set(d.conditions) == {"incident_theta", "incident_phi", "impact_x", "impact_y"}
    assert np.all(np.degrees(d.conditions["incident_theta"]) <= 90.0)


def test_simulate_preset(tmp_path):
    out = tmp_path / "atlas.h5"
    r = run("--preset", "atlas-4layer", "--scale", "0.001", "--seed", "0", "-o", str(out), "-j", "1", "-q")
    assert r.exit_code == 0, r.output
    assert len(read_showers(out, geometry="atlas-4layer")) == 90


@pytest.mark.parametrize("args, needle", [
    (["-g", "calogan", "-p", "photon", "--energies", "1GeX", "--n", "5"], "unknown unit"),
    (["-g", "calogan", "-p", "muon", "--energies", "1GeV", "--n", "5"], "unknown particle"),
    (["-g", "calogan", "-p", "photon", "--energies", "1GeV", "--energy-range", "1GeV:2GeV", "--n", "5"],
     "exactly one"),
    (["-g", "calogan", "-p", "photon", "--energy-range", "1GeV:2GeV", "--theta", "200", "--n", "5"], "angle"),
    (["-g", "nowhere", "-p", "photon", "--energies", "1GeV", "--n", "5"], "unknown geometry"),
    (["--preset", "nope"], "unknown preset"),
    (["--preset", "ds1-photons", "--n", "5"], "--preset fixes"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    out = tmp_path / "x.h5"
    r = runner.invoke(app, ["simulate", *args, "-o", str(out), "-j", "1"])
    assert r.exit_code == 2
    text = r.output.strip() if r.output.strip() else str(r.stderr).strip()
    assert needle in text and len(text.splitlines()) == 1, text
    assert not out.exists()


def test_energy_scale_option(tmp_path):
    """calogan files are calibrated by default (its dataset's convention): E_tot/E_inc ≈ 1;
    --energy-scale visible gives the LAr signal, the sampling fraction 0.2 of that; the file
    records which; a bad value is one line and exit 2."""
    import h5py

    common = ["-g", "calogan", "-p", "electron", "--energies", "20GeV", "--n", "30", "--seed", "5", "-j", "1", "-q"]
    cal, vis = tmp_path / "cal.h5", tmp_path / "vis.h5"
    assert run(*common, "-o", str(cal)).exit_code == 0
    assert run(*common, "--energy-scale", "visible", "-o", str(vis)).exit_code == 0
    r_cal = read_showers(cal).showers.sum(1) / 2e4
    r_vis = read_showers(vis).showers.sum(1) / 2e4
    assert 0.97 < r_cal.mean() < 1.01
    assert r_vis.mean() == pytest.approx(0.2 * r_cal.mean(), rel=1e-4)
    with h5py.File(cal) as f, h5py.File(vis) as g:
        assert (f.attrs["energy_scale"], g.attrs["energy_scale"]) == ("calibrated", "visible")
    bad = run(*common, "--energy-scale", "raw", "-o", str(tmp_path / "bad.h5"))
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1 and "energy scale" in bad.output
