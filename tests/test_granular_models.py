"""Angled Si-W geometries and presets, the 3DGAN and BIB-AE families, and the granular observables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from caloforge.errors import ConfigError
from caloforge.geometry import load_geometry
from caloforge.simulate import simulate
from caloforge.simulate.presets import SIMULATION_PRESETS, simulate_preset
from caloforge.train import load_config, train

# a small Si-W grid: 6 layers of 8 × 8 cells of 5 mm (the CLIC layer material)
TOY_GEOMETRY = """
name: toy-siw
layers:
""" + "".join("  - {thickness: 10.0, material: clic-w-si, nx: 8, ny: 8, cell_x: 5.0, cell_y: 5.0, "
              "sampling_fraction: 0.013, sampling_term: 0.17}\n" for _ in range(6))

GAN3D_TINY = {"name": "gan3d", "particle": "electron", "conditions": {"incident_energy": "log", "incident_theta": "cos"},
              "latent_dim": 8, "seed_channels": 2, "upsample": [2, 4, 4], "generator_channels": [3],
              "generator_kernel": [3, 3, 3], "discriminator_channels": [3, 3], "discriminator_kernel": [3, 3, 3],
              "generator_steps": 1}
BIBAE_TINY = {"name": "bibae", "particle": "electron", "conditions": {"incident_energy": "log", "incident_theta": "cos"},
              "latent_dim": 3, "random_dim": 2, "encoder_channels": [2], "decoder_channels": [2], "decoder_upsample": 2,
              "decoder_seed_channels": 2, "hidden": 16, "critic_channels": [2], "critic_hidden": 8,
              "postprocessor_channels": 4, "stages": [3, 3], "critic_steps": 1, "hit_mmd_kernel": 8,
              "hit_mmd_stride": 8, "hit_mmd_cutoff": 32, "kde_max_showers": 40,
              "reset_critic_every": 2}  # the resetting critic restarts at iterations 0 and 2 (across the resume)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(geometry path, 120 electron showers 10–50 GeV at θ 60°–120°)."""
    path = tmp_path_factory.mktemp("geo") / "toy.yaml"
    path.write_text(TOY_GEOMETRY)
    data = simulate(str(path), "electron", "10GeV:50GeV", 120, theta=(math.radians(60), math.radians(120)),
                    phi=0.0, seed=3)
    return path, data


def _config(model: dict, geometry, **training) -> dict:
    t = {"batch_size": 8, "max_iterations": 6, "checkpoint_every": 2, "log_every": 1, "tensorboard": False,
         "validation_fraction": 0.2, "score_max_showers": 16, "keep_checkpoints": 10}
    return {"model": {**model, "geometry": str(geometry)}, "training": {**t, **training}}


# ----------------------------------------------------------------------------------
# geometries and presets
# ----------------------------------------------------------------------------------
def test_angled_geometries_have_the_papers_grids():
    clic, ild, ild_a = load_geometry("clic-angled"), load_geometry("ild"), load_geometry("ild-angled")
    assert clic.n_voxels == 51 * 51 * 25 and {(l.ny, l.nx, l.cell_x) for l in clic.layers} == {(51, 51, 5.0)}
    assert ild_a.n_voxels == 30 * 60 * 30 and {(l.ny, l.nx) for l in ild_a.layers} == {(60, 30)}
    # same absorber stack as ild: only the readout window changes
    assert [(l.thickness, l.material, l.sampling_fraction) for l in ild_a.layers] == \
           [(l.thickness, l.material, l.sampling_fraction) for l in ild.layers]


def test_angled_presets_follow_the_papers():
    clic = SIMULATION_PRESETS["clic-angled"].parts("electron", 0.001)
    clic_preset = SIMULATION_PRESETS["clic-angled"]
    assert clic_preset.geometry == "clic-angled" and clic_preset.default_particle == "electron"
    assert clic[0].energies.low == 10e3 and clic[0].energies.high == 500e3
    assert np.allclose(np.degrees(clic[0].theta), (60, 120))
    ild = SIMULATION_PRESETS["ild-angled"].parts(None, 0.01)[0]
    assert (ild.energies.low, ild.energies.high) == (10e3, 100e3) and np.allclose(np.degrees(ild.theta), (30, 90))
    test = SIMULATION_PRESETS["ild-angled-test"].parts(None, 0.001)
    points = {(float(p.energies[0]), round(math.degrees(p.theta))) for p in test}
    assert len(points) == 9 and {e for e, _ in points} == {20e3, 50e3, 80e3} and {t for _, t in points} == {40, 60, 80}


