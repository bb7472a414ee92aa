"""caloforge models inside Geant4 (``caloforge-g4-fast``): the fast-simulation model replaces e±/γ showers
in the Geant4 application, and what it deposits is what the same model generates in Python for the same
noise, voxel by voxel, in the same readout; fallbacks to full simulation are counted; bad input is one line.

Skipped where Geant4 cannot be built (as tests/test_geant4_app.py). The fast build compiles LibTorch code
(about half a minute, once: cached by source and torch version).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from caloforge.errors import ConfigError, EngineError
from caloforge.export import TOLERANCE, export_model, max_relative_deviation
from caloforge.geant4.build import ensure_built, require_geant4
from caloforge.geometry import load_geometry

_MISSING = require_geant4()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"Geant4 unavailable: {_MISSING}")


@pytest.fixture(scope="module")
def fast_build():
    return ensure_built(fast=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny ds1-photons models of three families, exported to TorchScript: {family: (model, path)}."""
    from tests.test_export import tiny_model

    out = {}
    root = tmp_path_factory.mktemp("fast-models")
    for family in ("caloshowergan", "flow_matching", "student"):
        model = tiny_model(family, 0)
        out[family] = (model, export_model(model, "torchscript", root / f"{family}.pt").path)
    return out


def _run(build, geometry, model_path, energies, scale=None, particle="photon"):
    from caloforge.geant4.runner import Geant4Process

    n = len(energies)
    z = geometry.layers[0].z_front - sum(s.thickness for s in geometry.upstream) - 1.0
    with Geant4Process(geometry, build=build, fast_model=model_path, visible_scale=scale) as g4:
        return g4.run(particle, np.arange(1, n + 1), energies, np.tile([0.0, 0.0, z], (n, 1)),
                      np.tile([0.0, 0.0, 1.0], (n, 1)))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["caloshowergan", "flow_matching", "student"])
def test_fast_showers_match_python_generation_voxel_by_voxel(fast_build, models, family):
    """Without upstream material the incident photon reaches the front face and is the event's only shower:
    the readout holds exactly the model's output for the noise Geant4 drew, times the layer's visible scale."""
    model, path = models[family]
    geo = dataclasses.replace(load_geometry("ds1-photons"), upstream=())  # same readout, nothing in front
    scale = 0.2 + 0.05 * np.arange(geo.n_layers)  # a different factor per layer: voxels must land in their layer
    out = _run(fast_build, geo, path, [1000.0, 5000.0, 20000.0, 1000.0])
    scaled = _run(fast_build, geo, path, [1000.0, 5000.0, 20000.0, 1000.0], scale=scale)
    assert out.n_fast.tolist() == [1, 1, 1, 1] and out.n_out_of_range.sum() == 0
    inputs = out.fast_inputs
    noise, cond = torch.tensor(inputs[:, :model.noise_dim]), torch.tensor(inputs[:, model.noise_dim:])
    assert cond[:, 0].tolist() == [1000.0, 5000.0, 20000.0, 1000.0]  # the track's energy, the model's condition
    with torch.no_grad():
        ref = model.export_module().eval()(noise, cond).numpy()
    assert ref.sum() > 0
    assert max_relative_deviation(ref, out.voxels) <= TOLERANCE
    # the same seed draws the same noise (the event's Geant4 engine, reseeded per event); another seed not
    assert np.array_equal(scaled.fast_inputs, out.fast_inputs)
    assert not np.array_equal(out.fast_inputs[0], out.fast_inputs[3])
    layer = geo.voxel_layer
    assert max_relative_deviation(ref * scale[layer], scaled.voxels) <= TOLERANCE
    per_layer = np.stack([np.bincount(layer, weights=v, minlength=geo.n_layers) for v in ref * scale[layer]])
    np.testing.assert_allclose(scaled.active, per_layer, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scaled.active + scaled.passive,
                               np.stack([np.bincount(layer, weights=v, minlength=geo.n_layers) for v in ref]),
                               rtol=1e-5, atol=1e-5)
    assert (out.model_cpu > 0).all() and (out.model_cpu <= out.cpu_seconds).all()


