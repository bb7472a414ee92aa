"""The shower-transformer family: patch tokens of r–α and Cartesian grids, config errors, a toy
distribution learnt, export with a chosen sampler, train → resume → generate.  ONNX and TorchScript
parity for every family, this one included, is in tests/test_export.py."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from caloforge.errors import ConfigError
from caloforge.export import TOLERANCE, export_model
from caloforge.generate import generate, load_model
from caloforge.geometry import load_geometry
from caloforge.io import ShowerData
from caloforge.models import load_config
from caloforge.models.base import BatchSource, fit
from caloforge.models.shower_transformer import auto_patch, patch_coordinates, voxel_grid
from caloforge.train import train

TOY_SIW = str(Path(__file__).resolve().parent / "data" / "toy-siw.yaml")  # 6 layers × 8 × 8 Cartesian cells


def _model_section(**keys) -> dict:
    return {**dataclasses.asdict(load_config("shower-transformer-tiny").model), **keys}


def _random_showers(geo, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e = torch.tensor([1000.0, 50000.0] * (n // 2), dtype=torch.float64)
    showers = torch.rand(n, geo.n_voxels, generator=g) * (e[:, None] / geo.n_voxels).float()
    showers[showers < 0.3 * showers.mean()] = 0.0
    return showers, e


def toy_siw(n_per_energy: int, seed: int = 0) -> ShowerData:
    """Showers on the toy grid whose depth and width follow the incident energy: at 1 GeV the maximum
    sits in layer 0.5 and σ = 2.2 cells, at 100 GeV in layer 3.5 and σ = 1.2 cells; cell fluctuations ~18 %."""
    rng = np.random.default_rng(seed)
    e = np.repeat([1000.0, 100000.0], n_per_energy)
    high = (e > 1e4)[:, None]
    profile = np.exp(-0.5 * ((np.arange(6) - np.where(high, 3.5, 0.5)) / 1.2) ** 2)  # (N, 6)
    c = np.arange(8) - 3.5
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    image = np.exp(-0.5 * r2 / np.where(high, 1.2, 2.2)[:, :, None, None] ** 2)  # (N, 1, 8, 8)
    image /= image.sum((2, 3), keepdims=True)
    showers = (profile[:, :, None, None] * image * rng.gamma(30.0, 1 / 30.0, (len(e), 6, 8, 8))).reshape(len(e), -1)
    showers *= (0.9 * e / showers.sum(1))[:, None]
    showers[showers < 1e-3] = 0.0
    return ShowerData(e, showers.astype(np.float32))


def _observables(showers: torch.Tensor, e: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per incident energy: the mean layer-energy fractions and the mean energy-weighted radius [cells]."""
    x = showers.double().reshape(-1, 6, 8, 8)
    c = torch.arange(8, dtype=torch.float64) - 3.5
    r = (c[:, None] ** 2 + c[None, :] ** 2).sqrt()
    out = []
    for sel in (e < 1e4, e > 1e4):
        xs, total = x[sel], x[sel].sum((1, 2, 3))
        out.append(((xs.sum((2, 3)) / total[:, None]).mean(0), ((xs * r).sum((1, 2, 3)) / total).mean()))
    return out


def _distance(a, b) -> tuple[float, float]:
    """(largest Σ|Δ mean layer fraction|, largest |relative Δ mean radius|) over the two energies."""
    return (max((la - lb).abs().sum().item() for (la, _), (lb, _) in zip(a, b)),
            max(abs(wa / wb - 1).item() for (_, wa), (_, wb) in zip(a, b)))


