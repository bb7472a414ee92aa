"""CaloGAN and the ATLAS two-critic WGAN: architecture, conditions, training, resume, export, presets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caloforge.conditions import ConditionEncoder
from caloforge.errors import ConfigError, DataError
from caloforge.geometry import load_geometry
from caloforge.io import ShowerData, read_showers, write_showers
from caloforge.models import count_parameters, fit, load_config
from caloforge.models.atlas_gan import TrainableSwish, with_sum
from caloforge.models.calogan import (LocallyConnected2d, MinibatchDiscrimination, resize_image)
from caloforge.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "caloforge" / "configs"
TINY_CALOGAN = {"latent_dim": 8, "generator_channels": [2, 3, 2], "discriminator_channels": [4, 3, 2, 2],
                "minibatch_kernels": 3, "minibatch_kernel_dim": 3, "batchnorm_momentum": 0.1}
TINY_ATLAS = {"latent_dim": 8, "generator_hidden": [32, 32], "critic_hidden": [32], "sum_critic_hidden": [16],
              "voxel_scale": 10.0, "critic_steps": 2,
              "generator_optimizer": {"lr": 1e-3, "beta1": 0.5, "beta2": 0.9},
              "critic_optimizer": {"lr": 1e-3, "beta1": 0.5, "beta2": 0.9}}
TRAINING = {"batch_size": 16, "max_iterations": 20, "checkpoint_every": 10, "log_every": 5,
            "tensorboard": False, "validation_fraction": 0.25, "score_max_showers": 200}


def toy_showers(geometry: str, n: int = 120, seed: int = 0, energies=(2e3, 50e3)) -> ShowerData:
    """A fixed cell profile × E_inc × response 0.2, a little jitter, impact η in 0.20–0.25."""
    geo = load_geometry(geometry)
    rng = np.random.default_rng(seed)
    profile = rng.dirichlet(np.full(geo.n_voxels, 0.3))
    e = np.repeat(np.asarray(energies, dtype=np.float64), n // len(energies))
    showers = profile * rng.gamma(20.0, 1 / 20.0, (len(e), geo.n_voxels))
    showers *= (0.2 * e / showers.sum(1))[:, None]
    return ShowerData(e, showers.astype(np.float32), {"impact_eta": rng.uniform(0.2, 0.25, len(e))})


def _cfg(name: str, model: dict, **training) -> dict:
    return {"model": {"name": name, **model}, "training": {**TRAINING, **training}}


# ----------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------
def test_locally_connected_with_shared_weights_is_a_convolution():
    torch.manual_seed(0)
    lc = LocallyConnected2d(3, 4, (5, 7), (2, 3), stride=(1, 2))
    conv = torch.nn.Conv2d(3, 4, (2, 3), stride=(1, 2), bias=False)
    with torch.no_grad():  # every position gets the convolution's kernel
        lc.weight.copy_(conv.weight.reshape(4, -1).t().expand_as(lc.weight))
    x = torch.randn(2, 3, 5, 7)
    assert torch.allclose(lc(x), conv(x), atol=1e-6)
    # and unshared weights: changing one position's kernel changes only that output cell
    with torch.no_grad():
        lc.weight[0] += 1.0
    diff = (lc(x) - conv(x)).abs().sum((0, 1))
    assert diff[0, 0] > 0 and diff.flatten()[1:].max() < 1e-5


def test_minibatch_discrimination_sees_the_batch():
    torch.manual_seed(0)
    mbd = MinibatchDiscrimination(4, kernels=3, kernel_dim=2)
    same = mbd(torch.ones(6, 4))  # identical samples: Σ_j exp(0) = 6 per kernel
    assert torch.allclose(same, torch.full((6, 3), math.tanh(6.0)))
    far = mbd(torch.arange(6.0).reshape(6, 1).repeat(1, 4) * 1e3)  # far apart: only the sample itself
    assert torch.allclose(far, torch.full((6, 3), math.tanh(1.0)), atol=1e-4)


def test_resize_matches_the_calogan_up_sample_then_pool():
    img = torch.rand(2, 1, 3, 96)
    ref = F.avg_pool2d(img.repeat_interleave(4, dim=2), (1, 8))  # UpSampling2D(4, 1) → AveragePooling2D(1, 8)
    assert torch.allclose(resize_image(img, (12, 12)), ref)
    assert torch.allclose(resize_image(ref, (12, 6)), F.avg_pool2d(ref, (1, 2)))


def test_calogan_paper_architecture():
    cfg = load_config(CONFIGS / "calogan-positrons.yaml").model
    gan = fit(cfg, torch.rand(4, 504), torch.tensor([1e3, 1e4, 5e4, 1e5], dtype=torch.float64), {})
    assert gan.shapes == [(3, 96), (12, 12), (12, 6)]
    # per layer: Dense(1024 → (r+2)(c+2)·36), conv 2×2 36→16, LC 2×2 16→6 over (r+1)(c+1) cells, LC 2×2 6→1
    expected = 0
    for r, c in gan.shapes:
        expected += 1024 * (r + 2) * (c + 2) * 36 + (r + 2) * (c + 2) * 36
        expected += 36 * 16 * 4 + 16 + 2 * 16
        expected += (r + 1) * (c + 1) * (16 * 4 * 6 + 6) + r * c * 6 * 4
    expected += 2 * (2 * 2 * 9 + 2)  # two attention convolutions
    assert count_parameters(gan.generator) == expected
    for g, (r, c) in zip(gan.generators, gan.shapes):
        assert g.local2.bias is None and g.local2.out_size == (r, c) and g.local1.weight.shape[0] == (r + 1) * (c + 1)
    d = gan.discriminator.layers[0]
    assert d.local1.stride == (1, 2) and d.local1.out_size == (3, 48) and d.local2.out_size == (4, 49) and d.local3.out_size == (5, 25)
    imgs = gan.images(gan.sample_noise(4), torch.full((4,), 5e4, dtype=torch.float64))
    assert [tuple(x.shape[-2:]) for x in imgs] == gan.shapes and all(bool((x >= 0).all()) for x in imgs)


def test_calogan_latent_is_scaled_by_the_energy_and_attention_links_layers():
    cfg = load_config(_cfg("calogan", TINY_CALOGAN)).model
    torch.manual_seed(1)
    gan = fit(cfg, torch.rand(2, 504), torch.tensor([1e3, 1e5], dtype=torch.float64), {}).eval()
    z = gan.sample_noise(3, torch.Generator().manual_seed(0))
    e = torch.full((3,), 5e4, dtype=torch.float64)
    h_seen = []
    hook = gan.generators[0].dense.register_forward_hook(lambda m, i, o: h_seen.append(i[0]))
    gan.images(z, e)
    hook.remove()
    assert torch.allclose(h_seen[0], z * 0.5)  # z · E / 100 GeV
    # the attention carries layer 0 into layer 1: perturbing layer 0's stream changes layer 1
    base = gan.images(z, e)[1]
    with torch.no_grad():
        gan.generators[0].local2.weight.mul_(-3.0)
    assert not torch.allclose(gan.images(z, e)[1], base)


def test_calogan_energy_response_is_fitted():
    data = toy_showers("calogan", n=40)
    cfg = load_config(_cfg("calogan", TINY_CALOGAN)).model
    gan = fit(cfg, torch.as_tensor(data.showers), torch.as_tensor(data.incident_energy), {})
    assert gan.response == pytest.approx(0.2, rel=1e-3)  # Ê = Σ cells / R in the |E_0 − Ê| term


@pytest.mark.parametrize("text, key", [
    ("model: {name: calogan, conditions: {incident_energy: log, impact_x: linear}}", "model.conditions"),
    ("model: {name: calogan, generator_channels: [4, 4]}", "model.generator_channels"),
    ("model: {name: atlas_gan, sum_critic_gp_lambda: -1}", "model.sum_critic_gp_lambda"),
    ("model: {name: atlas_gan, conditions: {incident_energy: log, impact_etta: linear}}",
     "model.conditions.impact_etta"),
])
def test_config_errors_name_the_key(tmp_path, text, key):
    p = tmp_path / "bad.yaml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(p)


def test_shipped_configs_carry_the_papers_hyperparameters():
    for particle in ("positron", "photon", "pion"):
        cfg = load_config(f"calogan-{particle}s")
        m = cfg.model
        assert (m.name, m.geometry, m.particle, m.latent_dim, m.generator_steps) == (
            "calogan", "calogan", particle, 1024, 2, )
        assert (m.generator_optimizer.lr, m.discriminator_optimizer.lr, m.generator_optimizer.beta1) == (2e-4, 2e-5, 0.5)
        assert m.energy_loss_weight == 0.05 and cfg.training.batch_size == 256
    a = load_config("atlas-gan-photons")
    m = a.model
    assert (m.latent_dim, m.critic_steps, m.gp_lambda, a.training.batch_size) == (300, 5, 10.0, 64)
    assert m.sum_critic_gp_lambda < 1e-10 and m.two_critics
    assert (m.generator_optimizer.lr, m.generator_optimizer.beta1, m.generator_optimizer.beta2) == (5e-5, 0.5, 0.5)
    assert m.conditions == {"incident_energy": "log", "impact_eta": "linear"}
    for name in ("calogan-cpu", "atlas-gan-cpu"):
        assert load_config(name).model.name in ("calogan", "atlas_gan")


# ----------------------------------------------------------------------------------
# ATLAS
# ----------------------------------------------------------------------------------
def test_trainable_swish_learns_beta():
    act = TrainableSwish()
    x = torch.linspace(-2, 2, 9)
    assert torch.allclose(act(x), x * torch.sigmoid(x))
    (act(x) ** 2).sum().backward()
    assert act.beta.grad is not None and act.beta.grad != 0


def test_sum_critic_sees_the_sum_and_its_gradient_is_stopped_for_the_critic():
    cells = torch.rand(3, 5, requires_grad=True)
    x = with_sum(cells, detach=False)
    assert torch.allclose(x[:, -1], cells.sum(1))
    x[:, -1].sum().backward()
    assert torch.allclose(cells.grad, torch.ones(3, 5))  # the generator's gradient flows through Σ
    cells.grad = None
    with_sum(cells, detach=True)[:, -1].sum().backward() if with_sum(cells, True).requires_grad else None
    assert cells.grad is None or torch.count_nonzero(cells.grad) == 0


def test_atlas_paper_architecture_and_eta_condition():
    cfg = load_config("atlas-gan-photons").model
    data = toy_showers("atlas-4layer", n=20)
    gan = fit(cfg, torch.as_tensor(data.showers), torch.as_tensor(data.incident_energy),
              {"impact_eta": torch.as_tensor(data.conditions["impact_eta"])})
    assert gan.condition_names == ["incident_energy", "impact_eta"] and gan.condition_encoder.dim == 2
    assert isinstance(gan.generator.net[1], TrainableSwish)
    assert sum(isinstance(m, TrainableSwish) for m in gan.generator.modules()) == 4
    assert gan.generator.net[0].in_features == 302 and gan.generator.net[-1].out_features == 266
    assert gan.critic.net[0].in_features == 266 + 2 and gan.sum_critic.net[0].in_features == 267 + 2
    with pytest.raises(DataError, match="impact_eta"):
        gan.sample(torch.tensor([1e4], dtype=torch.float64))
    spec = gan.condition_encoder.specs[1]
    assert (spec.encoding, spec.lo >= 0.2, spec.hi <= 0.25) == ("linear", True, True)


def test_impact_eta_is_a_condition_dataset(tmp_path):
    data = toy_showers("atlas-4layer", n=10)
    path = tmp_path / "eta.h5"
    write_showers(path, data.incident_energy, data.showers, data.conditions)
    back = read_showers(path)
    assert np.allclose(back.conditions["impact_eta"], data.conditions["impact_eta"])
    enc = ConditionEncoder.fit({"incident_energy": "log", "impact_eta": ""}, torch.as_tensor(data.incident_energy),
                               {"impact_eta": torch.as_tensor(data.conditions["impact_eta"])})
    assert enc.specs[1].encoding == "linear"


# ----------------------------------------------------------------------------------
# Training through caloforge.train: losses, learning, resume, round trip, export
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family, geometry, model", [("calogan", "calogan", TINY_CALOGAN),
                                                     ("atlas_gan", "atlas-4layer", TINY_ATLAS)])
def test_train_resume_generate_round_trip(tmp_path, family, geometry, model):
    from caloforge.generate import load_model

    data = toy_showers(geometry, n=80)
    cfg = _cfg(family, model, max_iterations=6, checkpoint_every=3, log_every=3)
    full = train(cfg, data, tmp_path / "full", progress=False, threads=1)
    assert full.stopped == "completed" and full.iterations == 6
    half = train(cfg, data, tmp_path / "half", progress=False, max_iterations=3, threads=1)
    assert half.iterations == 3
    resumed = train(cfg, data, tmp_path / "half", progress=False, resume=True, threads=1)
    assert resumed.iterations == 6
    a = load_model(tmp_path / "full" / "checkpoints" / "iter-0000006").model
    b = load_model(tmp_path / "half" / "checkpoints" / "iter-0000006").model
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.allclose(va, vb, atol=1e-6), ka
    cond = {"incident_energy": np.full(6, 1e4), "impact_eta": np.full(6, 0.22)}
    if family == "calogan":
        cond.pop("impact_eta")
    x1 = a.sample(cond, torch.Generator().manual_seed(5))
    x2 = b.sample(cond, torch.Generator().manual_seed(5))
    assert x1.shape == (6, data.n_voxels) and torch.isfinite(x1).all() and (x1 >= 0).all()
    assert torch.allclose(x1, x2, atol=1e-5)  # reproducible from the generator, and the round trip
    exported = a.export_module().eval()
    cm = torch.as_tensor(np.stack([cond[k] for k in a.condition_names], 1), dtype=torch.float64)
    noise = a.sample_noise(6, torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(exported(noise, cm), x1, atol=1e-5)


@pytest.mark.slow
def test_calogan_energy_term_pulls_the_total_energy_to_the_target(tmp_path):
    data = toy_showers("calogan", n=200)
    model = {**TINY_CALOGAN, "energy_loss_weight": 1.0,
             "generator_optimizer": {"lr": 3e-3, "beta1": 0.5, "beta2": 0.999}}
    train(_cfg("calogan", model, max_iterations=30, checkpoint_every=30, log_every=3), data, tmp_path / "r",
          progress=False, threads=1)
    import csv
    rows = list(csv.DictReader(open(tmp_path / "r" / "log.csv")))
    first = np.mean([float(r["energy_loss"]) for r in rows[:2]])
    last = np.mean([float(r["energy_loss"]) for r in rows[-2:]])
    assert all(math.isfinite(float(r["discriminator_loss"])) for r in rows)
    assert last < 0.5 * first  # |E_0 − Ê| in GeV falls


@pytest.mark.slow
def test_atlas_gan_learns_the_energy_response(tmp_path):
    from caloforge.generate import load_model

    data = toy_showers("atlas-4layer", n=200)
    e = np.full(50, 5e4)
    cond = {"incident_energy": e, "impact_eta": np.full(50, 0.225)}
    torch.manual_seed(0)
    res = train(_cfg("atlas_gan", TINY_ATLAS, max_iterations=150, checkpoint_every=150, log_every=25),
                data, tmp_path / "r", progress=False, threads=1)
    import csv
    rows = list(csv.DictReader(open(tmp_path / "r" / "log.csv")))
    assert all(math.isfinite(float(r["sum_critic_loss"])) for r in rows)
    model = load_model(res.last_checkpoint).model
    response = model.sample(cond, torch.Generator().manual_seed(0)).double().sum(1).numpy() / e
    untrained = fit(load_config(_cfg("atlas_gan", TINY_ATLAS)).model, torch.as_tensor(data.showers),
                    torch.as_tensor(data.incident_energy), {"impact_eta": torch.as_tensor(data.conditions["impact_eta"])})
    r0 = untrained.sample(cond, torch.Generator().manual_seed(0)).double().sum(1).numpy() / e
    assert abs(response.mean() - 0.2) < 0.5 * abs(r0.mean() - 0.2)


# ----------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------
def test_atlas_gan_presets_and_eta():
    from caloforge.simulate.paper_data import simulate_atlas_gan
    from caloforge.simulate.presets import SIMULATION_PRESETS

    parts = SIMULATION_PRESETS["atlas-gan"].parts("photon", scale=0.001)
    assert sorted(set(np.round(parts[0].energies / 1e3))) == [1, 2, 4, 8, 16, 32, 65, 131, 262]
    assert sum(p.n for p in SIMULATION_PRESETS["atlas-gan"].parts("photon")) == 88_200
    assert set(SIMULATION_PRESETS["atlas-gan-25gev"].parts("photon", 0.001)[0].energies) == {25_000.0}
    data = simulate_atlas_gan("atlas-gan-25gev", seed=1, scale=0.003, workers=1)
    eta = data.conditions["impact_eta"]
    assert eta.min() >= 0.2 and eta.max() <= 0.25 and eta.std() > 0.01
    assert (data.showers >= 0).all()
    # the shower follows the impact point: strips' energy-weighted x moves with η
    geo = load_geometry("atlas-4layer")
    strips = geo.split(data.showers)[1].sum(1)  # (N, 56) summed over φ
    x = (np.arange(56) - 27.5) * 4.6875
    mean_x = (strips * x).sum(1) / strips.sum(1)
    assert np.corrcoef(mean_x, eta)[0, 1] > 0.8


def test_calogan_sets_in_both_layouts(tmp_path):
    from caloforge.io import detect_format
    from caloforge.simulate.paper_data import write_calogan_sets

    paths = write_calogan_sets(tmp_path, "e+", seed=0, scale=0.0002, workers=1)
    assert detect_format(paths["calogan"]) == "calogan"
    a, b = read_showers(paths["calogan"]), read_showers(paths["calochallenge"])
    assert a.showers.shape == b.showers.shape == (20, 504)
    assert np.allclose(a.incident_energy, b.incident_energy) and np.allclose(a.showers, b.showers)
    assert 1e3 <= a.incident_energy.min() and a.incident_energy.max() <= 1e5
    for layout, path in paths.items():  # both layouts train
        res = train(_cfg("calogan", TINY_CALOGAN, max_iterations=2, checkpoint_every=2, log_every=1,
                         batch_size=8), path, tmp_path / f"run-{layout}", progress=False, threads=1)
        assert res.stopped == "completed" and res.last_checkpoint is not None


def test_cli_simulate_paper_writes_eta_and_the_calogan_layout(tmp_path):
    from typer.testing import CliRunner

    from caloforge.cli import app
    from caloforge.io import detect_format

    r = CliRunner().invoke(app, ["simulate-paper", "atlas-gan-25gev", "-o", str(tmp_path / "a.h5"), "--scale",
                                 "0.002", "-j", "1"])
    assert r.exit_code == 0, r.output
    data = read_showers(tmp_path / "a.h5")
    assert set(np.unique(data.incident_energy)) == {25_000.0} and "impact_eta" in data.conditions
    r = CliRunner().invoke(app, ["simulate-paper", "calogan", "-p", "pi+", "--layout", "calogan", "-o",
                                 str(tmp_path / "p.hdf5"), "--scale", "0.0001", "-j", "1"])
    assert r.exit_code == 0 and detect_format(tmp_path / "p.hdf5") == "calogan"
    bad = CliRunner().invoke(app, ["simulate-paper", "atlas-gan", "--layout", "calogan", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "calogan data set only" in bad.output


def test_cli_simulate_preset_stores_impact_eta_like_simulate_paper(tmp_path):
    """``simulate --preset atlas-gan`` and ``simulate-paper atlas-gan`` write the same showers and the
    same ``impact_eta`` condition (derived from the impact x), and the ATLAS GAN trains on either file."""
    from typer.testing import CliRunner

    from caloforge.cli import app
    from caloforge.simulate.presets import impact_eta_from_x

    files = {}
    for cmd in (["simulate", "--preset"], ["simulate-paper"]):
        files[cmd[0]] = path = tmp_path / f"{cmd[0]}.h5"
        r = CliRunner().invoke(app, [*cmd, "atlas-gan", "-o", str(path), "--scale", "0.002", "-j", "1",
                                     "--seed", "3"] + (["-q"] if cmd[0] == "simulate" else []))
        assert r.exit_code == 0, r.output
    a, b = read_showers(files["simulate"]), read_showers(files["simulate-paper"])
    assert np.array_equal(a.incident_energy, b.incident_energy) and np.array_equal(a.showers, b.showers)
    eta = a.conditions["impact_eta"]
    assert np.allclose(eta, b.conditions["impact_eta"])
    assert np.allclose(eta, impact_eta_from_x(a.conditions["impact_x"]))
    assert 0.2 <= eta.min() and eta.max() <= 0.25 and eta.std() > 0.01  # uniform in 0.20–0.25, not a constant
    # the 25 GeV interpolation sample too; other presets store no impact_eta
    r = CliRunner().invoke(app, ["simulate", "--preset", "atlas-gan-25gev", "-o", str(tmp_path / "i.h5"),
                                 "--scale", "0.002", "-j", "1", "-q"])
    assert r.exit_code == 0 and "impact_eta" in read_showers(tmp_path / "i.h5").conditions
    r = CliRunner().invoke(app, ["simulate", "--preset", "atlas-4layer", "-o", str(tmp_path / "plain.h5"),
                                 "--scale", "0.0002", "-j", "1", "-q"])
    assert r.exit_code == 0 and "impact_eta" not in read_showers(tmp_path / "plain.h5").conditions
    # the η-conditioned model trains from the file of `simulate --preset`
    res = train(_cfg("atlas_gan", {"conditions": {"incident_energy": "log", "impact_eta": "linear"}, **TINY_ATLAS},
                     max_iterations=2, checkpoint_every=2, log_every=1, batch_size=8),
                files["simulate"], tmp_path / "run", progress=False, threads=1)
    assert res.stopped == "completed" and res.last_checkpoint is not None
