"""Generation: finite non-negative output, --like, range warnings, safe loading, CLI errors."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.errors import ConfigError, DataError
from caloforge.generate import (
    OutOfRangeWarning,
    generate,
    generate_to_file,
    load_model,
    parse_energies,
    reference_energies,
)
from caloforge.io import read_showers, write_showers
from caloforge.train import train

TINY = {
    "model": {"latent_dim": 8, "generator_hidden": [16], "critic_hidden": [16], "voxel_scale": 100.0,
              "critic_steps": 1},
    "training": {"batch_size": 32, "max_iterations": 10, "checkpoint_every": 10,
                 "tensorboard": False},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from caloforge.io import ShowerData

    rng = np.random.default_rng(0)
    e = np.repeat([1024.0, 8192.0, 65536.0], 20)
    showers = rng.gamma(0.5, 1.0, (60, 368)) * (rng.random((60, 368)) < 0.4)
    showers *= (0.17 * e / np.maximum(showers.sum(1), 1e-9))[:, None]
    out = tmp_path_factory.mktemp("gen") / "run"
    train(TINY, ShowerData(e, showers), out, progress=False)
    return out


@pytest.fixture
def model(run_dir):
    return load_model(run_dir / "best")


def test_generate_is_finite_non_negative_and_reproducible(model):
    e = np.geomspace(1024.0, 65536.0, 257)
    a = generate(model, e, seed=7, batch_size=100)
    b = generate(model, e, seed=7, batch_size=100)
    c = generate(model, e, seed=8, batch_size=100)
    assert a.showers.shape == (257, 368) and a.showers.dtype == np.float32
    assert np.isfinite(a.showers).all() and (a.showers >= 0).all()
    assert np.array_equal(a.incident_energy, e)
    assert np.array_equal(a.showers, b.showers) and not np.array_equal(a.showers, c.showers)
    assert a.showers.sum() > 0


def test_run_directory_loads_its_best_checkpoint(run_dir, model):
    gen = load_model(run_dir)
    assert gen.path == model.path and gen.iteration == 10 and gen.geometry == "ds1-photons"
    assert (gen.e_min, gen.e_max) == (1024.0, 65536.0)


def test_out_of_range_energies_warn(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the range: no warning at all
        generate(model, [1024.0, 65536.0])
    with pytest.warns(OutOfRangeWarning, match="2 of 3 incident energies lie outside the trained range 1024–65536 MeV"):
        out = generate(model, [100.0, 2048.0, 1e6])
    assert np.isfinite(out.showers).all() and (out.showers >= 0).all()


def test_bad_energies_and_batch_size_are_user_errors(model, tmp_path):
    with pytest.raises(DataError, match="finite and > 0"):
        generate(model, [1000.0, -5.0])
    with pytest.raises(DataError, match="finite and > 0"):
        generate(model, [np.nan])
    with pytest.raises(ConfigError, match="batch-size"):
        generate(model, [2048.0], batch_size=0)
    with pytest.raises(ConfigError, match="batch-size"):  # refused before the output file is opened
        generate_to_file(model, tmp_path / "g.h5", [2048.0], batch_size=0)
    assert list(tmp_path.iterdir()) == []  # neither g.h5 nor g.partial.h5


def test_nan_weights_still_give_finite_non_negative_showers(model):
    with torch.no_grad():
        model.model.generator.net[-2].bias[:5] = float("nan")
    out = generate(model, [2048.0] * 4)
    assert np.isfinite(out.showers).all() and (out.showers >= 0).all()


def test_generate_to_file_streams_and_copies_conditions(model, tmp_path):
    e = np.full(25, 4096.0)
    theta = np.linspace(0.1, 0.2, 25)
    path = generate_to_file(model, tmp_path / "gen.h5", e, conditions={"incident_theta": theta}, batch_size=7, seed=3)
    data = read_showers(path, geometry="ds1-photons")
    assert len(data) == 25 and np.allclose(data.conditions["incident_theta"], theta)
    assert np.array_equal(data.showers, generate(model, e, batch_size=7, seed=3).showers)


def test_reference_energies_streams_energies_and_conditions(tmp_path):
    path = tmp_path / "ref.h5"
    e = np.linspace(1000.0, 5000.0, 11)
    write_showers(path, e, np.ones((11, 6)), conditions={"incident_theta": e / 1e4})
    with pytest.MonkeyPatch.context() as mp:  # several chunks, concatenated in order
        import caloforge.io.formats as formats

        mp.setattr(formats, "DEFAULT_CHUNK_BYTES", 8 * 6 * 4)
        energy, conditions, n_voxels = reference_energies(path)
    assert energy.tolist() == e.tolist() and conditions["incident_theta"].tolist() == (e / 1e4).tolist()
    assert n_voxels == 6
    write_showers(tmp_path / "empty.h5", np.zeros(0), np.zeros((0, 6)))
    energy, conditions, n_voxels = reference_energies(tmp_path / "empty.h5")
    assert energy.shape == (0,) and conditions == {} and n_voxels is None


def test_parse_energies():
    assert parse_energies("1GeV,65GeV").tolist() == [1000.0, 65000.0]
    assert parse_energies("256MeV, 1.5TeV, 300").tolist() == [256.0, 1.5e6, 300.0]
    for bad in ("", "1 furlong", "-3GeV", "0"):
        with pytest.raises(ConfigError):
            parse_energies(bad)


# ----------------------------------------------------------------------------------
# Safe loading: safetensors + JSON only
# ----------------------------------------------------------------------------------
class _Boom:
    def __reduce__(self):  # would run on unpickling
        return (exec, ("raise SystemExit('unpickled!')",))


def test_load_refuses_pickled_models(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load must never be called"))
    pt = tmp_path / "model.pt"
    pt.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(DataError, match="refusing to load a pickled model"):
        load_model(pt)
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(pt, d / "model.pt")
    (d / "config.json").write_text("{}")
    with pytest.raises(DataError, match="model.safetensors not found.*pickled models are never loaded"):
        load_model(d)


def test_missing_or_corrupt_models_are_data_errors(run_dir, tmp_path):
    with pytest.raises(DataError, match="no such model directory"):
        load_model(tmp_path / "nope")
    bad = tmp_path / "bad"
    shutil.copytree(run_dir / "best", bad)
    weights = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(DataError, match="corrupt or truncated safetensors"):
        load_model(bad)
    (bad / "model.safetensors").write_bytes(weights)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="not a caloforge model config"):
        load_model(bad)
    meta = json.loads((run_dir / "best" / "config.json").read_text())
    meta["model"]["latent_dim"] = 9  # weights no longer match the architecture
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="weights do not match config.json"):
        load_model(bad)
    for key, value, why in (("energy_split", [3000.0], "unknown key model.energy_split"),
                            ("generator_activation", "nope", "model.generator_activation must be")):
        edited = json.loads((run_dir / "best" / "config.json").read_text())  # the model cannot be built
        edited["model"][key] = value
        (bad / "config.json").write_text(json.dumps(edited))
        with pytest.raises(DataError, match=why):
            load_model(bad)
    for version, why in ((3, "newer than this caloforge understands"), (0, "unknown checkpoint format version")):
        edited = json.loads((run_dir / "best" / "config.json").read_text())
        edited["version"] = version
        (bad / "config.json").write_text(json.dumps(edited))
        with pytest.raises(DataError, match=why):
            load_model(bad)
    (bad / "config.json").unlink()
    with pytest.raises(DataError, match="config.json not found"):
        load_model(bad)


def test_model_file_holds_only_tensors(run_dir):
    tensors = load_file(run_dir / "best" / "model.safetensors")
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert any(k.endswith("generator.net.0.weight") for k in tensors)


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------
def _one_line(result) -> str:
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_generate_energies_and_like(run_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "gen.h5"
    r = runner.invoke(app, ["generate", "--model", str(run_dir / "best"), "--energies", "1GeV,65GeV", "--n", "5",
                            "-o", str(out), "--seed", "1"])
    assert r.exit_code == 0, r.output
    data = read_showers(out, geometry="ds1-photons")
    assert data.incident_energy.tolist() == [1000.0] * 5 + [65000.0] * 5
    assert "outside the trained range" in r.stdout  # 1 GeV < E_min = 1024 MeV

    ref = tmp_path / "ref.h5"
    e = np.array([1024.0, 2048.0, 65536.0, 4096.0])
    write_showers(ref, e, np.ones((4, 368)), conditions={"incident_phi": np.arange(4.0)})
    like = tmp_path / "like.h5"
    r = runner.invoke(app, ["generate", "-m", str(run_dir), "--like", str(ref), "-o", str(like), "--batch-size", "3"])
    assert r.exit_code == 0, r.output
    data = read_showers(like, geometry="ds1-photons")
    assert data.incident_energy.tolist() == e.tolist()  # shower for shower
    assert data.conditions["incident_phi"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert np.isfinite(data.showers).all() and (data.showers >= 0).all()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--energies", "1GeV", "--n", "3", "--like", "REF"], "either --energies"),
        (["--energies", "1GeV"], "--n"),
        (["--energies", "1 parsec", "--n", "3"], "--energies"),
        ([], "either --energies"),
        (["--like", "MISSING"], "no such file"),
    ],
)
def test_cli_generate_errors_exit_2_with_one_line(run_dir, tmp_path, args, needle):
    args = [a.replace("REF", str(tmp_path / "r.h5")).replace("MISSING", str(tmp_path / "missing.h5")) for a in args]
    r = CliRunner().invoke(app, ["generate", "-m", str(run_dir / "best"), "-o", str(tmp_path / "g.h5"), *args])
    assert r.exit_code == 2 and needle in _one_line(r)
    assert not (tmp_path / "g.h5").exists()


def test_cli_generate_bad_model_exit_2(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"\x80\x04junk")
    r = CliRunner().invoke(app, ["generate", "-m", str(tmp_path / "m.pt"), "--energies", "1GeV", "--n", "1",
                                 "-o", str(tmp_path / "g.h5")])
    assert r.exit_code == 2 and "pickled" in _one_line(r)
