"""CaloShowerGAN architecture: parameter counts, activations, initialisation, preprocessing, routing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from caloforge.models import (
    MODELS,
    CaloShowerGANConfig,
    EnergySplitGAN,
    Preprocessing,
    build_model,
    count_parameters,
)
from caloforge.train import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "caloforge" / "configs"
PHOTON_RANGE = (256.0, 4194304.0)


def _gan(name: str):
    cfg = load_config(CONFIGS / f"caloshowergan-{name}.yaml").model
    n_voxels = {"photons": 368, "pions": 533}[name]
    torch.manual_seed(0)
    return build_model(cfg, [Preprocessing(*PHOTON_RANGE, n_voxels, cfg.geometry)]).gans[0]


@pytest.mark.parametrize(
    "name, generator, critic",
    [("photons", 259_768, 408_113), ("pions", 871_333, 828_801)],
)
def test_parameter_counts_match_the_published_table(name, generator, critic):
    # issue table: photons G ≈ 260k / D 408,113; pions G ≈ 871k / D 828,801
    gan = _gan(name)
    assert count_parameters(gan.generator) == generator
    assert count_parameters(gan.critic) == critic


def test_layer_structure_photons_and_pions():
    ph, pi = _gan("photons"), _gan("pions")
    widths = lambda net: [m.out_features for m in net.modules() if isinstance(m, nn.Linear)]
    assert widths(ph.generator) == [100, 200, 400, 368]
    assert widths(ph.critic) == [368, 368, 368, 1]
    assert widths(pi.generator) == [200, 400, 800, 533]
    assert widths(pi.critic) == [800, 400, 200, 1]
    assert ph.generator.net[0].in_features == 101 and pi.generator.net[0].in_features == 201  # latent + condition
    assert ph.critic.net[0].in_features == 369 and pi.critic.net[0].in_features == 534  # voxels + condition
    # batch norm in the generator only (a per-sample gradient penalty forbids it in the critic)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in ph.generator.modules()) == 3
    assert not any(isinstance(m, nn.BatchNorm1d) for m in ph.critic.modules())
    assert sum(isinstance(m, nn.SiLU) for m in ph.generator.modules()) == 3  # Swish
    assert sum(isinstance(m, nn.ReLU) for m in pi.generator.modules()) == 4  # 3 hidden + output
    assert sum(isinstance(m, nn.ReLU) for m in ph.critic.modules()) == 3


def test_initialisers_follow_keras_definitions():
    ph, pi = _gan("photons"), _gan("pions")
    # He uniform: U(±sqrt(6 / fan_in)) → std = bound / sqrt(3)
    w = pi.critic.net[0].weight.detach()
    bound = math.sqrt(6 / w.shape[1])
    assert w.abs().max() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    # Glorot normal: truncated at 2σ, std sqrt(2 / (fan_in + fan_out)) after truncation
    w = ph.generator.net[-2].weight.detach()
    target = math.sqrt(2 / (w.shape[0] + w.shape[1]))
    assert w.std().item() == pytest.approx(target, rel=0.03)
    assert w.abs().max() <= 2 * target / 0.87962566103423978 + 1e-6
    assert all(float(m.bias.detach().abs().max()) == 0 for m in ph.generator.modules() if isinstance(m, nn.Linear))


def test_noise_is_gaussian_with_mean_and_std_one_half():
    gan = _gan("photons")
    z = gan.noise(200_000, torch.Generator().manual_seed(1))
    assert z.shape == (200_000, 100)
    assert z.mean().item() == pytest.approx(0.5, abs=2e-3)
    assert z.std().item() == pytest.approx(0.5, abs=2e-3)


def test_condition_is_log_scaled_into_unit_interval():
    p = Preprocessing(*PHOTON_RANGE, 368, "ds1-photons")
    e = torch.tensor([256.0, 4096.0, 65536.0, 4194304.0])
    c = p.condition(e)
    assert c[0].item() == 0.0 and c[-1].item() == pytest.approx(1.0)
    assert c[1].item() == pytest.approx(4 / 14) and c[2].item() == pytest.approx(8 / 14)  # 2^k ladder
    assert p.condition(torch.tensor([128.0])).item() < 0  # outside the range it extrapolates


def test_preprocessing_round_trip(rng):
    p = Preprocessing(*PHOTON_RANGE, 368, "ds1-photons")
    e = torch.as_tensor(256.0 * 2.0 ** rng.integers(0, 15, 50))
    showers = torch.as_tensor(rng.exponential(1.0, (50, 368)) * (rng.random((50, 368)) < 0.3), dtype=torch.float32)
    showers = showers / showers.sum(1, keepdim=True) * 0.2 * e.reshape(-1, 1).float()
    x = p.forward(showers, e)
    assert torch.allclose(x.sum(1), torch.full((50,), 0.2), rtol=1e-5)  # voxels / E_inc
    back = p.inverse(x, e)
    assert torch.allclose(back, showers, rtol=1e-6, atol=0)
    assert (p.inverse(-x, e) == 0).all()  # negative network output is clipped to zero energy


def test_energy_split_routes_each_energy_to_its_gan():
    cfg = CaloShowerGANConfig(latent_dim=4, generator_hidden=[8], critic_hidden=[8], energy_split=[4100.0, 262000.0])
    preps = [Preprocessing(256.0, 4096.0, 368, "ds1-photons"), Preprocessing(8192.0, 131072.0, 368, "ds1-photons"),
             Preprocessing(262144.0, 4194304.0, 368, "ds1-photons")]
    model = build_model(cfg, preps)
    assert isinstance(model, EnergySplitGAN) and len(model.gans) == 3
    assert (model.e_min, model.e_max) == (256.0, 4194304.0)
    e = np.array([256.0, 4096.0, 4100.0, 8192.0, 261999.0, 262000.0, 4194304.0])
    assert model.route(e).tolist() == [0, 0, 1, 1, 1, 2, 2]
    # make GAN k output the constant k+1 per voxel (in units of E_inc), then sample through the router
    with torch.no_grad():
        for k, gan in enumerate(model.gans):
            last = gan.generator.net[-2]
            last.weight.zero_()
            last.bias.fill_(k + 1.0)
    model.eval()
    out = model.sample(e, torch.Generator().manual_seed(0))
    per_voxel = (out / torch.as_tensor(e, dtype=torch.float32).reshape(-1, 1))[:, 0]
    assert per_voxel.tolist() == pytest.approx([1, 1, 2, 2, 2, 3, 3])


def test_sampled_showers_are_non_negative_and_shaped():
    gan = _gan("pions")
    gan.eval()
    out = gan.sample(torch.tensor([1000.0, 5e5]), torch.Generator().manual_seed(0))
    assert out.shape == (2, 533) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all()) and bool((out >= 0).all())


def test_registry_lists_caloshowergan():
    assert "caloshowergan" in MODELS
    assert MODELS["caloshowergan"].config is CaloShowerGANConfig