def test_ild_test_points_store_theta_and_showers_lean_with_it():
    """Fixed entry point, tilt along y: a smaller θ moves the centre of gravity up in y and forward in z,
    and the principal axis follows the true θ."""
    from caloforge.evaluate.granular_observables import summarise

    d = simulate_preset("ild-angled-test", scale=0.002, seed=0)  # 4 showers per point
    assert d.showers.shape == (36, 54000)
    assert np.allclose(sorted(set(np.round(np.degrees(d.conditions["incident_theta"])))), [40, 60, 80])
    s = summarise(d, "ild-angled")
    th = np.round(np.degrees(s.theta))
    cog_y = [s.scalars["cog_y"][th == t].mean() for t in (40, 60, 80)]
    cog_z = [s.scalars["cog_z"][th == t].mean() for t in (40, 60, 80)]
    reco = [np.degrees(s.scalars["theta_reco"][th == t]).mean() for t in (40, 60, 80)]
    assert cog_y[0] > cog_y[1] + 10 > cog_y[2] + 20  # mm
    assert cog_z[0] < cog_z[2]
    assert reco[0] < reco[1] < reco[2] and abs(reco[2] - 80) < 10 and abs(reco[0] - 40) < 15


# ----------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gan3d-clic-angled", "gan3d-clic", "gan3d-clic-cpu", "bibae-ild-angled",
                                  "bibae-ild-angled-cpu"])
def test_shipped_configs_load(name):
    cfg = load_config(name)
    assert cfg.model.name in ("gan3d", "bibae")


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.geometry"):
        load_config({"model": {"name": "gan3d", "geometry": "ds1-photons"}})
    with pytest.raises(ConfigError, match="model.stages"):
        load_config({"model": {"name": "bibae", "stages": [0, 10]}})
    with pytest.raises(ConfigError, match="model.generator_kernel"):
        load_config({"model": {"name": "gan3d", "generator_kernel": [4, 3, 3]}})


@pytest.mark.parametrize("name", ["gan3d-clic-angled", "gan3d-clic"])
def test_paper_sized_3dgan_has_about_a_million_parameters(name):
    from caloforge.models.base import build
    from caloforge.models.gan3d import count_parameters

    state = {"conditions": {"specs": [{"name": "incident_energy", "encoding": "log", "lo": 1e4, "hi": 5e5},
                                      {"name": "incident_theta", "encoding": "cos", "lo": 1.0, "hi": 2.1}]},
             "sampling_fraction": [0.01, 0.0, 0.0], "tilt_phi": 0.0}
    with torch.device("meta"):
        model = build(load_config(name).model, state)
    assert 0.9e6 < count_parameters(model) < 1.2e6


# ----------------------------------------------------------------------------------
# training, resume, generation, checkpoints
# ----------------------------------------------------------------------------------
def _sample(path, data, seed=0):
    from caloforge.generate import generate, load_model

    gen = load_model(path)
    return gen, generate(gen, data.incident_energy[:6], conditions={"incident_theta": data.conditions["incident_theta"][:6]},
                         seed=seed)


class _Runs(dict):
    """family → (a 6-iteration run, the same run stopped after 2 iterations and resumed to 6),
    trained on first use (each xdist worker trains only the families its tests need)."""

    def __init__(self, toy, factory) -> None:
        super().__init__()
        self.toy, self.factory = toy, factory

    def __missing__(self, family: str):
        geo, data = self.toy
        model = GAN3D_TINY if family == "gan3d" else BIBAE_TINY
        base = self.factory.mktemp(family)
        train(_config(model, geo), data, base / "ref", progress=False)
        train(_config(model, geo), data, base / "cut", progress=False, max_iterations=2)
        train(_config(model, geo), data, base / "cut", progress=False, resume=True)
        self[family] = (base / "ref", base / "cut")
        return self[family]


