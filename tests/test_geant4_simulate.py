"""``caloforge simulate --engine geant4``: the command, its files, shards and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from caloforge.geant4.build import require_geant4
from caloforge.geometry import GEOMETRIES, load_geometry
from caloforge.simulate import block_size, simulate

_MISSING = require_geant4()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"Geant4 unavailable: {_MISSING}")

CLI = [sys.executable, "-m", "caloforge"]


def run(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_every_preset_geometry_runs_in_geant4(name):
    """Two 1 GeV showers in every preset's physical structure land in its readout."""
    geo = load_geometry(name)
    d = simulate(geo, "electron", [1000.0, 1000.0], seed=1, engine="geant4", energy_scale="visible")
    assert d.showers.shape == (2, geo.n_voxels)
    assert np.all(d.showers >= 0) and np.all(d.showers.sum(1) > 0)


def test_conditions_are_those_of_the_parametrised_engine():
    kw = dict(seed=4, theta=(1.2, 1.9), phi=(0.0, 0.5))
    n = block_size(load_geometry("clic")) + 13  # two blocks of the random streams, 13 pieces for Geant4
    g4 = simulate("clic", "photon", "1GeV:2GeV", n, engine="geant4", workers=2, **kw)
    gf = simulate("clic", "photon", "1GeV:2GeV", n, engine="gflash", **kw)
    assert np.array_equal(g4.incident_energy, gf.incident_energy)
    for k in gf.conditions:
        assert np.array_equal(g4.conditions[k], gf.conditions[k])


def test_cli_writes_a_calibrated_file_with_its_provenance(tmp_path):
    out = tmp_path / "ds2.h5"
    r = run("simulate", "--engine", "geant4", "--geometry", "ds2", "--particle", "electron",
            "--energies", "2GeV", "--n", "3", "-o", str(out), "-q", "-j", "1")
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        attrs = dict(f.attrs)
        showers, energy = f["showers"][:], f["incident_energies"][:].ravel()
    assert showers.shape == (3, 6480) and np.allclose(energy, 2000.0)
    assert attrs["engine"] == "geant4" and attrs["geant4_version"].startswith("11.")
    assert attrs["geant4_physics_list"] in ("data-free-em", "FTFP_BERT")
    assert attrs["geant4_production_cut_mm"] == 0.7 and attrs["energy_scale"] == "calibrated"
    fractions = attrs["geant4_sampling_fractions"]
    assert fractions.shape == (45,) and np.all((fractions > 0.005) & (fractions < 0.05))
    # calibrated: E_tot / E_inc ≈ 1 minus leakage (W/Si, 39 X0; sampling fluctuations ~ 17 %/√E)
    response = showers.sum(1) / energy
    assert np.all((response > 0.6) & (response < 1.3)), response
    # the 0.5 keV silicon threshold, in calibrated units
    hit = showers[showers > 0]
    assert hit.min() >= 0.5e-3 / fractions.max() * (1 - 1e-6)


@pytest.mark.slow
def test_the_ds2_preset_command(tmp_path):
    """The command a physicist types (10 showers, 1 GeV … 1 TeV log-uniform)."""
    out = tmp_path / "f.h5"
    r = run("simulate", "--engine", "geant4", "--preset", "ds2", "--scale", "0.0001", "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        assert f["showers"].shape == (10, 6480) and f.attrs["preset"] == "ds2"


@pytest.mark.slow
def test_shards_merge_into_the_unsharded_file(tmp_path):
    base = ["simulate", "--engine", "geant4", "--geometry", "calogan", "--particle", "photon",
            "--energy-range", "1GeV:3GeV"]
    common = ["--seed", "3", "-q", "-j", "1"]
    args = [*base, "--n", "20", *common]
    assert run(*args, "-o", str(tmp_path / "all.h5")).returncode == 0
    for k in (1, 2):
        r = run(*args, "--shard", f"{k}/2", "-o", str(tmp_path / f"s{k}.h5"))
        assert r.returncode == 0, r.stderr
    r = run("merge", str(tmp_path / "s2.h5"), str(tmp_path / "s1.h5"), "-o", str(tmp_path / "merged.h5"))
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "all.h5") as a, h5py.File(tmp_path / "merged.h5") as m:
        for key in a.keys():
            assert np.array_equal(a[key][:], m[key][:]), key
        assert sorted(a.attrs.keys()) == sorted(m.attrs.keys())
        assert a.attrs["plan_sha256"] == m.attrs["plan_sha256"]
    # a shard of another plan is refused, and nothing is written
    other = run(*base, "--n", "21", *common, "--shard", "2/2", "-o", str(tmp_path / "x.h5"))
    assert other.returncode == 0, other.stderr
    line = one_error_line(run("merge", str(tmp_path / "s1.h5"), str(tmp_path / "x.h5"), "-o",
                              str(tmp_path / "bad.h5")))
    assert "plan" in line
    assert not (tmp_path / "bad.h5").exists()