# ----------------------------------------------------------------------------------
# Grids, tokens, shapes
# ----------------------------------------------------------------------------------
def test_voxel_grid_and_auto_patch():
    assert voxel_grid(load_geometry("ds2")) == (45, 9, 16)
    assert voxel_grid(load_geometry(TOY_SIW)) == (6, 8, 8)
    assert voxel_grid(load_geometry("calogan")) is None and voxel_grid(load_geometry("ds1-pions")) is None
    for grid in ((45, 9, 16), (25, 25, 25), (6, 8, 8), (18, 50, 18)):
        pz, pb, pa = auto_patch(grid)
        assert all(n % p == 0 for n, p in zip(grid, (pz, pb, pa)))
        assert (grid[0] // pz) * (grid[1] // pb) * (grid[2] // pa) <= 128


@pytest.mark.parametrize("geometry, patch", [("ds2", [1, 3, 8]), ("ds2", [3, 9, 4]), (TOY_SIW, [2, 4, 2])])
def test_tokens_hold_their_patch_and_unpatchify_inverts(geometry, patch):
    """The patch embedding sees exactly the voxels of its [layers, r|x, α|y] block (voxel order: α or y
    outer, r or x inner), and the output un-patchifies back onto the same voxels."""
    geo = load_geometry(geometry)
    cfg = load_config({"model": _model_section(geometry=geometry, patch=patch)}).model
    model = fit(cfg, *_random_showers(geo), {})
    net = model.velocity
    z, b, a = voxel_grid(geo)
    x = torch.randn(3, geo.n_voxels)
    seen = {}
    net.embed.register_forward_hook(lambda m, inp, out: seen.update(patches=inp[0]))  # None: output unchanged
    net.out.register_forward_hook(lambda m, inp, out: seen["patches"].reshape(out.shape))  # output := its input patches
    context = torch.randn(3, model.condition_encoder.dim + z)
    assert torch.equal(net(x, torch.rand(3, 1), context), x)
    pz, pb, pa = patch
    image = x.reshape(3, z, a, b)  # (layers, α|y, r|x)
    first = seen["patches"][:, 0, 0]  # token (0, 0, 0)
    assert torch.equal(first, image[:, :pz, :pa, :pb].reshape(3, -1))
    last = seen["patches"][:, -1, -1]
    assert torch.equal(last, image[:, z - pz:, a - pa:, b - pb:].reshape(3, -1))


@pytest.mark.parametrize("geometry, extra", [("ds2", {}),
                                             (TOY_SIW, {"patch": [2, 2, 4], "position": "coordinates"}),
                                             pytest.param("clic", {"patch": "auto", "width": 8},
                                                          marks=pytest.mark.slow)])
def test_training_step_and_sampling_shapes(geometry, extra):
    """r–α (DS2, 45 × 9 × 16) and Cartesian (the toy grid, CLIC 25³) geometries train and sample."""
    geo = load_geometry(geometry)
    cfg = load_config({"model": _model_section(geometry=geometry, **extra)}).model
    showers, e = _random_showers(geo)
    model = fit(cfg, showers, e, {})
    batches = BatchSource(showers, e, {}, 8, torch.Generator().manual_seed(1))
    losses = model.training_step(batches, model.configure_optimizers(), torch.Generator().manual_seed(2))
    assert set(losses) == {"loss", "cfm", "nll_layers"} and all(math.isfinite(v) for v in losses.values())
    model.eval()
    out = model.sample(e[:3], torch.Generator().manual_seed(3))
    assert out.shape == (3, geo.n_voxels) and torch.isfinite(out).all() and (out >= 0).all()
    assert model.noise_dim == voxel_grid(geo)[0] + geo.n_voxels


def test_angled_data_conditions_the_network():
    """Angles the data has enter the adaLN conditioning vector with the energy."""
    geo = load_geometry(TOY_SIW)
    cfg = load_config({"model": _model_section(geometry=TOY_SIW, patch=[2, 4, 4], particle="electron",
                                               conditions={"incident_energy": "log", "incident_theta": "cos"})}).model
    showers, e = _random_showers(geo)
    theta = torch.linspace(1.0, 2.0, len(e), dtype=torch.float64)
    model = fit(cfg, showers, e, {"incident_theta": theta})
    assert model.condition_names == ["incident_energy", "incident_theta"]
    batches = BatchSource(showers, e, {"incident_theta": theta}, 8, torch.Generator().manual_seed(1))
    assert math.isfinite(model.training_step(batches, model.configure_optimizers(),
                                             torch.Generator().manual_seed(2))["loss"])
    out = model.eval().sample({"incident_energy": e[:2], "incident_theta": theta[:2]})
    assert out.shape == (2, geo.n_voxels)


def test_detector_coordinates_order_the_tokens():
    """position: coordinates: the patch's mean r grows with its r bins; layers go deeper in z."""
    coords = patch_coordinates(load_geometry("ds2"), (1, 16, 3)).reshape(45, 1, 3, 4)  # (z, α, r, [z x y r])
    assert torch.all(coords[..., 3].diff(dim=2) > 0) and torch.all(coords[:, 0, 0, 0].diff() > 0)
    assert coords.abs().max() <= 1.0 + 1e-6


# ----------------------------------------------------------------------------------
# Config errors: one line each
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("keys, match", [
    ({"geometry": "ds1-photons"}, "model.geometry must be a geometry whose layers are one regular grid"),
    ({"geometry": "calogan"}, "model.geometry must be a geometry whose layers are one regular grid"),
    ({"patch": [1, 4, 8]}, r"model.patch must be \[layers, r\|x, α\|y\] voxels that divide the 45×9×16 grid of ds2"),
    ({"patch": [1, 3]}, "model.patch must be auto or"),
    ({"patch": "big"}, "model.patch must be auto or"),
    ({"patch": [0, 3, 8]}, "model.patch must be auto or"),
    ({"heads": 3, "width": 16}, r"model.heads must be a positive divisor of model.width \(16\)"),
    ({"radial_split": True}, "model.radial_split must be false"),
    ({"position": "sinusoidal"}, "model.position must be one of learnt, coordinates"),
    ({"solver": "dopri5"}, "model.solver must be one of euler, midpoint, rk4"),
])
def test_config_errors_are_one_line(keys, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config({"model": {**_model_section(), **keys}})
    assert "\n" not in str(err.value)


def test_shipped_configs_and_sampling_options():
    ds2 = load_config("shower-transformer-ds2").model
    assert (ds2.name, ds2.geometry, ds2.patch, ds2.width, ds2.depth, ds2.heads) == (
        "shower_transformer", "ds2", [1, 3, 8], 128, 4, 4)
    model = fit(load_config("shower-transformer-tiny").model, *_random_showers(load_geometry("ds2")), {})
    assert model.sampling_options == {"steps": 4, "solver": "euler"}
    with pytest.raises(ConfigError, match="sampling option steps must be a positive integer"):
        model.set_sampling(steps=0)
    with pytest.raises(ConfigError, match="sampling option solver must be one of"):
        model.set_sampling(solver="dopri5")


def test_export_keeps_the_chosen_sampler(tmp_path):
    """The exported graph integrates with the sampling options set before export (rk4, 2 steps)."""
    geo = load_geometry(TOY_SIW)
    cfg = load_config({"model": _model_section(geometry=TOY_SIW, patch=[3, 4, 4])}).model
    model = fit(cfg, *_random_showers(geo), {}).eval()
    torch.manual_seed(0)
    for p in model.velocity.parameters():  # not the zero velocity of the initialisation
        p.data.normal_(0.0, 0.2)
    model.set_sampling(steps=2, solver="rk4")
    result = export_model(model, "torchscript", tmp_path / "m.pt")
    assert result.max_deviation <= TOLERANCE
    exported = torch.jit.load(str(result.path))
    noise = model.sample_noise(5, torch.Generator().manual_seed(1))
    cond = torch.tensor([[2000.0], [9000.0], [30000.0], [1000.0], [60000.0]])
    with torch.no_grad():
        ref = model.export_module()(noise, cond)
        model.set_sampling(steps=8)
        other = model.export_module()(noise, cond)
    assert torch.allclose(exported(noise, cond), ref, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(other, ref)  # the step count matters: the comparison has teeth


# ----------------------------------------------------------------------------------
# Learning and resuming
# ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_learns_the_energy_dependence_of_depth_and_width():
    """300 iterations on the toy grid bring the per-energy mean layer profile (the layer flow) and
    mean shower radius (the transformer) of the samples to the data's; the untrained model misses both
    (its layer profiles are ~1 off, its radii 11–15 %: the standardised per-voxel marginals alone)."""
    data = toy_siw(500)
    showers, e = torch.as_tensor(data.showers), torch.as_tensor(data.incident_energy)
    cfg = load_config({"model": _model_section(
        geometry=TOY_SIW, patch=[1, 2, 2], width=32, depth=2, heads=2, steps=8, lr=2e-3,
        layer_flow={"transform": "spline", "transforms": 2, "hidden": [32], "bins": 6})}).model
    torch.manual_seed(0)
    model = fit(cfg, showers, e, {})
    reference = _observables(showers, e)
    e_eval = torch.as_tensor(np.repeat([1000.0, 100000.0], 200))

    def distance() -> tuple[float, float]:
        with torch.no_grad():
            return _distance(_observables(model.eval().sample(e_eval, torch.Generator().manual_seed(1)), e_eval),
                             reference)

    untrained = distance()
    batches = BatchSource(showers, e, {}, 64, torch.Generator().manual_seed(0))
    optimizers, g = model.configure_optimizers(), torch.Generator().manual_seed(1)
    model.train()
    for _ in range(300):
        model.training_step(batches, optimizers, g)
    trained = distance()
    assert untrained[0] > 0.5 and untrained[1] > 0.1, untrained
    assert trained[0] < 0.15 and trained[1] < 0.08, trained


@pytest.mark.slow
def test_train_resume_generate_is_bit_identical(tmp_path):
    """20 iterations in one go = 10 + resumed 10 (weights and their average, bit for bit); the best
    checkpoint generates reproducibly from a seed."""
    data = toy_siw(40)

    def cfg() -> dict:
        c = load_config("shower-transformer-tiny").to_dict()
        c["model"].update(geometry=TOY_SIW, patch=[1, 4, 4], ema_decay=0.9)
        return c

    full = train(cfg(), data, tmp_path / "full", progress=False)
    assert full.stopped == "completed" and full.iterations == 20
    assert train(cfg(), data, tmp_path / "half", progress=False, max_iterations=10).iterations == 10
    assert train(cfg(), data, tmp_path / "half", progress=False, resume=True).iterations == 20
    a = load_file(tmp_path / "full" / "checkpoints" / "iter-0000020" / "model.safetensors")
    b = load_file(tmp_path / "half" / "checkpoints" / "iter-0000020" / "model.safetensors")
    assert any(k.startswith("average.networks.velocity.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [r.split(",") for r in (tmp_path / "full" / "scores.csv").read_text().splitlines()]
    score = {k: float(v) for k, v in zip(rows[0], rows[-1]) if k.startswith("val_")}
    assert score["val_loss"] == pytest.approx(score["val_cfm"] + score["val_nll_layers"] / 6, rel=1e-6)
    gen = load_model(tmp_path / "full" / "best")
    energies = np.array([1000.0, 100000.0] * 4)
    out, again = generate(gen, energies, seed=7), generate(gen, energies, seed=7)
    assert out.showers.shape == (8, 384) and (out.showers >= 0).all() and np.isfinite(out.showers).all()
    assert np.array_equal(out.showers, again.showers)
