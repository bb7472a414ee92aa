"""Interrupts, kills, full disks and bad output paths, with real signals sent to real processes.

Every run is a ``python -m caloforge`` subprocess in its own session, so that the
test can signal it at a chosen moment and clean up its worker processes afterwards.
Afterwards every final output must be absent or complete and valid, a
``.partial.h5`` must hold whole showers, and (except after ``kill -9``) no temporary
file may be left behind.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.geometry import load_geometry
from caloforge.io import read_showers, write_showers

from processes import finish, has_open, start, temps, wait_for


def _check_outputs(final: Path, expect_complete: int | None = None) -> int:
    """The final file is absent or valid (with ``expect_complete`` showers if given); the
    partial file, if any, holds whole showers.  Returns the number of showers in the partial."""
    if final.exists():
        d = read_showers(final)
        if expect_complete is not None:
            assert len(d) == expect_complete
    partial = final.with_name(final.stem + ".partial.h5")
    if not partial.exists():
        return 0
    d = read_showers(partial)  # validates every row: finite, non-negative, positive energies
    assert d.showers.shape[0] == len(d.incident_energy)
    assert np.all(d.showers.sum(axis=1) > 0), "a zero-filled row: the partial file holds half a write"
    return len(d)


# ----------------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------------
SIM = ["simulate", "--preset", "ds1-photons", "--scale", "0.1", "--seed", "1", "-q", "-o", "out.h5"]


@pytest.mark.parametrize("workers, delay", [(2, 0.0), (2, 0.4), (2, 1.1), (1, 0.2), (1, 0.9)])
def test_sigint_stops_simulate_with_exit_130_and_complete_files(tmp_path, workers, delay):
    p = start([*SIM, "-j", str(workers)], tmp_path)
    wait_for(p, lambda: temps(tmp_path))  # the run is under way: its temporary file exists
    time.sleep(delay)
    assert p.poll() is None, "the run ended before it was interrupted; make it longer"
    p.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    rc, out = finish(p)
    stopped = time.monotonic() - t0
    assert rc == 130, out
    assert "interrupted" in out and "Traceback" not in out and "Exception ignored" not in out, out
    assert stopped < 10.0, f"took {stopped:.1f} s to stop"  # ~0.3–1.5 s on an idle machine
    assert not (tmp_path / "out.h5").exists()
    assert temps(tmp_path) == []
    _check_outputs(tmp_path / "out.h5")


@pytest.mark.slow
def test_partial_file_keeps_the_finished_showers(tmp_path):
    """An interrupted slow run (ILD, 27 000 voxels) keeps what it finished, shower for shower."""
    from caloforge.simulate import simulate

    p = start(["simulate", "-g", "ild", "-p", "photon", "--energies", "20GeV", "--n", "5000", "--seed", "4",
               "-j", "1", "-q", "-o", "ild.h5"], tmp_path)
    wait_for(p, lambda: temps(tmp_path))
    time.sleep(3.0)  # > FLUSH_SECONDS of work, far fewer than 4096 showers
    p.send_signal(signal.SIGINT)
    rc, out = finish(p)
    assert rc == 130, out
    partial = tmp_path / "ild.partial.h5"
    assert partial.exists() and not (tmp_path / "ild.h5").exists()
    n = _check_outputs(tmp_path / "ild.h5")
    assert 0 < n < 5000
    d = read_showers(partial, geometry="ild")
    assert np.all(d.incident_energy == 20_000.0)
    # the same seed gives the same first block: the partial rows are the real showers
    from caloforge.simulate.api import block_size

    k = min(block_size(load_geometry("ild")), n)
    first = simulate("ild", "photon", [20_000.0], block_size(load_geometry("ild")), seed=4)
    assert np.array_equal(d.showers[:k], first.showers[:k])


# ----------------------------------------------------------------------------------
# kill -9 at random moments
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_leaves_no_broken_final_file(tmp_path, seed):
    delay = np.random.default_rng(seed).uniform(0.0, 2.0)
    p = start([*SIM, "-j", "2"], tmp_path)
    wait_for(p, lambda: temps(tmp_path))
    time.sleep(delay)
    p.kill()
    rc, _ = finish(p)
    final = tmp_path / "out.h5"
    assert rc == -signal.SIGKILL or final.exists()
    _check_outputs(final, expect_complete=12100)
    assert not (tmp_path / "out.partial.h5").exists()  # a kill cannot write one


# ----------------------------------------------------------------------------------
# generate and evaluate
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny trained model (the smallest config the training API takes)."""
    from caloforge.io import ShowerData
    from caloforge.train import train

    rng = np.random.default_rng(0)
    e = np.repeat([1024.0, 65536.0], 20)
    showers = rng.gamma(0.5, 1.0, (40, 368)) * (rng.random((40, 368)) < 0.4)
    config = {"model": {"latent_dim": 4, "generator_hidden": [8], "critic_hidden": [8], "voxel_scale": 100.0,
                        "critic_steps": 1},
              "training": {"batch_size": 16, "max_iterations": 2, "checkpoint_every": 2,
                           "tensorboard": False}}
    out = tmp_path_factory.mktemp("model") / "run"
    train(config, ShowerData(e, showers), out, progress=False)
    return out / "best"


