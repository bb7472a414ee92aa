"""The model core: a family defined outside the package trains, resumes and generates through the
generic trainer; condition vectors; the checkpoint format; run-directory books."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import toy_family  # noqa: F401  (registers toy_lognormal, defined in tests/, not in the package)
from caloforge.cli import app
from caloforge.errors import ConfigError, DataError
from caloforge.generate import generate, load_model
from caloforge.io import ShowerData, read_showers, write_showers
from caloforge.models import families
from caloforge.train import train

DATA = Path(__file__).resolve().parent / "data"
TOY = {"model": {"name": "toy_lognormal", "geometry": "ds1-photons", "lr": 0.05},
       "training": {"batch_size": 64, "max_iterations": 40, "checkpoint_every": 10, "log_every": 5,
                    "tensorboard": False, "select_by": "val_nll", "validation_fraction": 0.25}}


def toy_showers(n: int = 120, seed: int = 0, theta: bool = False) -> ShowerData:
    """Photon-like showers whose depth profile follows the polar angle when ``theta``."""
    rng = np.random.default_rng(seed)
    e = 2.0 ** rng.integers(8, 17, n).astype(np.float64)
    showers = rng.gamma(0.6, 1.0, (n, 368)) * (rng.random((n, 368)) < 0.5)
    conditions = {}
    if theta:
        angle = rng.uniform(np.radians(60), np.radians(120), n)
        showers[:, :8] *= np.exp(3 * np.cos(angle))[:, None]  # more energy early for θ < 90°, less for θ > 90°
        conditions["incident_theta"] = angle
    showers *= (0.9 * e / np.maximum(showers.sum(1), 1e-9))[:, None]
    return ShowerData(e, showers.astype(np.float32), conditions)


def _toy(**training) -> dict:
    return {"model": dict(TOY["model"]), "training": {**TOY["training"], **training}}


# ----------------------------------------------------------------------------------
# A new family is one file: trains, resumes, generates with no change to the trainer
# ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_family_defined_in_a_test_file_trains_resumes_and_generates(tmp_path):
    assert "toy_lognormal" in families()
    data = toy_showers()
    straight = train(_toy(), data, tmp_path / "straight", progress=False)
    assert straight.stopped == "completed" and straight.iterations == 40
    # half, then resume: bit-identical to the straight run
    train(_toy(max_iterations=20), data, tmp_path / "split", progress=False)
    resumed = train(_toy(), data, tmp_path / "split", resume=True, progress=False)
    assert resumed.iterations == 40
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(tmp_path / "straight" / "checkpoints" / "iter-0000040" / name)
        b = load_file(tmp_path / "split" / "checkpoints" / "iter-0000040" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the model's own loss names in log.csv, its validation metric in scores.csv, best chosen by it
    with open(tmp_path / "straight" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["iteration", "elapsed_s", "nll"]
    assert float(rows[-1]["nll"]) < float(rows[0]["nll"])  # it learns
    with open(tmp_path / "straight" / "scores.csv") as f:
        scores = list(csv.DictReader(f))
    assert set(scores[0]) == {"iteration", "chi2_etot", "val_nll", "best"}
    best = min(scores, key=lambda r: float(r["val_nll"]))
    assert best["best"] == "1" and straight.best_iteration == int(best["iteration"])
    # and it generates through the same code as every other family
    gen = load_model(tmp_path / "straight")
    assert gen.config["name"] == "toy_lognormal" and gen.iteration == straight.best_iteration
    out = generate(gen, np.array([256.0, 65536.0]), seed=1)
    assert out.showers.shape == (2, 368) and np.isfinite(out.showers).all() and (out.showers >= 0).all()
    assert np.array_equal(out.showers, generate(gen, np.array([256.0, 65536.0]), seed=1).showers)


def test_select_by_an_unknown_score_is_refused(tmp_path):
    cfg = _toy(select_by="val_auc", max_iterations=10)
    with pytest.raises(ConfigError, match="val_auc.*chi2_etot, val_nll"):
        train(cfg, toy_showers(), tmp_path / "run", progress=False)


def test_run_json_records_threads_and_calls(tmp_path):
    data = toy_showers()
    before = torch.get_num_threads()
    train(_toy(max_iterations=10), data, tmp_path / "run", progress=False, threads=1)
    train(_toy(max_iterations=20), data, tmp_path / "run", progress=False, threads=2, resume=True)
    calls = json.loads((tmp_path / "run" / "run.json").read_text())["calls"]
    assert [(c["threads"], c["started_iteration"], c["processes"]) for c in calls] == [(1, 0, 1), (2, 10, 1)]
    assert torch.get_num_threads() == before  # restored after training


def test_resume_of_a_missing_run_is_refused_before_reading_data(tmp_path):
    with pytest.raises(ConfigError, match="cannot resume, the run directory does not exist"):
        train(_toy(), tmp_path / "no-such-data.h5", tmp_path / "nowhere", resume=True, progress=False)
    assert not (tmp_path / "nowhere").exists()
    data = tmp_path / "d.h5"
    d = toy_showers(8)
    write_showers(data, d.incident_energy, d.showers)
    r = CliRunner().invoke(app, ["train", "--config", "demo", "--data", str(data), "-o", str(tmp_path / "nowhere"),
                                 "--resume"])
    assert r.exit_code == 2 and "cannot resume" in r.output and len(r.output.strip().splitlines()) == 1


def test_progress_without_a_terminal_prints_plain_lines(tmp_path, capsys, monkeypatch):
    import caloforge.runtime as runtime

    monkeypatch.setattr(runtime.Progress, "__init__",
                        _with_interval(runtime.Progress.__init__, 0.0))  # every update, for the test
    train(_toy(max_iterations=10), toy_showers(), tmp_path / "run", progress=True)
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("train: ")]
    assert lines and "10/10 (100%)" in lines[-1] and "it/s" in lines[-1] and "ETA" in lines[-1]
    assert "\x1b[" not in "".join(lines)  # no terminal escapes in logs


def _with_interval(init, interval):
    def patched(self, *args, **kwargs):
        kwargs["interval"] = interval
        init(self, *args, **kwargs)

    return patched


# ----------------------------------------------------------------------------------
# Conditions as a vector
# ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_angle_condition_is_learnt_and_required(tmp_path):
    data = toy_showers(400, theta=True)
    cfg = _toy(max_iterations=150, checkpoint_every=50)
    cfg["model"]["conditions"] = {"incident_energy": "log", "incident_theta": "cos"}
    res = train(cfg, data, tmp_path / "run", progress=False)
    gen = load_model(res.run_dir)
    assert gen.condition_names == ["incident_energy", "incident_theta"]
    e = np.full(2000, 4096.0)
    early = lambda theta: generate(gen, e, conditions={"incident_theta": np.full(2000, theta)}, seed=2).showers[:, :8].sum(1).mean()
    # the model learnt that the first voxels take more energy at 62° than at 90°, and more at 90° than at 118°
    assert early(np.radians(62)) > 1.5 * early(np.radians(90)) > 2.25 * early(np.radians(118))
    with pytest.raises(ConfigError, match="conditioned on incident_theta"):
        generate(gen, e)
    # a training file without the requested condition: one line naming the file and the dataset
    plain = tmp_path / "plain.h5"
    d = toy_showers(20)
    write_showers(plain, d.incident_energy, d.showers)
    with pytest.raises(DataError, match=rf"{plain}.*no 'incident_theta' dataset"):
        train(cfg, plain, tmp_path / "run2", progress=False)
    # generate --like streams the conditions to the model; --theta gives them by hand
    ref = tmp_path / "ref.h5"
    write_showers(ref, data.incident_energy[:30], data.showers[:30], conditions={"incident_theta": data.conditions["incident_theta"][:30]})
    runner = CliRunner()
    r = runner.invoke(app, ["generate", "--model", str(res.run_dir), "--like", str(ref), "-o", str(tmp_path / "g.h5")])
    assert r.exit_code == 0, r.output
    g = read_showers(tmp_path / "g.h5")
    assert np.allclose(g.conditions["incident_theta"], data.conditions["incident_theta"][:30])
    r = runner.invoke(app, ["generate", "--model", str(res.run_dir), "--energies", "4GeV", "--n", "5",
                            "--theta", "60:120", "-o", str(tmp_path / "t.h5")])
    assert r.exit_code == 0, r.output
    theta = read_showers(tmp_path / "t.h5").conditions["incident_theta"]
    assert len(theta) == 5 and np.all((theta >= np.radians(60)) & (theta <= np.radians(120)))
    r = runner.invoke(app, ["generate", "--model", str(res.run_dir), "--energies", "4GeV", "--n", "5",
                            "-o", str(tmp_path / "x.h5")])
    assert r.exit_code == 2 and "--theta" in r.output and not (tmp_path / "x.h5").exists()


def test_kinetic_energy_condition_refuses_energies_below_the_mass(tmp_path):
    cfg = _toy(max_iterations=5)
    cfg["model"].update(energy_condition="kinetic", particle="pion")
    d = toy_showers(20)
    d.incident_energy[0] = 100.0  # below m_π
    with pytest.raises(DataError, match="kinetic energy"):
        train(cfg, d, tmp_path / "run", progress=False)


# ----------------------------------------------------------------------------------
# The checkpoint format
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["v1-caloshowergan", "v1-caloshowergan-split"])
def test_caloforge_0_1_checkpoints_generate_the_same_showers(name):
    """Written by caloforge 0.1 (tests/data), upgraded on load: the same showers for the same seed.

    The same noise and the same weights; the float32 kernels of CPUs with and without AVX-512
    round differently in the last bits (2026-11-24: up to 8e-6 relative on an AVX2-only EPYC),
    so the voxels are compared to float32 precision and the empty voxels exactly."""
    gen = load_model(DATA / name)
    out = generate(gen, np.array([1000.0, 8000.0, 65536.0]), seed=3).showers
    expected = np.load(DATA / name / "expected_seed3.npy")
    assert np.array_equal(out == 0, expected == 0) and (expected > 0).sum() > 100
    np.testing.assert_allclose(out, expected, rtol=5e-5, atol=1e-6)


def test_a_0_1_checkpoint_cannot_be_resumed_and_says_so(tmp_path):
    import shutil

    from caloforge import checkpoint

    shutil.copytree(DATA / "v1-caloshowergan", tmp_path / "c")
    model, _ = checkpoint.restore_model(tmp_path / "c")
    with pytest.raises(DataError, match="caloforge 0.1.*start a new run"):
        checkpoint.load_training_state(tmp_path / "c", model, model.configure_optimizers(), torch.device("cpu"))


def test_absurd_sizes_are_refused_before_any_allocation(tmp_path):
    import shutil

    shutil.copytree(DATA / "v1-caloshowergan", tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    meta["model"]["generator_hidden"] = [4_000_000_000]  # 16 GB for one layer if it were allocated
    (tmp_path / "c" / "config.json").write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="refusing to allocate|weights do not match"):
        load_model(tmp_path / "c")
    assert time.perf_counter() - t0 < 5
    meta["model"]["generator_hidden"] = [9]  # small, but not what the weights are
    (tmp_path / "c" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"weights do not match config.json \(generator.net.0.bias is \(8,\) in the file, \(9,\)"):
        load_model(tmp_path / "c")


def test_checkpoint_holds_family_state_and_version(tmp_path):
    res = train(_toy(max_iterations=10), toy_showers(), tmp_path / "run", progress=False)
    meta = json.loads((res.best_checkpoint / "config.json").read_text())
    assert (meta["format"], meta["version"], meta["family"]) == ("caloforge-checkpoint", 2, "toy_lognormal")
    assert meta["state"]["preprocessing"]["name"] == "chain"  # the fitted transforms travel with the weights
    assert meta["condition_names"] == ["incident_energy"] and meta["noise_dim"] == 368