@pytest.mark.slow
def test_out_of_range_particles_are_transported_and_counted(fast_build, models, tmp_path):
    model, path = models["caloshowergan"]
    geo = dataclasses.replace(load_geometry("ds1-photons"), upstream=())
    lo, hi = model.energy_limits
    out = _run(fast_build, geo, path, [0.5 * lo, 2000.0, 0.5 * lo])
    assert out.n_fast.tolist() == [0, 1, 0] and out.n_out_of_range.tolist() == [1, 0, 1]
    assert (out.voxels[[0, 2]].sum(1) > 0).all()  # full simulation took over in the same readout
    # the file says how many showers the model made and how many fell back
    from caloforge.simulate.api import make_part, write_plan

    part = make_part("photon", [0.5 * lo, 0.5 * lo, 2000.0], None)
    write_plan(tmp_path / "f.h5", "ds1-photons", [part], seed=1, workers=1, energy_scale="visible",
               engine=_setup("ds1-photons", part, path))
    with h5py.File(tmp_path / "f.h5") as f:
        # the envelope starts at the upstream material (ds1-photons: 178 mm of Al), where the data set's
        # incident photon starts: the model takes the 2 GeV photon, the low ones are counted fallbacks
        assert f.attrs["geant4_fast_fallback_out_of_range"] == 2 and f.attrs["geant4_fast_fallback_wrong_entry"] == 0
        assert f.attrs["geant4_fast_model_family"] == "caloshowergan"
        assert f.attrs["geant4_fast_fast_showers"] == 1 and f.attrs["geant4_fast_full_showers"] == 2
        assert f["showers"].shape == (3, 368)


@pytest.mark.slow
def test_full_and_fast_in_the_same_process(fast_build, models):
    """``fast off`` transports everything (the speed-up is measured in one program); ``fast on`` again."""
    from caloforge.geant4.runner import Geant4Process

    geo = dataclasses.replace(load_geometry("ds1-photons"), upstream=())
    z = geo.layers[0].z_front - 1.0
    with Geant4Process(geo, build=fast_build, fast_model=models["flow_matching"][1]) as g4:
        args = ("photon", [7, 8], [3000.0, 3000.0], np.tile([0.0, 0.0, z], (2, 1)), np.tile([0.0, 0.0, 1.0], (2, 1)))
        fast1 = g4.run(*args)
        g4.set_fast(False)
        full = g4.run(*args)
        g4.set_fast(True)
        fast2 = g4.run(*args)
        g4.set_fast_batch("block")  # one batch for the block's events, added into their records afterwards
        block = g4.run("photon", [7, 8, 9], [3000.0, 3000.0, 0.1], np.tile([0.0, 0.0, z], (3, 1)),
                       np.tile([0.0, 0.0, 1.0], (3, 1)))
    # the same noise; batch 2 instead of 1 in the network: float32 rounding apart, the same showers
    assert max_relative_deviation(fast1.voxels, block.voxels[:2]) <= TOLERANCE
    np.testing.assert_allclose(block.active[:2], fast1.active, rtol=1e-5)
    np.testing.assert_array_equal(block.fast_inputs[:2], fast1.fast_inputs)
    assert block.n_fast.tolist() == [1, 1, 0] and block.n_out_of_range.tolist() == [0, 0, 1]
    assert (block.model_cpu[:2] > 0).all() and block.model_cpu[2] == 0 and block.model_cpu[0] == block.model_cpu[1]
    assert fast1.n_fast.tolist() == [1, 1] and full.n_fast.tolist() == [0, 0] and full.model_cpu.sum() == 0
    np.testing.assert_array_equal(fast1.voxels, fast2.voxels)  # seeded per event: the same noise again
    assert (full.voxels.sum(1) > 0).all() and not np.array_equal(full.voxels, fast1.voxels)
    assert (full.active.sum(1) > 0).all()


def _setup(geometry, part, path):
    from caloforge.simulate.api import setup_engine

    return setup_engine(load_geometry(geometry), [part], "geant4", "visible", fast_model=path)


@pytest.mark.slow
def test_bad_fast_models_are_one_line(fast_build, models, tmp_path):
    from caloforge.geant4.runner import Geant4Process
    from caloforge.simulate.api import make_part

    _, path = models["caloshowergan"]
    part = make_part("photon", [1000.0], None)
    with pytest.raises(ConfigError, match="trained on geometry 'ds1-photons' .* not on the simulated 'calogan'"):
        _setup("calogan", part, path)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model\n")
    with pytest.raises(ConfigError, match="not a TorchScript export, run directory or checkpoint"):
        _setup("ds1-photons", part, broken)
    # past the Python checks (a direct run): the application's own one-line errors, no crash
    plain = tmp_path / "plain.pt"
    with pytest.warns(DeprecationWarning):
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    for bad, message in ((broken, "not a TorchScript model file"), (plain, "not a caloforge export"),
                         (models["caloshowergan"][1], None)):
        geo = load_geometry("calogan" if message is None else "ds1-photons")
        with pytest.raises(EngineError) as err:
            Geant4Process(geo, build=fast_build, fast_model=bad)
        text = str(err.value)
        assert "\n" not in text and (message or "generates 368 voxels") in text, text
    done = subprocess.run([sys.executable, "-m", "caloforge.cli", "simulate", "--engine", "geant4", "--fast-model",
                           str(path), "--geometry", "calogan", "--particle", "photon", "--energies", "1GeV", "--n", "1",
                           "-o", str(tmp_path / "x.h5"), "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "trained on geometry" in done.stderr and not (tmp_path / "x.h5").exists()
