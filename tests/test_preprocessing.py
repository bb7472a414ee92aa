"""Invertible preprocessing, condition encodings and the runtime helpers."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from caloforge.conditions import ConditionEncoder
from caloforge.errors import ConfigError
from caloforge.preprocessing import (
    Chain,
    LayerEnergyRatios,
    Log,
    Logit,
    ScaleByEnergy,
    Standardize,
    merge_layers,
    split_layers,
    transform_from_state,
    transform_state,
)
from caloforge.runtime import Progress, resolve_device, usable_cpus


@pytest.fixture(scope="module")
def photons():
    """Simulator showers (DS1-photon geometry) in float64, with their energies and layer sizes."""
    from caloforge.geometry import load_geometry
    from caloforge.simulate import simulate

    geo = load_geometry("ds1-photons")
    data = simulate(geo, "photon", np.repeat([512.0, 16384.0, 524288.0], 30), seed=4)
    sizes = [layer.n_voxels for layer in geo.layers if layer.n_voxels]
    return (torch.as_tensor(data.showers, dtype=torch.float64), torch.as_tensor(data.incident_energy), sizes)


def _ladj_autograd(t, x, e):
    """log|det J| of ``t.forward`` for each row, from the full Jacobian by autograd."""
    out = []
    for row, energy in zip(x, e):
        jac = torch.autograd.functional.jacobian(lambda r: t.forward(r.unsqueeze(0), energy.reshape(1))[0], row)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


@pytest.mark.parametrize("make", [
    lambda: ScaleByEnergy(100.0),
    lambda: Log(1e-6),
    lambda: Chain([ScaleByEnergy(1.0), Log(1e-4), Standardize()]),
    lambda: Chain([ScaleByEnergy(1.0), Logit(1e-6)]),
])
def test_round_trip_on_simulator_showers(photons, make):
    showers, e, _ = photons
    t = make().fit(showers, e)
    back = t.inverse(t.forward(showers, e), e)
    assert torch.allclose(back, showers, rtol=1e-9, atol=1e-9)
    # and through JSON: the fitted state travels with a checkpoint
    t2 = transform_from_state(transform_state(t))
    assert torch.equal(t2.forward(showers, e), t.forward(showers, e))


@pytest.mark.parametrize("make", [
    lambda: ScaleByEnergy(7.0),
    lambda: Log(1e-3),
    lambda: Logit(1e-4),
    lambda: Chain([ScaleByEnergy(1.0), Log(1e-3), Standardize()]),
])
def test_log_jacobian_matches_autograd(photons, make):
    showers, e, _ = photons
    x, e = showers[::15, :40] / showers[::15, :40].sum(1, keepdim=True), e[::15]  # in [0, 1] for the logit
    t = make().fit(x, e)
    assert torch.allclose(t.log_abs_det_jacobian(x, e), _ladj_autograd(t, x, e), rtol=1e-8, atol=1e-8)


def test_layer_energy_ratios_invert_and_their_jacobian_matches_autograd(photons):
    showers, e, sizes = photons
    layers, fractions = split_layers(showers, sizes)
    t = LayerEnergyRatios(max_response=2.0)
    u = t.forward(layers, e)
    assert (u >= 0).all() and (u <= 1).all()  # CaloFlow's u: all in the unit interval
    assert torch.allclose(t.inverse(u, e), layers, rtol=1e-9, atol=1e-9)
    keep = layers.min(1).values > 0  # the Jacobian needs every layer's remaining energy > 0
    x, ee = layers[keep][:6], e[keep][:6]
    assert torch.allclose(t.log_abs_det_jacobian(x, ee), _ladj_autograd(t, x, ee), rtol=1e-8)
    # voxels = layer energy × fraction within the layer
    assert torch.allclose(merge_layers(layers, fractions, sizes), showers, rtol=1e-9, atol=1e-9)


def test_condition_encodings_and_state():
    e = torch.tensor([1000.0, 10000.0, 100000.0], dtype=torch.float64)
    cond = {"incident_theta": torch.tensor([math.pi / 3, math.pi / 2, 2 * math.pi / 3]),
            "incident_phi": torch.tensor([0.0, math.pi / 2, math.pi]),
            "impact_x": torch.tensor([-5.0, 0.0, 5.0])}
    enc = ConditionEncoder.fit({"incident_energy": "log", "incident_theta": "", "incident_phi": "",
                                "impact_x": "linear"}, e, cond)
    assert enc.names == ["incident_energy", "incident_theta", "incident_phi", "impact_x"]
    assert enc.dim == 5  # log E, cos θ, (sin φ, cos φ), x
    c = enc.encode(e, cond)
    assert torch.allclose(c[:, 0], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(c[:, 1], torch.tensor([0.5, 0.0, -0.5]), atol=1e-7)
    assert torch.allclose(c[:, 2:4], torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0]]), atol=1e-7)
    assert torch.allclose(c[:, 4], torch.tensor([0.0, 0.5, 1.0]))
    again = ConditionEncoder.from_state(enc.state())
    assert torch.equal(again.encode(e, cond), c)
    # the exported graph's matrix form gives the same vector
    physical = torch.stack([e, cond["incident_theta"].double(), cond["incident_phi"].double(),
                            cond["impact_x"].double()], dim=1)
    assert torch.equal(enc.encode_matrix(physical), c)


def test_device_vocabulary_is_one_everywhere():
    assert resolve_device("cpu").type == "cpu" and resolve_device(None).type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "tpu", "cuda0"):
        with pytest.raises(ConfigError, match="cpu, cuda, cuda:N or auto"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_usable_cpus_follows_affinity_and_cgroup_quota(monkeypatch, tmp_path):
    import caloforge.runtime as runtime

    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: 2.5)
    assert usable_cpus() == 2  # a 64-core host with a 2.5-CPU quota: 2 threads, not 64
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: None)
    assert usable_cpus() == 64
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {3})
    assert usable_cpus() == 1


def test_progress_prints_steady_plain_lines_without_a_terminal():
    out = io.StringIO()
    with Progress("evaluate", total=4, stream=out, interval=0.0, unit="showers") as p:
        for i in range(1, 5):
            p.update(i, f"step {i}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("evaluate: 4/4 (100%)") and lines[-1].endswith("step 4")
    quiet = io.StringIO()
    with Progress("x", total=3, stream=quiet, interval=3600.0) as p:
        p.update(1)
        p.update(2)  # within the interval: not printed
    assert len(quiet.getvalue().splitlines()) == 1
