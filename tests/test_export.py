"""Export to ONNX / TorchScript: parity with PyTorch for every registered family, metadata, bad input.

Every family in ``caloforge.models.families()`` must have a tiny config in ``TINY``
below: a family registered without one fails here (add a row), it is never skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from caloforge.checkpoint import model_loader
from caloforge.cli import app
from caloforge.errors import ConfigError, DataError
from caloforge.export import (TOLERANCE, example_inputs, export_model, max_relative_deviation, onnx_session,
                              read_onnx_metadata)
from caloforge.models import families, fit, get_family, load_config

# family -> tiny ``model:`` sections (seconds to build and export); add one when you register a family
TINY: dict[str, list[dict]] = {
    "caloshowergan": [
        {"latent_dim": 6, "generator_hidden": [16, 8], "critic_hidden": [8]},
        # extra conditions, kinetic energy and a non-trivial voxel scale: all inside the exported graph
        {"geometry": "ds1-pions", "latent_dim": 5, "generator_hidden": [12], "critic_hidden": [8],
         "conditions": {"incident_energy": "log", "incident_theta": "cos", "incident_phi": "sincos",
                        "impact_x": "linear"},
         "energy_condition": "kinetic", "particle": "pion", "voxel_scale": 30.0},
    ],
    "energy_split": [
        {"family": "caloshowergan", "boundaries": [4000.0, 300000.0],
         "common": {"latent_dim": 4, "critic_hidden": [8]},
         "ranges": [{"generator_hidden": [8]}, {"generator_hidden": [8, 8], "latent_dim": 3},
                    {"generator_hidden": [6], "generator_activation": "relu"}]},
    ],
}

# the Si-W families need a Cartesian grid: the small 6 × 8 × 8 one of tests/test_granular_models.py
TOY_SIW = str(Path(__file__).resolve().parent / "data" / "toy-siw.yaml")
TINY["gan3d"] = [{"geometry": TOY_SIW, "particle": "electron",
                  "conditions": {"incident_energy": "log", "incident_theta": "cos"}, "latent_dim": 8,
                  "seed_channels": 2, "upsample": [2, 4, 4], "generator_channels": [3], "generator_kernel": [3, 3, 3],
                  "discriminator_channels": [3, 3], "discriminator_kernel": [3, 3, 3], "generator_steps": 1}]
TINY["bibae"] = [{"geometry": TOY_SIW, "particle": "electron",
                  "conditions": {"incident_energy": "log", "incident_theta": "cos"}, "latent_dim": 3, "random_dim": 2,
                  "encoder_channels": [2], "decoder_channels": [2], "decoder_upsample": 2, "decoder_seed_channels": 2,
                  "hidden": 16, "critic_channels": [2], "critic_hidden": 8, "postprocessor_channels": 4,
                  "stages": [3, 3], "critic_steps": 1, "hit_mmd_kernel": 8, "hit_mmd_stride": 8,
                  "hit_mmd_cutoff": 32, "kde_max_showers": 40}]

TINY["calogan"] = [{"geometry": "calogan", "latent_dim": 8, "generator_channels": [2, 3, 2],
                    "discriminator_channels": [4, 3, 2, 2], "minibatch_kernels": 3, "minibatch_kernel_dim": 3}]
TINY["atlas_gan"] = [{"geometry": "atlas-4layer", "latent_dim": 8, "generator_hidden": [32, 32], "critic_hidden": [32],
                      "sum_critic_hidden": [16], "voxel_scale": 10.0}]

TINY["caloflow"] = [{"layer_flow": {"transform": "spline", "transforms": 2, "hidden": [16], "bins": 4},
                     "voxel_flow": {"transform": "affine", "transforms": 2, "hidden": [32]}}]
TINY["flow_matching"] = [{"layer_flow": {"transform": "spline", "transforms": 2, "hidden": [16], "bins": 4},
                          "hidden": [64, 64], "steps": 4},
                         {"layer_flow": {"transform": "spline", "transforms": 2, "hidden": [16], "bins": 4},
                          "hidden": [64, 64], "steps": 4, "radial_split": True}]  # r–α layers split into rings
TINY["shower_transformer"] = [  # r–α (DS2) with learnt positions; the Cartesian toy grid with detector coordinates
    {"geometry": "ds2", "layer_flow": {"transform": "spline", "transforms": 2, "hidden": [16], "bins": 4},
     "patch": [5, 3, 8], "width": 16, "depth": 1, "heads": 2, "mlp_ratio": 2, "steps": 4},
    {"geometry": TOY_SIW, "layer_flow": {"transform": "affine", "transforms": 2, "hidden": [16]},
     "patch": [2, 4, 2], "width": 16, "depth": 2, "heads": 4, "mlp_ratio": 2, "steps": 3, "solver": "midpoint",
     "position": "coordinates"}]
TINY["student"] = [{"teacher": "<tiny flow_matching teacher>", "teacher_steps": 4, "pool_size": 64, "hidden": [32]},
                   {"teacher": "<tiny flow_matching teacher>", "teacher_steps": 4, "pool_size": 64, "hidden": [32],
                    "calibration_bins": 8, "calibration_knots": 9}]  # with the marginal map (per-E_inc gathers)

# the families caloforge ships (tests may register toy families of their own in the same process)
SHIPPED = [name for name in families() if get_family(name).__module__.startswith("caloforge.")]
CASES = [(name, i) for name in SHIPPED for i in range(max(1, len(TINY.get(name, []))))]


_TEACHER: dict[str, Path] = {}


def _teacher() -> Path:
    """A checkpoint of the tiny flow-matching model (written once per process)."""
    if "path" not in _TEACHER:
        import tempfile

        from caloforge.checkpoint import write_checkpoint

        path = Path(tempfile.mkdtemp(prefix="caloforge-teacher-")) / "teacher"
        write_checkpoint(path, tiny_model("flow_matching"))
        _TEACHER["path"] = path
    return _TEACHER["path"]


def tiny_model(name: str, index: int = 0):
    """A fitted model of family ``name`` with random weights and non-trivial batch-norm statistics."""
    if name not in TINY:
        pytest.fail(f"model family {name!r} is registered but has no tiny config in tests/test_export.py::TINY; "
                    "add one so that its ONNX/TorchScript export is checked")
    section = {"name": name, **TINY[name][index]}
    if name == "student":  # a student needs a teacher checkpoint: a tiny flow-matching model
        section["teacher"] = str(_teacher())
    cfg = load_config({"model": section}).model
    from caloforge.geometry import load_geometry

    n_vox = load_geometry(cfg.geometry).n_voxels
    rng = np.random.default_rng(index)
    n = 64
    energy = torch.as_tensor(256.0 * 2.0 ** rng.integers(0, 15, n), dtype=torch.float64)
    energy[:2] = torch.tensor([256.0, 4194304.0], dtype=torch.float64)
    conditions = {"incident_theta": torch.as_tensor(rng.uniform(0.8, 2.3, n)),
                  "incident_phi": torch.as_tensor(rng.uniform(-math.pi, math.pi, n)),
                  "impact_x": torch.as_tensor(rng.normal(0, 10, n)), "impact_y": torch.as_tensor(rng.normal(0, 10, n)),
                  "impact_eta": torch.as_tensor(rng.uniform(0.20, 0.25, n))}
    showers = torch.as_tensor(rng.random((n, n_vox)), dtype=torch.float32) * energy[:, None].float() / n_vox
    torch.manual_seed(index)
    model = fit(cfg, showers, energy, conditions, model_loader=model_loader)
    if getattr(model, "calibration", None) is not None:  # a fitted, far-from-identity marginal map
        g = torch.Generator().manual_seed(index)
        source = torch.randn(4000, model.calibration.knot_value.shape[1], generator=g)
        e = energy[torch.randint(n, (4000,), generator=g)]
        model.calibration.fit_(source, 0.5 * source.abs() ** 1.5 * torch.sign(source) - 0.3, e)
    for m in model.modules():  # eval-mode batch norm must use these, not the batch's statistics
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0.0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("name, index", CASES)
def test_every_family_has_a_tiny_config(name, index):
    assert name in TINY, f"add a tiny config for {name!r} to TINY"


@pytest.mark.slow
@pytest.mark.parametrize("name, index", CASES)
def test_onnx_matches_pytorch_for_every_family(name, index, tmp_path):
    model = tiny_model(name, index)
    result = export_model(model, "onnx", tmp_path / "m.onnx")
    assert result.path.is_file() and result.max_deviation <= TOLERANCE
    # an independent check at other batch sizes than the export's own (dynamic batch)
    session = onnx_session(result.path)
    module = model.export_module().eval()
    for n, seed in ((37, 5), (1, 6), (500, 7)):
        noise, cond = example_inputs(model, n, seed)
        with torch.no_grad():
            ref = module(noise, cond).numpy()
        out = session.run(None, {"noise": noise.numpy(), "conditions": cond.numpy()})[0]
        assert out.shape == (n, model.n_voxels) and out.dtype == np.float32
        assert np.all(out >= 0) and np.isfinite(out).all()
        assert max_relative_deviation(ref, out) <= TOLERANCE
        assert ref.sum() > 0  # the comparison is not between two empty outputs


@pytest.mark.parametrize("name, index", CASES)
def test_exported_showers_follow_the_incident_energy(name, index):
    """The physical energy enters the graph: higher incident energy, more deposited energy."""
    model = tiny_model(name, index)
    noise, cond = example_inputs(model, 300, 2)
    with torch.no_grad():
        out = model.export_module()(noise, cond)
    assert out.shape == (300, model.n_voxels) and bool((out >= 0).all())
    e = cond[:, 0].double()
    low, high = e < e.median(), e >= e.median()
    assert out[high].sum(1).mean() > out[low].sum(1).mean()


@pytest.mark.parametrize("name, index", CASES)
def test_noise_spec_describes_sample_noise(name, index):
    model = tiny_model(name, index)
    spec = model.noise_spec()
    z = model.sample_noise(40_000, torch.Generator().manual_seed(0)).double()
    assert z.shape[1] == model.noise_dim
    assert spec["distribution"] == "normal"
    mean, std = torch.tensor(spec["mean"]).double(), torch.tensor(spec["std"]).double()
    assert len(mean) == len(std) == model.noise_dim
    tol = 6 * std.clamp_min(1e-12) / math.sqrt(len(z)) + 1e-12
    assert torch.all((z.mean(0) - mean).abs() <= tol)
    assert torch.all((z.std(0) - std).abs() <= 0.03 * std + 1e-12)


@pytest.mark.parametrize("name, index", CASES)
def test_torchscript_export_matches_pytorch(name, index, tmp_path):
    model = tiny_model(name, index)
    result = export_model(model, "torchscript", tmp_path / "m.pt")
    assert result.path.is_file() and result.max_deviation <= TOLERANCE


def test_onnx_metadata_describes_the_model(tmp_path):
    model = tiny_model("caloshowergan", 1)
    path = export_model(model, "onnx", tmp_path / "pions.onnx").path
    meta = read_onnx_metadata(path)
    assert meta["geometry"] == "ds1-pions" and meta["n_voxels"] == 533
    assert meta["condition_names"] == ["incident_energy", "incident_theta", "incident_phi", "impact_x"]
    assert meta["condition_units"] == ["MeV", "rad", "rad", "mm"]
    assert meta["condition_encoding"]["energy_condition"] == "kinetic"
    assert meta["energy_range_mev"] == pytest.approx([256.0, 4194304.0])
    assert meta["noise"]["mean"] == [0.5] * 5
    import onnx

    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["n_voxels"] == "533" and props["condition_names"].split() == meta["condition_names"]
    assert proto.opset_import[0].version >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 5  # dynamic batch, fixed noise width


def test_failed_parity_writes_nothing(tmp_path):
    model = tiny_model("caloshowergan")
    target = tmp_path / "m.onnx"
    with pytest.raises(DataError, match="deviates from PyTorch"):
        export_model(model, "onnx", target, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_bad_format_and_unwritable_output(tmp_path):
    model = tiny_model("caloshowergan")
    with pytest.raises(ConfigError, match="--format 'tflite'"):
        export_model(model, "tflite", tmp_path / "m.tflite")
    with pytest.raises(ConfigError, match="not an existing directory"):
        export_model(model, "onnx", tmp_path / "missing" / "m.onnx")
    with pytest.raises(ConfigError, match="is a directory"):
        export_model(model, "onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- the CLI ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from caloforge.checkpoint import point_best, write_checkpoint

    root = tmp_path_factory.mktemp("run")
    ckpt = write_checkpoint(root / "checkpoints" / "iter-0000002", tiny_model("caloshowergan"), meta={"iteration": 2})
    point_best(root, ckpt)
    return root


def _one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_cli_export_writes_a_checked_file(run_dir, tmp_path):
    out = tmp_path / "gan.onnx"
    result = CliRunner().invoke(app, ["export", "--model", str(run_dir / "best"), "--format", "onnx", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "parity" in result.output and out.is_file()
    assert read_onnx_metadata(out)["iteration"] == 2


def test_cli_export_bad_input(run_dir, tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "run.json").write_text(json.dumps({}))
    cases = [
        (["--model", str(empty), "--format", "onnx", "-o", str(tmp_path / "a.onnx")], "no checkpoint"),
        (["--model", str(run_dir), "--format", "keras", "-o", str(tmp_path / "a.onnx")], "--format 'keras'"),
        (["--model", str(run_dir), "--format", "onnx", "-o", str(tmp_path / "no" / "a.onnx")], "cannot be written"),
        # AOTInductor: each fails before anything compiles
        (["--model", str(run_dir), "--format", "aoti", "-o", str(tmp_path / "gan.pt")], "must be named *.pt2"),
        (["--model", str(run_dir), "--format", "aoti", "-o", str(tmp_path / "no" / "gan.pt2")], "cannot be written"),
        (["--model", str(empty), "--format", "aoti", "-o", str(tmp_path / "gan.pt2")], "no checkpoint"),
    ]
    for args, message in cases:
        line = _one_line_error(runner.invoke(app, ["export", *args]))
        assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-run"]


# --- AOTInductor ----------------------------------------------------------------------
# An AOTInductor export compiles C++ (tens of CPU seconds even for a tiny MLP), so the pytest
# session compiles ONE package, through the CLI, and every AOTI test (here and in
# tests/test_cpp_example.py) shares it: xdist workers share the directory beside their basetemps
# and take turns with a file lock; the first one exports, the others find the file.
def aoti_package(tmp_path_factory) -> tuple[Path, object]:
    """(the .pt2 written by `caloforge export --format aoti`, the model it was exported from)."""
    import fcntl

    from caloforge.checkpoint import point_best, write_checkpoint

    model = tiny_model("caloshowergan", 1)  # conditioned on angles and an impact point, kinetic energy
    shared = tmp_path_factory.getbasetemp().parent / "aoti-export"
    shared.mkdir(exist_ok=True)
    package = shared / "pions.pt2"
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not package.exists():
            run = shared / "run"
            point_best(run, write_checkpoint(run / "checkpoints" / "iter-0000003", model, meta={"iteration": 3}))
            result = CliRunner().invoke(app, ["export", "--model", str(run / "best"), "--format", "aoti",
                                              "-o", str(package)])
            assert result.exit_code == 0, result.output
            assert "parity" in result.output and str(package) in result.output
            assert sorted(p.name for p in shared.iterdir()) == [".lock", "pions.pt2", "run"]  # no temp left
    return package, model


@pytest.mark.slow
def test_aoti_package_matches_pytorch_and_carries_the_metadata(tmp_path_factory):
    from torch._inductor import aoti_load_package

    from caloforge.export import read_aoti_metadata

    package, model = aoti_package(tmp_path_factory)
    meta = read_aoti_metadata(package)
    assert meta["family"] == "caloshowergan" and meta["geometry"] == "ds1-pions" and meta["n_voxels"] == 533
    assert meta["condition_names"] == ["incident_energy", "incident_theta", "incident_phi", "impact_x"]
    assert meta["iteration"] == 3 and meta["noise"]["mean"] == [0.5] * 5
    flat = torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(str(package), "model")
    assert flat["n_voxels"] == "533" and flat["condition_names"].split() == meta["condition_names"]
    compiled = aoti_load_package(str(package))
    module = model.export_module().eval()
    for n, seed in ((37, 5), (1, 6), (500, 7)):  # dynamic batch, other sizes than the export's own check
        noise, cond = example_inputs(model, n, seed)
        with torch.no_grad():
            ref = module(noise, cond).numpy()
            out = compiled(noise, cond).numpy()
        assert out.shape == (n, 533) and out.dtype == np.float32 and np.isfinite(out).all() and (out >= 0).all()
        assert ref.sum() > 0 and max_relative_deviation(ref, out) <= TOLERANCE


def test_aoti_metadata_of_a_file_that_is_not_a_package(tmp_path):
    not_a_package = tmp_path / "x.pt2"
    not_a_package.write_bytes(b"not a zip")
    from caloforge.export import read_aoti_metadata

    with pytest.raises(DataError, match="not a caloforge AOTInductor package"):
        read_aoti_metadata(not_a_package)
