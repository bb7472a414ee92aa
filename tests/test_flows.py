"""The flow families: caloflow, flow_matching, student (likelihood, ODE convergence, distillation,
train → resume → generate → evaluate like the GAN)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.errors import ConfigError
from caloforge.generate import generate, load_model
from caloforge.io import ShowerData, read_showers, write_showers
from caloforge.models import load_config
from caloforge.models.flow_matching import integrate
from caloforge.models.parts.flows import FlowConfig, conditional_flow, flow_inverse, flow_log_prob
from caloforge.train import train



def toy_photons(n_per_energy: int = 60, seed: int = 0, energies=(256.0, 4096.0, 65536.0)) -> ShowerData:
    """DS1-photon-like toy showers: a fixed voxel profile × E_inc × response, with empty voxels."""
    rng = np.random.default_rng(seed)
    profile = rng.dirichlet(np.full(368, 0.3))
    e = np.repeat(np.asarray(energies, dtype=np.float64), n_per_energy)
    response = 0.17 * (1 + 0.02 * rng.standard_normal(len(e)))
    showers = profile * rng.gamma(20.0, 1 / 20.0, (len(e), 368))
    showers *= (response * e / showers.sum(1))[:, None]
    showers[showers < 1e-3] = 0.0  # the readout threshold of the reference data
    return ShowerData(e, showers.astype(np.float32))


def _tiny(name: str, **training) -> dict:
    cfg = load_config(name).to_dict()
    cfg["training"].update(training)
    return cfg


@pytest.fixture(scope="module")
def data() -> ShowerData:
    return toy_photons(40)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, data) -> Path:
    """A tiny flow-matching teacher trained for the student tests (and checked itself)."""
    run = tmp_path_factory.mktemp("fm") / "run"
    res = train(_tiny("flow-matching-tiny"), data, run, progress=False)
    assert res.stopped == "completed" and res.best_checkpoint is not None
    return run


# ----------------------------------------------------------------------------------
# Likelihood and ODE on toy problems
# ----------------------------------------------------------------------------------
def test_flow_log_likelihood_of_a_known_conditional_gaussian():
    """A coupling flow trained on x | c ~ N(A c, Σ) reaches the true entropy, and its density is normalised."""
    torch.manual_seed(0)
    chol = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.5, 0.0], [-0.3, 0.2, 0.4]])
    shift = torch.tensor([[1.0, -1.0, 0.5]])

    def draw(n, g):
        c = torch.rand(n, 1, generator=g) * 2 - 1
        return c * shift + torch.randn(n, 3, generator=g) @ chol.T, c

    flow = conditional_flow(3, 1, FlowConfig("affine", 3, [32]), seed=0)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        x, c = draw(256, g)
        loss = -flow_log_prob(flow, x, c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, c = draw(4000, torch.Generator().manual_seed(2))
    with torch.no_grad():
        nll = -flow_log_prob(flow, x, c).mean().item()
        truth = torch.distributions.MultivariateNormal(c * shift, scale_tril=chol)
        true_nll = -truth.log_prob(x).mean().item()
        # the conditional mean is learnt, and sampling is the exact inverse of the density's map
        z = torch.randn(4000, 3, generator=torch.Generator().manual_seed(3))
        cc = torch.full((4000, 1), 0.5)
        sample = flow_inverse(flow, z, cc)
    assert abs(nll - true_nll) < 0.05, (nll, true_nll)
    assert torch.allclose(sample.mean(0), 0.5 * shift[0], atol=0.08)
    assert torch.allclose(torch.cov(sample.T), chol @ chol.T, atol=0.15)


def test_ode_solvers_converge_with_the_number_of_steps():
    """dx/dt = A x from t=0 to 1 (exact: expm(A) x₀): error falls as 1/n (Euler), 1/n² (midpoint), 1/n⁴ (RK4)."""
    a = torch.tensor([[0.0, 1.0], [-2.0, -0.3]], dtype=torch.float64)
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    exact = x0 @ torch.linalg.matrix_exp(a).T
    for solver, order in (("euler", 1), ("midpoint", 2), ("rk4", 4)):
        errors = [(integrate(lambda t, x: x @ a.T, x0, n, solver) - exact).norm().item() for n in (4, 8, 16, 32)]
        assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), (solver, errors)
        rate = math.log2(errors[-2] / errors[-1])
        assert abs(rate - order) < 0.4, (solver, rate)


@pytest.mark.slow
def test_flow_matching_samples_converge_with_steps(teacher_run):
    """The learnt ODE: Euler samples approach the 256-step RK4 solution as the steps grow."""
    model = load_model(teacher_run / "best").model
    e = torch.full((200,), 4096.0, dtype=torch.float64)
    noise = model.sample_noise(200, torch.Generator().manual_seed(3))

    def voxels(steps, solver):
        model.set_sampling(steps=steps, solver=solver)
        with torch.no_grad():
            return model.transport(noise, e, {})[1]

    ref = voxels(256, "rk4")
    errors = [(voxels(n, "euler") - ref).abs().mean().item() for n in (1, 4, 16, 64)]
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05 * errors[0], errors
    # and the showers follow: with 64 steps they match the converged ones closely
    model.set_sampling(steps=64, solver="euler")
    coarse = model.decode(noise, e, {})
    model.set_sampling(steps=256, solver="rk4")
    fine = model.decode(noise, e, {})
    assert torch.allclose(coarse.sum(1), fine.sum(1), rtol=0.02)


# ----------------------------------------------------------------------------------
# Train → checkpoint → resume → generate, like the GAN
# ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name, radial", [("caloflow-tiny", False), ("flow-matching-tiny", False),
                                          ("flow-matching-tiny", True)])
def test_train_resume_generate_round_trip(tmp_path, data, name, radial):
    def cfg(**training):
        c = _tiny(name, **training)
        c["model"]["radial_split"] = radial  # r–α layers 1 and 2 as 16 + 19 ring fractions + α within rings
        return c

    full = train(cfg(), data, tmp_path / "full", progress=False)
    assert full.stopped == "completed" and full.iterations == 20
    half = train(cfg(), data, tmp_path / "half", progress=False, max_iterations=10)
    assert half.iterations == 10
    resumed = train(cfg(), data, tmp_path / "half", progress=False, resume=True)
    assert resumed.iterations == 20
    a = load_file(tmp_path / "full" / "checkpoints" / "iter-0000020" / "model.safetensors")
    b = load_file(tmp_path / "half" / "checkpoints" / "iter-0000020" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resume is bit-identical
    rows = [r.split(",") for r in (tmp_path / "full" / "scores.csv").read_text().splitlines()]
    want = "val_nll" if name.startswith("caloflow") else "val_cfm"
    col = rows[0].index(want)
    assert all(math.isfinite(float(v)) for r in rows[1:] for v in r[1:-1])
    assert float(rows[2][col]) < float(rows[1][col])  # the held-out loss falls as it trains
    if name.startswith("flow-matching"):  # val_loss is the training objective: cfm + layer NLL per layer
        score = {k: float(v) for k, v in zip(rows[0], rows[-1])}
        assert score["val_loss"] == pytest.approx(score["val_cfm"] + score["val_nll_layers"] / 5, rel=1e-6)
    meta = json.loads((tmp_path / "full" / "best" / "config.json").read_text())
    assert meta["family"] == load_config(name).model.name and meta["noise_dim"] == 5 + 368 + (35 if radial else 0)
    gen = load_model(tmp_path / "full" / "best")
    out = generate(gen, np.array([256.0, 4096.0, 65536.0] * 5), seed=7)
    again = generate(gen, np.array([256.0, 4096.0, 65536.0] * 5), seed=7)
    assert out.showers.shape == (15, 368) and np.isfinite(out.showers).all() and (out.showers >= 0).all()
    assert np.array_equal(out.showers, again.showers)  # reproducible from the seed
    # empty voxels are exact zeros, hits at or above the training data's readout threshold (fitted)
    hits = out.showers[out.showers > 0]
    threshold = gen.model.representation.threshold_mev
    assert threshold >= float(data.showers[data.showers > 0].min()) >= 1e-3  # not the 1 keV noise: the data's
    assert (out.showers == 0).any() and hits.min() >= threshold


@pytest.mark.slow
@pytest.mark.parametrize("name", ["caloflow-tiny", "flow-matching-tiny"])
def test_weight_average_samples_validates_and_resumes_bit_identically(tmp_path, data, name):
    """model.ema_decay: the averaged copies are not optimised, are what sampling and
    validation read, and a resumed run continues the same average."""
    from caloforge.models.base import Batch

    def cfg(**training):
        c = _tiny(name, **training)
        c["model"]["ema_decay"] = 0.9
        return c

    train(cfg(), data, tmp_path / "full", progress=False)
    train(cfg(), data, tmp_path / "half", progress=False, max_iterations=10)
    train(cfg(), data, tmp_path / "half", progress=False, resume=True)
    a = load_file(tmp_path / "full" / "checkpoints" / "iter-0000020" / "model.safetensors")
    b = load_file(tmp_path / "half" / "checkpoints" / "iter-0000020" / "model.safetensors")
    averaged = [k for k in a if k.startswith("average.networks.")]
    assert averaged and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in averaged if k.endswith("weight")]
    assert any(not torch.equal(a[k], a[k.removeprefix("average.networks.")]) for k in weights)  # it lags

    model = load_model(tmp_path / "full" / "checkpoints" / "iter-0000020").model
    optimised = {id(p) for g in model.configure_optimizers()["model"].param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in model.average.parameters()}
    assert len(optimised) + len(list(model.average.parameters())) == len(list(model.parameters()))

    e = torch.as_tensor(np.array([256.0, 4096.0, 65536.0] * 4))
    noise = model.sample_noise(len(e), torch.Generator().manual_seed(3))
    batch = Batch(torch.as_tensor(data.showers[:24]), torch.as_tensor(data.incident_energy[:24]), {})
    with torch.no_grad():
        sampled, scores = model.decode(noise, e, {}), model.validation_metrics(batch)
        for net in model.averaged:  # put the averaged weights into the trained networks: the same model
            getattr(model, net).load_state_dict(model.average[net].state_dict())
        model.average = None
        assert torch.equal(model.decode(noise, e, {}), sampled)
        assert model.validation_metrics(batch) == scores


@pytest.mark.slow
def test_caloflow_validation_nll_is_the_exact_likelihood(tmp_path, data):
    """val_nll = −log p_flow(y) − log|∂y/∂x|: recomputed by hand from the saved model."""
    from caloforge.models.base import Batch
    from caloforge.train import split_validation

    run = tmp_path / "run"
    train(_tiny("caloflow-tiny", max_iterations=10, checkpoint_every=10), data, run, progress=False)
    model = load_model(run / "best").model
    _, val = split_validation(data, 0.2, 0)
    s = torch.as_tensor(val.showers)
    e = torch.as_tensor(val.incident_energy)
    got = model.validation_metrics(Batch(s, e, {}))["val_nll"]
    g = torch.Generator().manual_seed(0)
    y1, y2, logdet = model.representation.encode(s, e, g)
    c = model.condition_encoder.encode(e, {})
    with torch.no_grad():
        lp = flow_log_prob(model.layer_flow, y1, c) + flow_log_prob(model.voxel_flow, y2, torch.cat([c, y1], 1))
    assert got == pytest.approx(-(lp.double() + logdet).mean().item(), rel=1e-6)
    assert float((run / "scores.csv").read_text().splitlines()[1].split(",")[2]) == pytest.approx(got, rel=1e-4)


@pytest.mark.slow
def test_caloflow_temperature_and_envelope(tmp_path, data):
    """The voxel-flow temperature narrows only the voxel latent (layer energies, hence E_tot, keep
    their spread; ``noise_spec`` says so for deployments); every generated voxel stays inside the
    fitted envelope of its energy."""
    from caloforge.preprocessing import split_layers

    run = tmp_path / "run"
    train(_tiny("caloflow-tiny", max_iterations=10, checkpoint_every=10), data, run, progress=False)
    gen = load_model(run / "best")
    model = gen.model
    assert model.sampling_options == {"temperature": 1.0}
    e = np.repeat([256.0, 4096.0, 65536.0], 200)
    full = generate(gen, e, seed=3).showers
    model.set_sampling(temperature="0.5")
    spec = model.noise_spec()["std"]
    assert spec[:5] == [1.0] * 5 and set(spec[5:]) == {0.5}
    z = model.sample_noise(4000, torch.Generator().manual_seed(0))
    assert z[:, :5].std().item() == pytest.approx(1.0, rel=0.05)
    assert z[:, 5:].std().item() == pytest.approx(0.5, rel=0.05)
    cold = generate(gen, e, seed=3).showers
    # same latent for the layer flow: the same layer energies, so the same E_tot per shower
    assert np.allclose(cold.sum(1), full.sum(1), rtol=1e-3)
    with pytest.raises(ConfigError, match="temperature"):
        model.set_sampling(temperature=0.0)
    env = model.representation.envelope
    assert env is not None
    cap = env.max_fraction[env.bin_index(torch.as_tensor(e))].numpy()
    sizes = model.representation.layer_sizes
    n_layer = np.repeat(sizes, sizes)  # voxels of each voxel's layer
    for showers in (full, cold):
        layer_sum = np.repeat(split_layers(torch.as_tensor(showers, dtype=torch.float64), sizes)[0].numpy(), sizes, 1)
        # the readout threshold zeroes small voxels after the cap: at most n × threshold left the layer
        most = cap * (layer_sum + n_layer * model.representation.threshold_mev)
        assert (showers <= most * (1 + 1e-4) + 1e-6).all()


# ----------------------------------------------------------------------------------
# Sampling options
# ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sampling_options_are_checked(teacher_run):
    gen = load_model(teacher_run / "best")
    assert gen.model.sampling_options == {"steps": 4, "solver": "euler"}
    gen.model.set_sampling(steps="8")
    assert gen.model.sampling_options["steps"] == 8
    with pytest.raises(ConfigError, match="not known"):
        gen.model.set_sampling(temperature=1.0)
    with pytest.raises(ConfigError, match="steps"):
        gen.model.set_sampling(steps="many")
    with pytest.raises(ConfigError, match="solver"):
        gen.model.set_sampling(solver="dopri9")
    assert gen.model.sampling_options["steps"] == 8  # a refused change leaves the options as they were


@pytest.mark.slow
def test_cli_generate_sampling_option_and_evaluate(tmp_path, teacher_run, data):
    runner = CliRunner()
    out = tmp_path / "gen.h5"
    r = runner.invoke(app, ["generate", "-m", str(teacher_run), "-o", str(out), "-e", "4GeV", "-n", "30",
                            "--sampling", "steps=2", "--sampling", "solver=midpoint"])
    assert r.exit_code == 0, r.output
    assert read_showers(out).showers.shape == (30, 368)
    import h5py

    with h5py.File(out) as f:
        assert int(f.attrs["sampling_steps"]) == 2 and f.attrs["sampling_solver"] == "midpoint"
    bad = runner.invoke(app, ["generate", "-m", str(teacher_run), "-o", str(tmp_path / "x.h5"), "-e", "4GeV",
                              "-n", "3", "--sampling", "temperature=2"])
    assert bad.exit_code == 2 and "not known" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x.h5").exists()
    gan = runner.invoke(app, ["generate", "-m", str(teacher_run), "-o", str(tmp_path / "y.h5"), "-e", "4GeV",
                              "-n", "3", "--sampling", "steps"])
    assert gan.exit_code == 2 and "KEY=VALUE" in gan.output
    # evaluated exactly like the GAN: same command, same report
    ref = tmp_path / "ref.h5"
    part = data.select(slice(0, 60))
    write_showers(ref, part.incident_energy, part.showers)
    gen2 = tmp_path / "gen2.h5"
    assert runner.invoke(app, ["generate", "-m", str(teacher_run), "-o", str(gen2), "--like", str(ref)]).exit_code == 0
    ev = runner.invoke(app, ["evaluate", "--reference", str(ref), "--generated", str(gen2), "--geometry",
                             "ds1-photons", "-o", str(tmp_path / "ev"), "--no-plots", "--no-per-energy"])
    assert ev.exit_code == 0, ev.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_generated"] == 60 and (tmp_path / "ev" / "report.html").exists()


# ----------------------------------------------------------------------------------
# The student
# ----------------------------------------------------------------------------------
def _student_cfg(teacher: Path, **training) -> dict:
    cfg = _tiny("student-tiny", **training)
    cfg["model"]["teacher"] = str(teacher / "best")
    return cfg


@pytest.mark.slow
def test_student_reproduces_its_teacher(tmp_path, teacher_run, data):
    cfg = _student_cfg(teacher_run, max_iterations=100, checkpoint_every=50, batch_size=128)
    cfg["model"].update(hidden=[128, 128], pool_size=2048, pool_refresh=50, lr=3e-3)
    res = train(cfg, data, tmp_path / "st", progress=False)
    assert res.stopped == "completed"
    student = load_model(tmp_path / "st" / "best").model
    teacher = load_model(teacher_run / "best").model
    teacher.set_sampling(steps=4)  # the student's teacher_steps
    assert sum(p.numel() for p in student.parameters()) < 0.26e6
    # decode is one MLP pass: same noise → the teacher's showers
    e = torch.as_tensor(np.repeat([256.0, 4096.0, 65536.0], 100))
    noise = teacher.sample_noise(len(e), torch.Generator().manual_seed(9))
    with torch.no_grad():
        t1, t2 = teacher.transport(noise, e, {})
        s1, s2 = student.forward_representation(noise, e, {})
        target = torch.cat([t1, t2], 1)
        err = (torch.cat([s1, s2], 1) - target).square().mean() / target.var(0).mean()
        ts, ss = teacher.decode(noise, e, {}), student.decode(noise, e, {})
    assert err < 0.1, err.item()  # 90 % of the teacher's variance explained by one pass
    # physics: the student's total energy per incident energy follows the teacher's
    for energy in (256.0, 4096.0, 65536.0):
        rows = e == energy
        ratio = ss[rows].sum(1).mean() / ts[rows].sum(1).mean()
        assert abs(ratio.item() - 1) < 0.1, (energy, ratio.item())
    # its checkpoint stands alone: the teacher's weights are not in it
    keys = load_file(tmp_path / "st" / "best" / "model.safetensors").keys()
    assert all(k.startswith("generator_net.") or k == "noise_gain" for k in keys)


@pytest.mark.slow
def test_student_resume_is_bit_identical_and_needs_a_teacher(tmp_path, teacher_run, data):
    cfg = _student_cfg(teacher_run)
    train(cfg, data, tmp_path / "full", progress=False)
    train(cfg, data, tmp_path / "half", progress=False, max_iterations=10)
    train(cfg, data, tmp_path / "half", progress=False, resume=True)
    a = load_file(tmp_path / "full" / "checkpoints" / "iter-0000020" / "model.safetensors")
    b = load_file(tmp_path / "half" / "checkpoints" / "iter-0000020" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    missing = _student_cfg(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="model.teacher"):
        train(missing, data, tmp_path / "bad", progress=False)
    # a GAN is no teacher
    gan_run = tmp_path / "gan"
    train({"model": {"latent_dim": 4, "generator_hidden": [8], "critic_hidden": [8], "critic_steps": 1},
           "training": {"batch_size": 16, "max_iterations": 2, "checkpoint_every": 2, "tensorboard": False}},
          data, gan_run, progress=False)
    with pytest.raises(ConfigError, match="distils flow_matching or caloflow"):
        train(_student_cfg(gan_run), data, tmp_path / "bad2", progress=False)


def test_student_layer_weight_counts_layer_coordinates_more():
    """``model.layer_weight`` w: each of the L layer coordinates counts w voxel coordinates in the
    regression; w = 1 is the plain mean over (y₁ ‖ y₂)."""
    from types import SimpleNamespace

    from caloforge.models.student import Student

    g = torch.Generator().manual_seed(0)
    s1, s2, target = torch.randn(64, 5, generator=g), torch.randn(64, 40, generator=g), torch.randn(64, 45, generator=g)

    def loss(w, a=s1, b=s2):
        return Student._regression(SimpleNamespace(config=SimpleNamespace(layer_weight=w)), a, b, target)

    torch.testing.assert_close(loss(1.0), (torch.cat([s1, s2], 1) - target).square().mean())
    # a layer error alone costs w/(5w + 40) of its square; a voxel error alone 1/(5w + 40)
    layer_off, voxel_off = target[:, :5].clone(), target[:, 5:].clone()
    layer_off[:, 0] += 1.0
    voxel_off[:, 0] += 1.0
    for w in (1.0, 8.0, 40.0):
        torch.testing.assert_close(loss(w, layer_off, target[:, 5:]), torch.tensor(w / (5 * w + 40)))
        torch.testing.assert_close(loss(w, target[:, :5], voxel_off), torch.tensor(1 / (5 * w + 40)))


@pytest.mark.slow
def test_student_layer_weight_config_and_resume_of_older_runs(tmp_path, teacher_run, data):
    """A bad weight is a one-line config error; a student run written before the key existed
    resumes with the default (which is what it trained with), not with another weight."""
    bad = _student_cfg(teacher_run)
    bad["model"]["layer_weight"] = 0
    with pytest.raises(ConfigError, match="model.layer_weight"):
        train(bad, data, tmp_path / "bad", progress=False)
    cfg = _student_cfg(teacher_run, max_iterations=10, checkpoint_every=10)
    train(cfg, data, tmp_path / "old", progress=False)
    run_json = tmp_path / "old" / "run.json"
    info = json.loads(run_json.read_text())
    del info["config"]["model"]["layer_weight"]  # as caloforge 0.2 wrote it
    run_json.write_text(json.dumps(info))
    heavier = _student_cfg(teacher_run, max_iterations=20, checkpoint_every=10)
    heavier["model"]["layer_weight"] = 40.0
    with pytest.raises(ConfigError, match="layer_weight"):
        train(heavier, data, tmp_path / "old", progress=False, resume=True)
    res = train(_student_cfg(teacher_run, max_iterations=20, checkpoint_every=10), data, tmp_path / "old",
                progress=False, resume=True)
    assert res.stopped == "completed"


def test_marginal_map_carries_each_marginal_per_energy_bin_and_keeps_the_order():
    """Fitted on paired rows, the map carries every coordinate's marginal onto the target's, bin by
    bin; it is monotone (the source's order survives); unfitted or empty bins stay the identity."""
    from caloforge.models.parts.energy_bins import energy_bin_edges
    from caloforge.models.parts.marginal_map import MarginalMap

    g = torch.Generator().manual_seed(0)
    n = 20000
    energy = torch.where(torch.rand(n, generator=g) < 0.5, 256.0, 65536.0).to(torch.float64)
    high = (energy > 1000)[:, None]
    z = torch.randn(n, 3, generator=g)
    # a regression student: smeared towards the mean, a little off centre; the target differs per bin,
    # with an atom (an empty-voxel mode) in coordinate 2
    source = 0.8 * z + 0.1
    target = torch.where(high, 2.0 * z + 1.0, z.exp())
    target[:, 2] = torch.where(z[:, 2] < 0.0, -5.0, target[:, 2])
    edges = energy_bin_edges(torch.tensor([256.0, 65536.0, 4.0e6]), bins=4)  # 3 bins: the last one stays empty
    m = MarginalMap(edges, features=3, knots=65, lo=torch.full((3,), -10.0), hi=torch.full((3,), 10.0))
    fresh = 0.8 * torch.randn(n, 3, generator=g) + 0.1
    torch.testing.assert_close(m(fresh, energy), fresh, atol=1e-5, rtol=0)
    m.fit_(source, target, energy)
    mapped = m(fresh, energy)  # new rows of the source's distribution
    levels = torch.tensor([0.05, 0.25, 0.6, 0.75, 0.95])  # not at the atom's edge (0.5), where quantiles jump
    for rows in (high[:, 0], ~high[:, 0]):
        for j in range(3):
            want = torch.quantile(target[rows, j], levels)
            got = torch.quantile(mapped[rows, j], levels)
            assert (got - want).abs().max() < 0.05 * target[rows, j].std(), (j, got, want)
    assert (mapped[:, 2] == -5.0).float().mean().sub(0.5).abs() < 0.02  # the atom is restored
    # monotone: a larger source value never maps lower
    x = torch.linspace(-4, 4, 801)[:, None].expand(-1, 3).contiguous()
    for e in (256.0, 65536.0, 4.0e6):
        y = m(x, torch.full((801,), e, dtype=torch.float64))
        assert (y.diff(dim=0) >= 0).all()
    # the bin no row fell in keeps the identity on its range
    torch.testing.assert_close(m(x, torch.full((801,), 4.0e6, dtype=torch.float64)), x, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_student_marginal_map_is_refitted_at_checkpoints_and_brings_the_teacher_marginals(tmp_path, teacher_run,
                                                                                            data):
    """With ``calibration_bins`` the student decodes through a marginal map refitted before every
    checkpoint: its checkpoint carries the map; on fresh noise it brings each output coordinate's
    distribution closer to the teacher's than the raw regression; resume stays bit-identical."""
    from caloforge.models.student import Student

    cfg = _student_cfg(teacher_run, max_iterations=20, checkpoint_every=10)
    cfg["model"].update(calibration_bins=32, calibration_size=2048, calibration_knots=17)
    train(cfg, data, tmp_path / "full", progress=False)
    train(cfg, data, tmp_path / "half", progress=False, max_iterations=10)
    train(cfg, data, tmp_path / "half", progress=False, resume=True)
    a = load_file(tmp_path / "full" / "checkpoints" / "iter-0000020" / "model.safetensors")
    b = load_file(tmp_path / "half" / "checkpoints" / "iter-0000020" / "model.safetensors")
    assert "calibration.knot_value" in a and all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(tmp_path / "full" / "checkpoints" / "iter-0000010" / "model.safetensors")
    assert not torch.equal(first["calibration.knot_value"], a["calibration.knot_value"])  # refitted to the new weights
    student = load_model(tmp_path / "full" / "checkpoints" / "iter-0000020").model
    assert isinstance(student, Student) and student.calibration is not None
    assert len(student.calibration.log_energy_edges) == len(np.unique(data.incident_energy)) - 1  # a bin per energy
    e = torch.as_tensor(data.incident_energy[:1500])
    noise = student.sample_noise(len(e), torch.Generator().manual_seed(11))
    with torch.no_grad():
        raw = student._raw(noise, e, {})
        mapped = student.calibration(raw, e)
        target, _ = student._teacher_targets(noise, e, {})

    def marginal_distance(y):  # mean over coordinates of the 1-D Wasserstein distance, in units of the spread
        return ((y.sort(0).values - target.sort(0).values).abs().mean(0) / target.std(0).clamp_min(1e-3)).mean()

    assert marginal_distance(mapped) < 0.5 * marginal_distance(raw), (marginal_distance(mapped), marginal_distance(raw))
    # decode is the raw pass, the map, then the teacher's inverse preprocessing
    L = student.representation.n_layers
    with torch.no_grad():
        torch.testing.assert_close(student.decode(noise, e, {}), student.representation.decode(
            mapped[:, :L], mapped[:, L:], e, dtype=torch.float32))
    bad = _student_cfg(teacher_run)
    bad["model"]["calibration_knots"] = 1
    with pytest.raises(ConfigError, match="model.calibration_knots"):
        train(bad, data, tmp_path / "bad", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("teacher", ["caloflow-tiny", "flow-matching-tiny"])
def test_student_of_a_caloflow_or_radially_split_teacher(tmp_path, data, teacher):
    """A caloflow teacher works too (its one-pass inverse is the map to distil), and so does a
    teacher whose representation splits the r–α layers into rings (35 more output columns)."""
    cfg = _tiny(teacher, max_iterations=10, checkpoint_every=10)
    cfg["model"]["radial_split"] = teacher.startswith("flow-matching")
    train(cfg, data, tmp_path / "teacher", progress=False)
    res = train(_student_cfg(tmp_path / "teacher", max_iterations=10, checkpoint_every=10), data, tmp_path / "st",
                progress=False)
    student = load_model(res.best_checkpoint)
    assert student.model.generator_net[-1].out_features == 5 + 368 + (35 if cfg["model"]["radial_split"] else 0)
    out = generate(student, np.full(5, 1000.0), seed=0)
    assert out.showers.shape == (5, 368) and np.isfinite(out.showers).all() and (out.showers >= 0).all()


def test_shipped_student_stays_the_size_of_the_gan_photon_generator(tmp_path, data):
    """student-photons distilled from the shipped flow-matching-photons (radially split: 408
    outputs) stays within the CaloShowerGAN photon generator's 0.26 M parameters."""
    from caloforge.checkpoint import model_loader, write_checkpoint
    from caloforge.models.base import fit

    teacher_cfg = load_config("flow-matching-photons").model
    assert teacher_cfg.radial_split
    e = torch.as_tensor(data.incident_energy)
    write_checkpoint(tmp_path / "teacher", fit(teacher_cfg, torch.as_tensor(data.showers), e, {}))
    cfg = load_config("student-photons").model
    cfg.teacher = str(tmp_path / "teacher")
    student = fit(cfg, torch.as_tensor(data.showers), e, {}, model_loader=model_loader)
    assert student.generator_net[-1].out_features == 5 + 368 + 16 + 19
    assert sum(p.numel() for p in student.parameters() if p.requires_grad) <= 0.26e6
    # it ships with the marginal map: one bin per DS1 energy, no trainable parameter
    assert student.calibration is not None
    assert len(student.calibration.log_energy_edges) + 1 == len(np.unique(data.incident_energy))
    assert not any(p.requires_grad for p in student.calibration.parameters())


def test_representation_bounds_change_no_shower(data):
    """Clamping (y₁, y₂) to the decode box leaves every decoded shower as it was (to float32
    rounding of the box edges), and the box is tight."""
    from caloforge.geometry import load_geometry
    from caloforge.models.base import layer_sizes
    from caloforge.models.parts.representation import ShowerRepresentation

    e = torch.as_tensor(data.incident_energy)
    rep = ShowerRepresentation.fit(torch.as_tensor(data.showers), e, layer_sizes(load_geometry("ds1-photons")))
    lo, hi = rep.bounds()
    assert lo.shape == hi.shape == (rep.n_layers + rep.n_voxels,) and (lo < hi).all()
    g = torch.Generator().manual_seed(0)
    y = 1e13 * torch.randn(len(e), len(lo), generator=g)  # a flow inverse's wild tail
    clamped = torch.maximum(torch.minimum(y, hi), lo)
    L = rep.n_layers
    wild, tamed = rep.decode(y[:, :L], y[:, L:], e), rep.decode(clamped[:, :L], clamped[:, L:], e)
    torch.testing.assert_close(tamed, wild, rtol=1e-5, atol=1e-6 * float(e.max()))  # float32 rounding only
    # just inside the box, decode still moves: the box is not wider than it must be
    inner = lo + 0.9 * (hi - lo)
    nudged = inner + 0.05 * (hi - lo)
    assert not torch.equal(rep.decode(inner[None, :L], inner[None, L:], e[:1]),
                           rep.decode(nudged[None, :L], nudged[None, L:], e[:1]))


@pytest.mark.slow
def test_student_survives_a_teacher_with_wild_outputs(tmp_path, data, monkeypatch):
    """A caloflow teacher whose inverse throws some rows to ±10¹³ (and one to NaN) still gives a
    finite distillation loss that falls: targets are clamped to the decode box, NaN rows dropped."""
    from caloforge.models import caloflow

    train(_tiny("caloflow-tiny", max_iterations=10, checkpoint_every=10), data, tmp_path / "cf", progress=False)
    clean = caloflow.CaloFlow.transport

    def wild(self, noise, incident_energy, conditions):
        y1, y2 = clean(self, noise, incident_energy, conditions)
        y2 = y2.clone()
        y2[::7, :5] = 1e13 * torch.sign(noise[::7, :5])
        y2[3, 0] = float("nan")
        return y1, y2

    monkeypatch.setattr(caloflow.CaloFlow, "transport", wild)
    res = train(_student_cfg(tmp_path / "cf", max_iterations=60, checkpoint_every=30, batch_size=128),
                data, tmp_path / "st", progress=False)
    log = np.genfromtxt(tmp_path / "st" / "log.csv", delimiter=",", names=True)
    assert np.isfinite(log["distill"]).all() and log["distill"].max() < 1e3
    assert log["distill"][-1] < log["distill"][0]
    scores = np.genfromtxt(tmp_path / "st" / "scores.csv", delimiter=",", names=True)
    assert np.isfinite(scores["val_distill"]).all() and scores["val_distill"].max() < 1e3
    out = generate(load_model(res.best_checkpoint), np.full(5, 1000.0), seed=0)
    assert np.isfinite(out.showers).all() and (out.showers >= 0).all()


# ----------------------------------------------------------------------------------
# Any geometry
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry", ["ds1-pions", pytest.param("ds2", marks=pytest.mark.slow), "calogan"])
def test_flow_families_work_for_any_geometry(geometry):
    """One training step and sampling on DS1 pions (7 layers), DS2 (45 × 144 voxels), CaloGAN (3 layers);
    flow matching also with one velocity field for layers and voxels together (``layer_model: joint``)
    and radially split r–α layers (none on the Cartesian CaloGAN grid)."""
    from caloforge.geometry import load_geometry
    from caloforge.models.base import BatchSource, fit

    geo = load_geometry(geometry)
    g = torch.Generator().manual_seed(0)
    e = torch.tensor([1000.0, 50000.0] * 4, dtype=torch.float64)
    showers = torch.rand(8, geo.n_voxels, generator=g) * (e[:, None] / geo.n_voxels).float()
    showers[showers < 0.3 * showers.mean()] = 0.0
    for name, extra in (("caloflow-tiny", {}), ("flow-matching-tiny", {}),
                        ("flow-matching-tiny", {"layer_model": "joint", "radial_split": True})):
        cfg = load_config(name).model
        cfg.geometry = geometry
        for key, value in extra.items():
            setattr(cfg, key, value)
        model = fit(cfg, showers, e, {})
        batches = BatchSource(showers, e, {}, 8, torch.Generator().manual_seed(1))
        losses = model.training_step(batches, model.configure_optimizers(), torch.Generator().manual_seed(2))
        assert all(math.isfinite(v) for v in losses.values())
        out = model.sample(e[:2], torch.Generator().manual_seed(3))
        assert out.shape == (2, geo.n_voxels) and torch.isfinite(out).all() and (out >= 0).all()


@pytest.mark.parametrize("name", ["caloflow-photons", "caloflow-pions", "flow-matching-photons", "student-photons",
                                  "caloflow-tiny", "flow-matching-tiny", "student-tiny"])
def test_shipped_flow_configs_load(name):
    cfg = load_config(name)
    assert cfg.model.name in ("caloflow", "flow_matching", "student")
    assert cfg.model.geometry == ("ds1-pions" if name.endswith("pions") else "ds1-photons")
    if name.startswith("caloflow-p"):
        assert cfg.training.select_by == "val_nll"
    if name == "flow-matching-photons":  # E_tot χ² on 10 000 showers is too noisy to pick by
        assert cfg.training.select_by == "val_loss"
        assert (cfg.model.steps, cfg.model.solver) == (4, "euler")  # the sampler the full protocol measured
    if name == "student-photons":  # the student distils the sampler its teacher ships with
        teacher = load_config("flow-matching-photons").model
        assert (cfg.model.teacher_steps, cfg.model.teacher_solver) == (teacher.steps, teacher.solver)
    if name == "caloflow-pions":  # the photon flows on the pion grid, conditioned on the pion's incident energy
        photons = load_config("caloflow-photons").model
        assert cfg.model.particle == "pion" and cfg.model.layer_flow == photons.layer_flow
        assert cfg.model.voxel_flow == photons.voxel_flow
    if name == "student-photons":  # no bigger than the CaloShowerGAN photon generator (259,768)
        from caloforge.conditions import ConditionEncoder
        from caloforge.geometry import load_geometry
        from caloforge.models.base import layer_sizes
        from caloforge.models.parts.representation import ShowerRepresentation
        from caloforge.models.student import Student

        geo = load_geometry("ds1-photons")
        e = torch.tensor([256.0, 4194304.0], dtype=torch.float64)
        showers = torch.rand(2, 368, dtype=torch.float64)
        from caloforge.models.parts.representation import radial_rings

        # the representation of the shipped teacher (flow-matching-photons: radially split, 5 + 403 columns)
        state = {"conditions": ConditionEncoder.fit({"incident_energy": "log"}, e, {}).state(),
                 "representation": ShowerRepresentation.fit(showers, e, layer_sizes(geo),
                                                            rings=radial_rings(geo)).state(),
                 "noise_dim": 408}
        student = Student(cfg.model, geo, state)
        assert sum(p.numel() for p in student.parameters()) == 254_976 <= 259_768
