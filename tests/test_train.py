"""Training: config validation, checkpoints, resume after a real SIGKILL, best selection, NaN stop, CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import caloforge.train as train_mod
from caloforge.cli import app
from caloforge.errors import ConfigError, DataError
from caloforge.io import ShowerData, write_showers
from caloforge.train import load_config, parse_duration, train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "caloforge" / "configs"
TINY = {
    "model": {"latent_dim": 8, "generator_hidden": [16], "critic_hidden": [16], "batchnorm_momentum": 0.1,
              "critic_steps": 2},
    "training": {"batch_size": 32, "max_iterations": 40, "checkpoint_every": 10,
                 "log_every": 5, "tensorboard": False, "validation_fraction": 0.25},
}


def toy_photons(n_per_energy: int = 60, seed: int = 0, energies=(256.0, 4096.0, 65536.0),
                spread: float = 0.01) -> ShowerData:
    """An easy DS1-photon-like set: a fixed voxel profile times E_inc × response (17 % ± ``spread``)."""
    rng = np.random.default_rng(seed)
    profile = rng.dirichlet(np.full(368, 0.3))
    e = np.repeat(np.asarray(energies, dtype=np.float64), n_per_energy)
    response = 0.17 * (1 + spread * rng.standard_normal(len(e)))
    jitter = rng.gamma(20.0, 1 / 20.0, (len(e), 368))
    showers = profile * jitter
    showers *= (response * e / showers.sum(1))[:, None]
    return ShowerData(e, showers.astype(np.float32))


def _tiny(**training) -> dict:
    return {"model": dict(TINY["model"]), "training": {**TINY["training"], **training}}


# ----------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["caloshowergan-photons", "caloshowergan-pions", "demo",
                                  "caloshowergan-photons-split2", "caloshowergan-photons-split3"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.name == ("energy_split" if "split" in name else "caloshowergan")
    assert load_config(name) == cfg  # shipped configs load by name too
    assert (REPO / "configs" / f"{name}.yaml").exists()  # the repo's configs/ symlink


def test_shipped_configs_carry_the_published_hyperparameters():
    ph = load_config(CONFIGS / "caloshowergan-photons.yaml").model
    pi = load_config(CONFIGS / "caloshowergan-pions.yaml").model
    assert (ph.critic_steps, ph.gp_lambda) == (8, 3.0) and (pi.critic_steps, pi.gp_lambda) == (5, 20.0)
    assert load_config(CONFIGS / "caloshowergan-pions.yaml").training.batch_size == 1024
    assert (pi.energy_condition, pi.particle) == ("kinetic", "pion")  # the paper conditions on E_kin
    assert (ph.generator_optimizer.lr, ph.generator_optimizer.beta1, ph.critic_optimizer.beta1) == (1e-4, 0.5, 0.9)
    assert (pi.critic_optimizer.beta1, pi.critic_optimizer.beta2) == (0.5, 0.999)


@pytest.mark.parametrize(
    "text, key",
    [
        ("training: {batchsize: 3}", "training.batchsize"),
        ("model: {latent: 3}", "model.latent"),
        ("model: {generator_optimizer: {lrr: 1}}", "model.generator_optimizer.lrr"),
        ("training: {critic_steps: 3}", "model.critic_steps"),  # moved in 0.2: the error says where to
        ("model: {conditions: {incident_theta: cos}}", "model.conditions"),
        ("model: {conditions: {incident_energy: log, incident_thetta: cos}}", "model.conditions.incident_thetta"),
        ("model: {conditions: {incident_energy: sqrt}}", "model.conditions.incident_energy"),
        ("model: {energy_condition: kinetic, particle: muon2}", "model.particle"),
        ("model: {name: energy_split, boundaries: [4100], ranges: [{}]}", "model.ranges"),
        ("model: {name: energy_split, common: {geometry: ds2}}", "model.common.geometry"),
        ("model: {name: energy_split, family: energy_split}", "model.family"),
        ("model: {name: energy_split, ranges: [{latent_dimm: 3}]}", "model.ranges[0].latent_dimm"),
        ("extra: 1", "extra"),
        ("training: {batch_size: -1}", "training.batch_size"),
        ("training: {batch_size: 12.5}", "training.batch_size"),
        ("model: {critic_optimizer: {beta1: 1.5}}", "model.critic_optimizer.beta1"),
        ("training: {validation_fraction: 1.0}", "training.validation_fraction"),
        ("training: {max_time: soon}", "training.max_time"),
        ("training: {budget_clock: cpu-ish}", "training.budget_clock"),
        ("training: {tensorboard: maybe}", "training.tensorboard"),
        ("model: {generator_activation: gelu2}", "model.generator_activation"),
        ("model: {critic_init: zeros}", "model.critic_init"),
        ("model: {name: energy_split, boundaries: [262000, 4100]}", "model.boundaries"),
        ("model: {energy_range: [10]}", "model.energy_range"),
        ("model: {geometry: nowhere-9}", "model.geometry"),
        ("model: {name: diffusion}", "model.name"),
        ("model: {generator_hidden: []}", "model.generator_hidden"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and key in msg


def test_config_yaml_syntax_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: {latent_dim: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_parse_duration():
    assert parse_duration("10m") == 600 and parse_duration("2h") == 7200 and parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90 and parse_duration("45") == 45 and parse_duration(1.5) == 1.5
    for bad in ("", "ten minutes", "-5m", "0s", "10x"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


# ----------------------------------------------------------------------------------
# Training runs
# ----------------------------------------------------------------------------------
def _scores(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "scores.csv") as f:
        return [(int(r["iteration"]), float(r["chi2_etot"])) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_run_directory_checkpoints_and_best_by_chi2(tmp_path):
    from caloforge.evaluate.metrics import total_energy_chi2
    from caloforge.generate import load_model

    data = toy_photons()
    res = train(_tiny(max_iterations=40, keep_checkpoints=2, tensorboard=True), data, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert res.stopped == "completed" and res.iterations == 40
    history = _scores(run)
    assert [i for i, _ in history] == [10, 20, 30, 40] == [i for i, _ in res.history]
    best_it, best_score = min(((s, i) for i, s in history))[::-1]
    assert res.best_iteration == best_it and res.best_score == pytest.approx(best_score)
    assert (run / "best").resolve() == (run / "checkpoints" / f"iter-{best_it:07d}").resolve()
    # older checkpoints are pruned, the best and the newest are kept
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert f"iter-{best_it:07d}" in kept and "iter-0000040" in kept and len(kept) <= 3
    meta = json.loads((run / "best" / "config.json").read_text())
    assert meta["iteration"] == best_it and meta["geometry"] == "ds1-photons" and meta["n_voxels"] == 368
    assert meta["energy_limits"] == [256.0, 65536.0] and meta["family"] == "caloshowergan"
    assert meta["format"] == "caloforge-checkpoint" and meta["version"] == 2
    cost = meta["training_cost"]  # what a leaderboard prints as CPU minutes
    assert cost["device"] == "cpu" and cost["processes"] == 1 and cost["wall_s"] > 0
    assert {"model.safetensors", "optimizer.safetensors", "config.json"} <= {p.name for p in (run / "best").iterdir()}
    # the stored score is the E_tot χ² of the best weights on the held-out split (same seed → same showers)
    _, val = train_mod.split_validation(data, 0.25, 0)
    gen = load_model(run / "best")
    rng = torch.Generator().manual_seed(3)
    etot = gen.model.sample(val.incident_energy, rng).double().sum(1).numpy()
    assert total_energy_chi2(val.incident_energy, val.showers.sum(1), val.incident_energy, etot) == pytest.approx(best_score)
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(5, 45, 5))
    assert all(math.isfinite(float(r["critic_loss"])) for r in rows)
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())


@pytest.mark.slow
def test_training_improves_total_energy_chi2(tmp_path):
    """On an easy dataset the E_tot χ² of the best checkpoint beats the first one by a wide margin."""
    cfg = _tiny(max_iterations=400, checkpoint_every=50, batch_size=64, validation_fraction=0.5)
    cfg["model"].update(latent_dim=16, generator_hidden=[32, 64], critic_hidden=[64, 64], voxel_scale=100.0)
    cfg["model"]["generator_optimizer"] = {"lr": 1e-3, "beta1": 0.5, "beta2": 0.999}
    cfg["model"]["critic_optimizer"] = {"lr": 1e-3, "beta1": 0.5, "beta2": 0.999}
    res = train(cfg, toy_photons(200, spread=0.1), tmp_path / "run", progress=False)
    first = res.history[0][1]
    assert res.best_score < 0.5 * first, res.history


@pytest.mark.slow
def test_nan_loss_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from caloforge.models.caloshowergan import CaloShowerGAN

    real_step = CaloShowerGAN.training_step
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        out = real_step(self, *args, **kwargs)
        if calls["n"] >= 26:  # the loss blows up at iteration 26
            out["generator_loss"] = float("nan")
        return out

    monkeypatch.setattr(CaloShowerGAN, "training_step", flaky)
    res = train(_tiny(max_iterations=40), toy_photons(), tmp_path / "run", progress=False)
    assert res.stopped == "diverged" and res.iterations == 26
    assert "iteration 26" in res.message and "generator loss is nan" in res.message
    assert res.last_checkpoint.name == "iter-0000020" and str(res.last_checkpoint) in res.message
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())[-1] == "iter-0000020"
    weights = load_file(res.last_checkpoint / "model.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in weights.values())


@pytest.mark.slow
def test_energy_split_training_routes_ranges(tmp_path):
    from caloforge.generate import generate, load_model

    cfg = _tiny(max_iterations=10)
    low = {"generator_hidden": [8], "generator_activation": "relu"}
    cfg["model"] = {"name": "energy_split", "family": "caloshowergan", "boundaries": [4100.0],
                    "common": {k: v for k, v in cfg["model"].items()}, "ranges": [low, {}]}
    train(cfg, toy_photons(), tmp_path / "run", progress=False)
    gen = load_model(tmp_path / "run")
    assert len(gen.model.parts) == 2
    assert [p.energy_limits for p in gen.model.parts] == [(256.0, 4096.0), (65536.0, 65536.0)]
    # a sub-config per range: the low range has its own generator
    assert gen.model.parts[0].config.generator_hidden == [8] and gen.model.parts[1].config.generator_hidden == [16]
    assert isinstance(gen.model.parts[0].generator.net[2], torch.nn.ReLU)
    out = generate(gen, [256.0, 65536.0])
    assert out.showers.shape == (2, 368) and np.isfinite(out.showers).all()


@pytest.mark.slow
def test_resume_refuses_a_changed_config_and_a_fresh_run_refuses_an_old_dir(tmp_path):
    data = toy_photons()
    train(_tiny(max_iterations=10), data, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(_tiny(max_iterations=10), data, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="training.batch_size"):
        train(_tiny(max_iterations=20, batch_size=16), data, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(DataError, match="data showers differ"):
        train(_tiny(max_iterations=20), toy_photons(seed=1), tmp_path / "run", resume=True, progress=False)


def test_seed_override_and_best_path(tmp_path):
    data = toy_photons()
    a = train(_tiny(max_iterations=5, checkpoint_every=5), data, tmp_path / "a", progress=False, seed=3)
    b = train(_tiny(max_iterations=5, checkpoint_every=5, seed=3), data, tmp_path / "b", progress=False)
    assert a.best_path == tmp_path / "a" / "best" and a.best_path.is_dir()
    assert json.loads((tmp_path / "a" / "run.json").read_text())["config"]["training"]["seed"] == 3
    wa, wb = (load_file(r.best_path / "model.safetensors") for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the same seed, however given, is the same run
    with pytest.raises(ConfigError, match="seed"):
        train(_tiny(), data, tmp_path / "c", progress=False, seed=-1)


def test_training_cost_adds_up_over_resumed_calls(tmp_path):
    data = toy_photons(n_per_energy=20)
    train(_tiny(max_iterations=5, checkpoint_every=5, keep_checkpoints=5), data, tmp_path / "run", progress=False)
    train(_tiny(max_iterations=10, checkpoint_every=5, keep_checkpoints=5), data, tmp_path / "run", resume=True,
          progress=False)
    first, second = (json.loads((tmp_path / "run" / "checkpoints" / f"iter-{i:07d}" / "config.json").read_text())
                     ["training_cost"]["wall_s"] for i in (5, 10))
    assert 0 < first < second  # the resumed call adds its own time to the first call's


def test_bad_training_data_is_a_data_error(tmp_path):
    bad = toy_photons(5)
    bad.showers[3, 7] = np.nan
    with pytest.raises(DataError, match=r"NaN/inf \(row 3\)"):
        train(_tiny(), bad, tmp_path / "r", progress=False)
    with pytest.raises(DataError, match="368"):
        train(_tiny(), ShowerData(np.ones(4), np.ones((4, 10))), tmp_path / "r", progress=False)


def test_time_budget_stops_and_checkpoints(tmp_path):
    res = train(_tiny(max_iterations=10**6, checkpoint_every=10**5), toy_photons(), tmp_path / "run",
                max_time="1s", progress=False)
    assert res.stopped == "max_time" and 0 < res.iterations < 10**6
    assert res.last_checkpoint.name == f"iter-{res.iterations:07d}"


def test_cpu_budget_counts_process_time_not_wall_time(tmp_path, monkeypatch):
    """With budget_clock=cpu, time spent asleep (another job holding the core) is not charged."""
    import time as _time

    cpu = iter(range(0, 10**6))  # a CPU clock that advances 1 s per reading
    monkeypatch.setattr(_time, "process_time", lambda: float(next(cpu)))
    res = train(_tiny(max_iterations=10**6, checkpoint_every=10**5), toy_photons(), tmp_path / "run",
                max_time="5s", budget_clock="cpu", progress=False)
    assert res.stopped == "max_time" and res.iterations == 5
    with pytest.raises(ConfigError, match="--budget-clock"):
        train(_tiny(), toy_photons(), tmp_path / "r2", budget_clock="gpu", progress=False)


# ----------------------------------------------------------------------------------
# Resume after a real SIGKILL is bit-identical
# ----------------------------------------------------------------------------------
def _train_cmd(cfg: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "caloforge.cli", "train", "--config", str(cfg), "--data", str(data),
            "-o", str(out), "--no-progress", *extra]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    import yaml

    cfg = _tiny(max_iterations=200, checkpoint_every=20, keep_checkpoints=2)
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    data = toy_photons()
    data_path = tmp_path / "train.h5"
    write_showers(data_path, data.incident_energy, data.showers)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    ref = subprocess.run(_train_cmd(cfg_path, data_path, tmp_path / "ref"), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(cfg_path, data_path, run), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(run.glob("checkpoints/iter-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.05)  # land somewhere after the first checkpoint (maybe inside the next one)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = sorted(run.glob("checkpoints/iter-*"))
    assert done and done[-1].name != "iter-0000200"

    resumed = subprocess.run(_train_cmd(cfg_path, data_path, run, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(tmp_path / "ref" / "checkpoints" / "iter-0000200" / name)
        b = load_file(run / "checkpoints" / "iter-0000200" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    assert _scores(tmp_path / "ref") == _scores(run)
    assert (tmp_path / "ref" / "best").resolve().name == (run / "best").resolve().name
    with open(run / "log.csv") as f:  # the log has no duplicated or torn rows
        its = [int(r["iteration"]) for r in csv.DictReader(f)]
    assert its == list(range(5, 205, 5))


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------
def _one_line_error(result) -> str:
    text = result.stderr if hasattr(result, "stderr") else result.output
    lines = [l for l in text.strip().splitlines() if l.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_cli_train_errors_exit_2_with_one_line(tmp_path):
    runner = CliRunner()
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("training: {batch_size: 0}\n")
    data = tmp_path / "d.h5"
    d = toy_photons(5)
    write_showers(data, d.incident_energy, d.showers)
    r = runner.invoke(app, ["train", "--config", str(cfg), "--data", str(data), "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and "training.batch_size" in _one_line_error(r)
    good = CONFIGS / "demo.yaml"
    r = runner.invoke(app, ["train", "--config", str(good), "--data", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and "missing.h5" in _one_line_error(r)
    r = runner.invoke(app, ["train", "--config", str(good), "--data", str(data), "-o", str(tmp_path / "r"),
                            "--max-time", "ten"])
    assert r.exit_code == 2 and "max-time" in _one_line_error(r)
    r = runner.invoke(app, ["train", "--config", str(good), "--data", str(data), "-o", str(tmp_path / "r"),
                            "--device", "cuda"] if not torch.cuda.is_available() else ["--help"])
    assert r.exit_code in (0, 2)
    if not torch.cuda.is_available():
        assert "CUDA" in _one_line_error(r)


def test_best_prefers_complete_checkpoints():
    """A multi-stage model's first-stage checkpoints compete for ``best`` only until the last stage has
    one; non-finite scores never win; histories written before the flag count as complete."""
    h = [{"iteration": 2, "scores": {"chi2_etot": 1.0}, "complete": False},
         {"iteration": 4, "scores": {"chi2_etot": 5.0}, "complete": True},
         {"iteration": 6, "scores": {"chi2_etot": 3.0}, "complete": True}]
    assert train_mod._best(h[:1], "chi2_etot") == (2, 1.0)  # nothing complete yet: the best so far
    assert train_mod._best(h[:2], "chi2_etot") == (4, 5.0)  # a worse score, but the model is complete
    assert train_mod._best(h, "chi2_etot") == (6, 3.0)
    legacy = [{"iteration": 2, "scores": {"chi2_etot": 2.0}}, {"iteration": 4, "scores": {"chi2_etot": math.inf}}]
    assert train_mod._best(legacy, "chi2_etot") == (2, 2.0)
    assert train_mod._best([], "chi2_etot") == (None, math.inf)