def test_a_geometry_without_sampling_structure_is_refused(tmp_path):
    geo = tmp_path / "flat.yaml"
    geo.write_text("name: flat\nlayers:\n  - {thickness: 10, material: clic-w-si, nx: 3, ny: 3, cell_x: 5, cell_y: 5}\n")
    out = tmp_path / "f.h5"
    line = one_error_line(run("simulate", "--engine", "geant4", "-g", str(geo), "-p", "photon", "--energies",
                              "1GeV", "--n", "1", "-o", str(out)))
    assert "layer 0" in line and "sampling" in line
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_hadrons_need_a_full_geant4(tmp_path):
    from caloforge.geant4.build import ensure_built

    args = ["simulate", "--engine", "geant4", "-g", "calogan", "-p", "pion", "--energies", "10GeV", "--n", "1",
            "-o", str(tmp_path / "f.h5"), "-q"]
    if ensure_built().info.get("physics") != "data-free-em":  # a full installation: FTFP_BERT has them
        assert run(*args).returncode == 0
        return
    line = one_error_line(run(*args))
    assert "pion" in line and "geant4-config" in line
    assert not (tmp_path / "f.h5").exists()


def test_an_unbuildable_engine_is_one_line(tmp_path):
    env = {"CALOFORGE_CACHE_DIR": str(tmp_path / "cache"), "CXX": str(tmp_path / "no-such-compiler"),
           "PATH": os.environ["PATH"]}
    line = one_error_line(run("simulate", "--engine", "geant4", "-g", "calogan", "-p", "photon", "--energies",
                              "1GeV", "--n", "1", "-o", str(tmp_path / "f.h5"), env=env))
    assert "compiler" in line
    env["CXX"] = "g++"
    env["CALOFORGE_GEANT4_INCLUDE"] = str(tmp_path / "no-headers")
    line = one_error_line(run("geant4", "build", env=env))
    assert "header" in line.lower()


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    pairs = [(int(a), int(b)) for a, b in zip(out[::2], out[1::2])]
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, parent in pairs if parent == p]
        found += kids
        frontier += kids
    return found


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.slow
def test_a_killed_geant4_process_is_a_clean_error(tmp_path):
    out = tmp_path / "f.h5"
    proc = subprocess.Popen([*CLI, "simulate", "--engine", "geant4", "-g", "calogan", "-p", "electron",
                             "--energies", "2GeV", "--n", "400", "-o", str(out), "-q", "-j", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    g4 = []
    while time.monotonic() < deadline and not g4:
        time.sleep(0.5)
        g4 = [p for p in _descendants(proc.pid) if _name(p).startswith("caloforge-g4")]
    assert g4, "no Geant4 process appeared"
    time.sleep(3.0)  # let some blocks finish
    os.kill(g4[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "SIGKILL" in lines[0], err
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))
    with h5py.File(tmp_path / "f.partial.h5") as f:  # the finished showers, whole
        kept = f["showers"][:]
        assert kept.shape[0] == f["incident_energies"].shape[0] > 0
    assert np.all(kept.sum(1) > 0)
    time.sleep(1.0)
    assert not [p for p in g4 if Path(f"/proc/{p}").exists() and _name(p).startswith("caloforge-g4")]