GEN = ["generate", "--energies", "1GeV,60GeV", "--n", "40000", "--batch-size", "1000", "-o", "gen.h5"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, delay", [(signal.SIGINT, 0.1), (signal.SIGINT, 0.8), (signal.SIGKILL, 0.5)])
def test_generate_interrupted_or_killed(tmp_path, tiny_model, sig, delay):
    p = start([*GEN, "--model", str(tiny_model)], tmp_path)
    wait_for(p, lambda: temps(tmp_path))
    time.sleep(delay)
    assert p.poll() is None, "generation ended before the signal; make it longer"
    p.send_signal(sig)
    rc, out = finish(p)
    final = tmp_path / "gen.h5"
    if sig == signal.SIGINT:
        assert rc == 130 and "Traceback" not in out, out
        assert temps(tmp_path) == []
        assert not final.exists()
        _check_outputs(final)
    else:
        assert rc == -signal.SIGKILL
        _check_outputs(final, expect_complete=80000)


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory) -> tuple[Path, Path]:
    from caloforge.simulate import simulate

    d = tmp_path_factory.mktemp("eval")
    for seed in (1, 2):
        s = simulate("ds1-photons", "photon", [1024.0, 65536.0], 300, seed=seed)
        write_showers(d / f"s{seed}.h5", s.incident_energy, s.showers)
    return d / "s1.h5", d / "s2.h5"


def _check_report_dir(out: Path) -> None:
    """Whatever an interrupted evaluate left is complete: no temp files, valid JSON, PNG, HTML."""
    assert temps(out.parent) == []
    if (out / "metrics.json").exists():
        json.loads((out / "metrics.json").read_text())
    for png in out.glob("*.png"):
        assert png.read_bytes().endswith(b"IEND\xaeB`\x82"), png  # the PNG trailer: written whole
    if (out / "report.html").exists():
        assert (out / "report.html").read_text().rstrip().endswith("</html>")


@pytest.mark.parametrize("moment", ["reading", pytest.param("plots", marks=pytest.mark.slow), "kill"])
def test_evaluate_stops_promptly_on_sigint(tmp_path, eval_inputs, moment):
    ref, gen = eval_inputs
    out = tmp_path / "report"
    p = start(["evaluate", "--reference", str(ref), "--generated", str(gen), "--geometry", "ds1-photons",
               "-o", str(out)], tmp_path)
    if moment == "plots":  # while the report directory fills up
        wait_for(p, lambda: out.is_dir() and any(out.glob("*.png")), timeout=120)
    else:  # while it reads the files and computes features (not during interpreter start-up)
        wait_for(p, lambda: has_open(p.pid, ref.resolve()), timeout=120)
        time.sleep(0.3)
    assert p.poll() is None
    p.send_signal(signal.SIGKILL if moment == "kill" else signal.SIGINT)
    t0 = time.monotonic()
    rc, text = finish(p)
    if moment == "kill":
        assert rc == -signal.SIGKILL
        for png in out.glob("*.png"):
            assert png.read_bytes().endswith(b"IEND\xaeB`\x82"), png
        return
    assert rc == 130 and "Traceback" not in text, text
    assert time.monotonic() - t0 < 10.0
    _check_report_dir(out)


