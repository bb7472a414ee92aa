"""CaloShowerGAN architecture: parameter counts, activations, initialisation, preprocessing, routing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from caloforge.models import CaloShowerGANConfig, EnergySplit, count_parameters, families, fit, get_family, load_config
from caloforge.preprocessing import ScaleByEnergy

CONFIGS = Path(__file__).resolve().parents[1] / "caloforge" / "configs"
PHOTON_RANGE = (256.0, 4194304.0)


def _fit(cfg, n_voxels: int, energies=PHOTON_RANGE):
    e = torch.tensor(energies, dtype=torch.float64)
    return fit(cfg, torch.zeros(len(e), n_voxels), e, {})


def _gan(name: str):
    cfg = load_config(CONFIGS / f"caloshowergan-{name}.yaml").model
    torch.manual_seed(0)
    return _fit(cfg, {"photons": 368, "pions": 533}[name])


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
    z = gan.sample_noise(200_000, torch.Generator().manual_seed(1))
    assert z.shape == (200_000, 100)
    assert z.mean().item() == pytest.approx(0.5, abs=2e-3)
    assert z.std().item() == pytest.approx(0.5, abs=2e-3)


def test_condition_is_log_scaled_into_unit_interval():
    enc = _gan("photons").condition_encoder
    e = torch.tensor([256.0, 4096.0, 65536.0, 4194304.0])
    c = enc.encode(e, {}).squeeze(1)
    assert c[0].item() == 0.0 and c[-1].item() == pytest.approx(1.0)
    assert c[1].item() == pytest.approx(4 / 14) and c[2].item() == pytest.approx(8 / 14)  # 2^k ladder
    assert enc.encode(torch.tensor([128.0]), {}).item() < 0  # outside the range it extrapolates


def test_pion_model_conditions_on_kinetic_energy():
    pi = _gan("pions")
    enc = pi.condition_encoder
    m = 139.57039
    assert enc.energy_condition == "kinetic" and enc.mass == pytest.approx(m)
    assert pi.energy_limits == pytest.approx(PHOTON_RANGE)  # reported in incident energy
    lo, hi = PHOTON_RANGE[0] - m, PHOTON_RANGE[1] - m
    e = torch.tensor([512.0])
    assert enc.encode(e, {}).item() == pytest.approx(math.log((512.0 - m) / lo) / math.log(hi / lo), rel=1e-6)


def test_preprocessing_round_trip(rng):
    p = ScaleByEnergy(1.0)
    e = torch.as_tensor(256.0 * 2.0 ** rng.integers(0, 15, 50))
    showers = torch.as_tensor(rng.exponential(1.0, (50, 368)) * (rng.random((50, 368)) < 0.3), dtype=torch.float32)
    showers = showers / showers.sum(1, keepdim=True) * 0.2 * e.reshape(-1, 1).float()
    x = p.forward(showers, e)
    assert torch.allclose(x.sum(1), torch.full((50,), 0.2), rtol=1e-5)  # voxels / E_inc
    back = p.inverse(x, e)
    assert torch.allclose(back, showers, rtol=1e-6, atol=0)
    gan = _gan("photons")  # a negative network output is clipped to zero energy by sample()
    with torch.no_grad():
        gan.generator.net[-2].bias.fill_(-5.0)
        gan.generator.net[-1] = nn.Identity()
    assert (gan.sample(torch.tensor([1000.0, 2000.0])) == 0).all()


def test_energy_split_routes_each_energy_to_its_gan():
    cfg = load_config({"model": {"name": "energy_split", "boundaries": [4100.0, 262000.0],
                                 "common": {"latent_dim": 4, "generator_hidden": [8], "critic_hidden": [8]}}}).model
    model = _fit(cfg, 368, [256.0, 4096.0, 8192.0, 131072.0, 262144.0, 4194304.0])
    assert isinstance(model, EnergySplit) and len(model.parts) == 3
    assert model.energy_limits == (256.0, 4194304.0)
    assert [p.energy_limits for p in model.parts] == [(256.0, 4096.0), (8192.0, 131072.0), (262144.0, 4194304.0)]
    e = np.array([256.0, 4096.0, 4100.0, 8192.0, 261999.0, 262000.0, 4194304.0])
    assert model.route(e).tolist() == [0, 0, 1, 1, 1, 2, 2]
    # make GAN k output the constant k+1 per voxel (in units of E_inc), then sample through the router
    with torch.no_grad():
        for k, gan in enumerate(model.parts):
            last = gan.generator.net[-2]
            last.weight.zero_()
            last.bias.fill_(k + 1.0)
    model.eval()
    out = model.sample(e, torch.Generator().manual_seed(0))
    per_voxel = (out / torch.as_tensor(e, dtype=torch.float32).reshape(-1, 1))[:, 0]
    assert per_voxel.tolist() == pytest.approx([1, 1, 2, 2, 2, 3, 3])
    # the branch-free decode (the exported graph) routes the same way
    noise = model.sample_noise(len(e), torch.Generator().manual_seed(0))
    routed = model.export_module()(noise, torch.as_tensor(e).reshape(-1, 1))
    assert (routed / torch.as_tensor(e, dtype=torch.float32).reshape(-1, 1))[:, 0].tolist() == \
        pytest.approx([1, 1, 2, 2, 2, 3, 3])


def test_sampled_showers_are_non_negative_and_shaped():
    gan = _gan("pions")
    gan.eval()
    out = gan.sample(torch.tensor([1000.0, 5e5]), torch.Generator().manual_seed(0))
    assert out.shape == (2, 533) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all()) and bool((out >= 0).all())


def test_registry_lists_the_families():
    assert {"caloshowergan", "energy_split"} <= set(families())
    assert get_family("caloshowergan").Config is CaloShowerGANConfig


@pytest.mark.parametrize("split, sizes", [(2, [[50, 50, 100], [50, 50, 100, 200]]),
                                          (3, [[50, 50, 100], [50, 50, 100, 200], [50, 50, 100, 200]])])
def test_shipped_split_photon_configs_follow_the_paper(split, sizes):
    """Low energies: G 50, 50, 100 with ReLU; mid and high: 50, 50, 100, 200 with Swish."""
    cfg = load_config(CONFIGS / f"caloshowergan-photons-split{split}.yaml").model
    subs = cfg.sub_configs()
    assert [s.generator_hidden for s in subs] == sizes
    assert [s.generator_activation for s in subs] == ["relu"] + ["swish"] * (split - 1)
    assert cfg.boundaries == [4100.0, 262000.0][: split - 1]
    model = _fit(cfg, 368, [256.0, 4096.0, 8192.0, 262144.0, 4194304.0])
    assert [p.generator.net[0].out_features for p in model.parts] == [50] * split
    assert all(s.latent_dim == 100 and s.critic_steps == 8 for s in subs)


def _caloforge_imports(path: Path) -> set[str]:
    """Every caloforge module a file imports, at module level or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("caloforge")}


def test_families_import_only_base_parts_and_modules_outside_models():
    """A family file uses models.base, models.parts and the rest of caloforge, never another family;
    config and the parts know no family."""
    models = Path(__file__).resolve().parents[1] / "caloforge" / "models"
    shared = {"caloforge.models.base", "caloforge.models.parts"}
    for path in sorted(models.glob("*.py")):
        if path.stem in ("__init__", "base"):
            continue
        inside = {m for m in _caloforge_imports(path) if m.startswith("caloforge.models")}
        wrong = {m for m in inside if not any(m == s or m.startswith(s + ".") for s in shared)}
        assert not wrong, f"{path.name} imports {sorted(wrong)}"
    for path in [models.parents[0] / "config.py", *sorted((models / "parts").glob("*.py"))]:
        inside = {m for m in _caloforge_imports(path) if m.startswith("caloforge.models")}
        wrong = {m for m in inside if not any(m == s or m.startswith(s + ".") for s in shared)}
        assert not wrong and not (path.name == "config.py" and inside), f"{path.name} imports {sorted(inside)}"
    assert "caloforge.checkpoint" not in set().union(*(_caloforge_imports(p) for p in models.rglob("*.py")))