@pytest.fixture(scope="module")
def runs(toy, tmp_path_factory):
    return _Runs(toy, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gan3d", "bibae"])
def test_train_generate_and_checkpoint_round_trip(toy, runs, family):
    _, data = toy
    run = runs[family][0]
    assert (run / "best").exists() and (run / "checkpoints" / "iter-0000006").is_dir()
    gen, out = _sample(run / "checkpoints" / "iter-0000006", data)
    assert out.showers.shape == (6, 384) and np.all(np.isfinite(out.showers)) and np.all(out.showers >= 0)
    assert out.showers.sum() > 0
    _, again = _sample(run / "checkpoints" / "iter-0000006", data)
    assert np.array_equal(out.showers, again.showers)  # safetensors + JSON reload, same seed: same showers
    # the exported network (physical conditions in) agrees with decode()
    model = gen.model
    noise = model.sample_noise(3, torch.Generator().manual_seed(0))
    cond = torch.tensor([[2e4, 1.2], [3e4, 1.6], [4e4, 1.9]], dtype=torch.float64)
    exported = model.export_module()(noise, cond)
    direct = model.decode(noise, cond[:, 0], {"incident_theta": cond[:, 1]})
    assert torch.allclose(exported, direct.float())


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gan3d", "bibae"])
def test_resume_is_bit_identical(runs, family):
    """For bibae the resumed run crosses the end of stage 1 (latent KDE fit) into the post-processor stage."""
    ref, cut = runs[family]
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(ref / "checkpoints" / "iter-0000006" / name)
        b = load_file(cut / "checkpoints" / "iter-0000006" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"


@pytest.mark.parametrize("family", ["gan3d", "bibae"])
def test_outputs_depend_on_the_angle(toy, family):
    from caloforge.models.base import fit

    _, data = toy
    cfg = load_config(_config(GAN3D_TINY if family == "gan3d" else BIBAE_TINY, toy[0])).model
    model = fit(cfg, torch.as_tensor(data.showers), torch.as_tensor(data.incident_energy),
                {k: torch.as_tensor(v) for k, v in data.conditions.items()}).eval()
    noise = model.sample_noise(4, torch.Generator().manual_seed(1))
    e = torch.full((4,), 3e4, dtype=torch.float64)
    a = model.decode(noise, e, {"incident_theta": torch.full((4,), math.radians(65), dtype=torch.float64)})
    b = model.decode(noise, e, {"incident_theta": torch.full((4,), math.radians(115), dtype=torch.float64)})
    assert (a - b).abs().max() > 1e-6 * a.abs().max()


@pytest.mark.slow
def test_bibae_stages_fit_the_latent_kde_and_switch_on_the_postprocessor(runs):
    from caloforge.generate import load_model

    run = runs["bibae"][0]
    # best is chosen among the complete (second-stage) checkpoints: never a model without KDE / post-processor
    assert load_model(run / "best").model.complete and load_model(run / "best").iteration in (4, 6)
    stage1 = load_model(run / "checkpoints" / "iter-0000002").model
    assert not stage1.complete
    assert stage1.stage == 1 and not stage1.latent_density_fitted and int(stage1.postprocessor_active) == 0
    end1 = load_model(run / "checkpoints" / "iter-0000004").model
    assert end1.latent_density_fitted and int(end1.kde_count) == 40 and int(end1.postprocessor_active) == 1
    # the encoder and decoder are frozen in stage 2: only the post-processor's weights move
    w4 = load_file(run / "checkpoints" / "iter-0000004" / "model.safetensors")
    w6 = load_file(run / "checkpoints" / "iter-0000006" / "model.safetensors")
    moved = {k.split(".")[0] for k in w4 if k != "iteration" and not torch.equal(w4[k], w6[k])}
    assert moved == {"postprocessor"}
    # latent codes now come from the KDE: their mean follows the stored encoded showers, not N(0, 1)
    z = end1.sample_noise(4000, torch.Generator().manual_seed(0))[:, :3]
    kde_mean = end1.kde_points[: int(end1.kde_count)].mean(0)
    assert torch.allclose(z.mean(0), kde_mean, atol=0.1 + 0.1 * float(kde_mean.abs().max()))


def test_bibae_resetting_critic_restarts_on_schedule(toy):
    """The second critic restarts every ``reset_critic_every`` iterations: fresh weights drawn from the
    training generator (reproducible) and an empty Adam state; in between it trains like the first."""
    from caloforge.models.base import BatchSource, fit

    geo, data = toy
    cfg = load_config(_config(BIBAE_TINY, geo)).model
    showers, e = torch.as_tensor(data.showers), torch.as_tensor(data.incident_energy)
    cond = {k: torch.as_tensor(v) for k, v in data.conditions.items()}
    torch.manual_seed(0)
    model = fit(cfg, showers, e, cond)
    assert model.reset_critic is not None and set(model.configure_optimizers()) >= {"critic", "reset_critic"}
    opts = model.configure_optimizers()
    batches = BatchSource(showers, e, cond, 8, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)

    def weights(net):
        return [p.detach().clone() for p in net.parameters()]

    losses = model.training_step(batches, opts, g)  # iteration 0: restart, then one update of both critics
    assert losses["reset_critic_loss"] != 0.0 and math.isfinite(losses["reset_critic_loss"])
    assert len(opts["reset_critic"].state) > 0
    w1, first1 = weights(model.reset_critic), weights(model.critic)
    model.training_step(batches, opts, g)  # iteration 1: no restart, both critics keep training
    assert all(not torch.equal(a, b) for a, b in zip(w1, weights(model.reset_critic)) if a.dim() > 1)
    assert any(not torch.equal(a, b) for a, b in zip(first1, weights(model.critic)))
    # iteration 2: a restart draws fresh weights from the generator: the same draw gives the same weights
    state = g.get_state()
    global_rng = torch.get_rng_state()
    model.restart_reset_critic(opts["reset_critic"], g)
    fresh = weights(model.reset_critic)
    assert len(opts["reset_critic"].state) == 0 and torch.equal(torch.get_rng_state(), global_rng)
    g.set_state(state)
    model.restart_reset_critic(opts["reset_critic"], g)
    assert all(torch.equal(a, b) for a, b in zip(fresh, weights(model.reset_critic)))
    g2 = torch.Generator().manual_seed(99)
    model.restart_reset_critic(opts["reset_critic"], g2)
    assert any(not torch.equal(a, b) for a, b in zip(fresh, weights(model.reset_critic)))
    # the first critic is never restarted and a one-critic config has no second critic at all
    one = fit(load_config(_config({**BIBAE_TINY, "reset_critic_every": 0}, geo)).model, showers, e, cond)
    assert one.reset_critic is None and "reset_critic" not in one.configure_optimizers()
    assert "reset_critic_loss" not in one.loss_names and "reset_critic_loss" in model.loss_names  # log.csv columns
    assert not any(k.startswith("reset_critic") for k in one.state_dict())


def test_gan3d_sampling_fraction_fit_and_regression_heads(toy):
    from caloforge.models.base import fit

    geo, data = toy
    cfg = load_config(_config(GAN3D_TINY, geo)).model
    model = fit(cfg, torch.as_tensor(data.showers), torch.as_tensor(data.incident_energy),
                {k: torch.as_tensor(v) for k, v in data.conditions.items()})
    sf = model.sampling_fraction(torch.as_tensor(data.incident_energy), torch.as_tensor(data.conditions["incident_theta"]))
    measured = data.showers.sum(1) / data.incident_energy
    assert abs(float(sf.mean()) - measured.mean()) < 0.05 * measured.mean()
    e, th = model.regress(torch.as_tensor(data.showers[:5]))
    assert e.shape == th.shape == (5,) and torch.all(torch.isfinite(e))


# ----------------------------------------------------------------------------------
# evaluator
# ----------------------------------------------------------------------------------
def test_evaluate_report_shows_granular_observables(toy, tmp_path):
    from caloforge.evaluate import compare
    from caloforge.evaluate.granular_observables import plot_granular
    from caloforge.evaluate.report import write_report
    from caloforge.io import ShowerData

    geo, data = toy
    half = len(data) // 2
    ref = data.select(slice(0, half))
    shifted = ShowerData(data.incident_energy[half:], data.showers[half:] * 1.5,
                         {k: v[half:] for k, v in data.conditions.items()})
    result = compare(ref, shifted, load_geometry(str(geo)), fpd_kpd=False, per_energy=False)
    g = result.metrics["granular"]
    assert g["features"]["visible_mip"]["mean_generated"] > 1.3 * g["features"]["visible_mip"]["mean_reference"]
    assert {"n_hits", "cog_z", "theta_reco", "seg1", "sampling_frac"} <= set(g["features"])
    assert [p["theta_deg"] for p in g["points"]] and all(60 <= p["theta_deg"] <= 120 for p in g["points"])
    page = write_report(result, tmp_path / "report", plots=False).read_text()  # the shared plots take long
    assert "Highly granular observables" in page and "θ bias" in page
    rows = plot_granular(result.metrics, tmp_path / "report")
    assert [r[2] for r in rows] == ["granular_profiles.png", "granular_features.png"]
    assert all((tmp_path / "report" / r[2]).stat().st_size > 1000 for r in rows)