# ----------------------------------------------------------------------------------
# a full disk (a small file-size limit)
# ----------------------------------------------------------------------------------
def _limit(nbytes: int):
    def preexec() -> None:  # in the child: SIGXFSZ ignored, so a write past the limit fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return preexec


@pytest.mark.parametrize("limit", [3_000, 300_000])
def test_full_disk_simulate_is_one_line_exit_2_and_leaves_nothing(tmp_path, limit):
    p = start(["simulate", "-g", "ds1-photons", "-p", "photon", "--energies", "10GeV", "--n", "3000",
               "-j", "2", "-q", "-o", "out.h5"], tmp_path, preexec_fn=_limit(limit))
    rc, out = finish(p)
    assert rc == 2, out
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "out.h5" in lines[0] and "file too large" in lines[0], out
    assert sorted(os.listdir(tmp_path)) == []  # no final, partial or temporary file


@pytest.mark.slow
def test_full_disk_generate(tmp_path, tiny_model):
    p = start([*GEN, "--model", str(tiny_model)], tmp_path, preexec_fn=_limit(500_000))
    rc, out = finish(p)
    assert rc == 2, out
    lines = [ln for ln in out.strip().splitlines() if ln.strip() and "warning" not in ln]
    assert len(lines) == 1 and "gen.h5" in lines[0] and "file too large" in lines[0], out
    assert sorted(os.listdir(tmp_path)) == []


# ----------------------------------------------------------------------------------
# output paths (in-process: fast)
# ----------------------------------------------------------------------------------
runner = CliRunner()


def _one_line(r) -> str:
    text = r.output.strip()  # CliRunner mixes stderr into output
    assert len(text.splitlines()) == 1, text
    return text


def test_simulate_to_a_directory_is_refused_before_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    r = runner.invoke(app, ["simulate", "-g", "calogan", "-p", "photon", "--energies", "1GeV", "--n", "5",
                            "-j", "1", "-q", "-o", "adir"])
    assert r.exit_code == 2
    assert "adir: is a directory" in _one_line(r)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["adir"]  # no .adir.*.tmp left behind


@pytest.mark.parametrize("target, needle", [("afile/x.h5", "is not a directory"),
                                            ("ro/x.h5", "is not writable")])
def test_unwritable_output_locations(tmp_path, monkeypatch, target, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "ro").mkdir()
    real_access = os.access
    # root may write anywhere: simulate a read-only directory at the permission check
    monkeypatch.setattr(os, "access", lambda p, m, **kw: False if Path(p).name == "ro" else real_access(p, m, **kw))
    r = runner.invoke(app, ["simulate", "-g", "calogan", "-p", "photon", "--energies", "1GeV", "--n", "5",
                            "-j", "1", "-q", "-o", target])
    assert r.exit_code == 2
    assert needle in _one_line(r)
    r = runner.invoke(app, ["evaluate", "--reference", "a.h5", "--generated", "b.h5", "--geometry", "calogan",
                            "-o", str(Path(target).parent / "rep")])
    assert r.exit_code == 2 and needle in _one_line(r)


def test_missing_parent_directories_are_created(tmp_path):
    from caloforge.io import check_output_file

    out = tmp_path / "new" / "sub" / "x.h5"
    assert check_output_file(out) == out and not out.parent.exists()  # the check creates nothing
    r = runner.invoke(app, ["simulate", "-g", "calogan", "-p", "photon", "--energies", "1GeV", "--n", "5",
                            "-j", "1", "-q", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert len(read_showers(out)) == 5


def test_info_on_an_empty_file_says_0_showers(tmp_path):
    path = tmp_path / "empty.h5"
    write_showers(path, np.zeros(0), np.zeros((0, 368)))
    r = runner.invoke(app, ["info", str(path)])
    assert r.exit_code == 0, r.output
    assert "0 showers" in r.output and "nan" not in r.output.lower()


def test_simulate_help_says_bare_energies_are_mev():
    r = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert "bare numbers are MeV" in " ".join(r.output.split())
