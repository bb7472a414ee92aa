"""The C++ deployment example (examples/cpp): built with CMake against the torch wheel's LibTorch,
run on a TorchScript export and on an AOTInductor package, compared with PyTorch on the same noise.

The build is cached in ``build/cpp-test`` (ignored by git): the first run compiles for about a
minute, later runs only re-link when the source changed.  Skipped only where no C++ compiler or
CMake exists.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from caloforge.export import TOLERANCE, example_inputs, export_model, max_relative_deviation

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "cpp-test"
NEEDS = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(NEEDS), reason=f"no {' and '.join(NEEDS)} on this machine: the C++ example "
                                "cannot be built")


@pytest.fixture(scope="module")
def program() -> Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD.parent / ".cpp-test.lock", "w") as lock:  # pytest-xdist workers share one build
        fcntl.flock(lock, fcntl.LOCK_EX)
        prefix = subprocess.run([sys.executable, "-c", "import torch; print(torch.utils.cmake_prefix_path)"],
                                capture_output=True, text=True, check=True).stdout.strip()
        for cmd in (["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(BUILD), f"-DCMAKE_PREFIX_PATH={prefix}",
                     "-DCMAKE_BUILD_TYPE=Release"],
                    ["cmake", "--build", str(BUILD), "-j", "2"]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return BUILD / "caloforge_generate"


def _run(program: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=120)


def _models():
    from tests.test_export import tiny_model

    return [tiny_model("caloshowergan", 0), tiny_model("caloshowergan", 1), tiny_model("energy_split", 0)]


@pytest.mark.slow
def test_cpp_matches_python_on_the_same_noise(program, tmp_path):
    for k, model in enumerate(_models()):
        path = export_model(model, "torchscript", tmp_path / f"m{k}.pt").path
        noise, cond = example_inputs(model, 40, seed=k)
        energy = 3000.0 * (k + 1) ** 3  # every range of the energy_split model is hit across k
        cond[:, 0] = energy
        extra = [f"--condition={name}={float(cond[0, i])}" for i, name in enumerate(model.condition_names) if i]
        cond[:, 1:] = cond[0, 1:]
        np.savetxt(tmp_path / "noise.csv", noise.numpy(), delimiter=",", fmt="%.9g")
        out = tmp_path / f"out{k}.csv"
        done = _run(program, path, "--energy", energy, "--noise", tmp_path / "noise.csv", "--batch", 16, *extra,
                    "-o", out)
        assert done.returncode == 0, done.stderr
        table = np.loadtxt(out, delimiter=",", skiprows=1, dtype=np.float64)
        header = out.read_text().splitlines()[0].split(",")
        assert header[:len(model.condition_names)] == model.condition_names
        assert table.shape == (40, len(model.condition_names) + model.n_voxels)
        noise32 = torch.tensor(np.loadtxt(tmp_path / "noise.csv", delimiter=",", dtype=np.float32)).reshape(40, -1)
        with torch.no_grad():
            ref = model.export_module()(noise32, cond).numpy()
        assert ref.sum() > 0
        assert max_relative_deviation(ref, table[:, len(model.condition_names):]) <= TOLERANCE


@pytest.mark.slow
def test_cpp_draws_the_models_noise(program, tmp_path):
    """With --seed the C++ program draws what model.sample_noise draws from torch.Generator().manual_seed(seed)."""
    model = _models()[0]
    path = export_model(model, "torchscript", tmp_path / "m.pt").path
    out = tmp_path / "seeded.csv"
    done = _run(program, path, "--energy", 65536, "--n", 25, "--seed", 11, "-o", out)
    assert done.returncode == 0, done.stderr
    noise = model.sample_noise(25, torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = model.export_module()(noise, torch.full((25, 1), 65536.0)).numpy()
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert max_relative_deviation(ref, table[:, 1:]) <= TOLERANCE


@pytest.mark.slow
def test_cpp_bad_input_is_one_line_and_writes_nothing(program, tmp_path):
    model = _models()[1]  # conditioned on angles and an impact point
    path = export_model(model, "torchscript", tmp_path / "m.pt").path
    not_a_model = tmp_path / "noise.csv"
    not_a_model.write_text("1,2,3\n")
    plain = tmp_path / "plain.pt"
    with pytest.warns(DeprecationWarning):  # TorchScript is deprecated in torch 2.x, still LibTorch's format
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    cases = [
        ([not_a_model, "--energy", 1000, "--n", 2], "not a TorchScript model file"),
        ([plain, "--energy", 1000, "--n", 2], "not a caloforge export"),
        ([tmp_path / "missing.pt", "--energy", 1000, "--n", 2], "cannot be opened"),
        ([path, "--energy", 1000, "--n", 2], "give --condition incident_theta=VALUE"),
        ([path, "--energy", -5, "--n", 2], "--energy must be a positive"),
        ([path, "--energy", 1000, "--n", 2, "--bogus"], "unknown option --bogus"),
    ]
    for args, message in cases:
        out = tmp_path / "out.csv"
        done = _run(program, *args, "-o", out)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr
        assert not out.exists() and not (tmp_path / "out.csv.tmp").exists()


@pytest.mark.slow
def test_cpp_bench_reports_the_protocol(program, tmp_path):
    path = export_model(_models()[0], "torchscript", tmp_path / "m.pt").path
    done = _run(program, path, "--bench", "1,10", "--repeats", 2)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["batch"] for r in rows] == [1, 10] and all(r["ms_per_shower"] > 0 and r["repeats"] == 2 for r in rows)


@pytest.mark.slow
def test_bench_times_the_cpp_path(program, tmp_path):
    from caloforge.bench import bench
    from caloforge.checkpoint import point_best, write_checkpoint

    point_best(tmp_path, write_checkpoint(tmp_path / "checkpoints" / "iter-0000001", _models()[1]))
    report = bench(tmp_path, paths=["cpp"], batches=[1, 3], repeats=1, cpp_program=program)
    assert [(r["path"], r["batch"]) for r in report["results"]] == [("cpp", 1), ("cpp", 3)]


@pytest.mark.slow
def test_cpp_runs_the_aoti_package_like_python(program, tmp_path, tmp_path_factory):
    """The same program loads an AOTInductor package (.pt2, AOTIModelPackageLoader) and matches PyTorch on the
    same noise; the package is the one export the session compiles (tests/test_export.py::aoti_package)."""
    from tests.test_export import aoti_package

    package, model = aoti_package(tmp_path_factory)
    noise, cond = example_inputs(model, 30, seed=3)
    energy = 20000.0
    cond[:, 0] = energy
    cond[:, 1:] = cond[0, 1:]
    extra = [f"--condition={name}={float(cond[0, i])}" for i, name in enumerate(model.condition_names) if i]
    np.savetxt(tmp_path / "noise.csv", noise.numpy(), delimiter=",", fmt="%.9g")
    noise32 = torch.tensor(np.loadtxt(tmp_path / "noise.csv", delimiter=",", dtype=np.float32)).reshape(30, -1)
    with torch.no_grad():
        ref = model.export_module()(noise32, cond).numpy()
    assert ref.sum() > 0
    out = tmp_path / "aoti.csv"
    done = _run(program, package, "--energy", energy, "--noise", tmp_path / "noise.csv", "--batch", 7, *extra,
                "-o", out)
    assert done.returncode == 0, done.stderr
    table = np.loadtxt(out, delimiter=",", skiprows=1, dtype=np.float64)
    assert table.shape == (30, len(model.condition_names) + model.n_voxels)
    assert max_relative_deviation(ref, table[:, len(model.condition_names):]) <= TOLERANCE
    # seeded: the C++ noise stream is torch.Generator().manual_seed(seed)'s, also through the package
    done = _run(program, package, "--energy", energy, "--n", 9, "--seed", 4, *extra, "-o", out)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        ref = model.export_module()(model.sample_noise(9, torch.Generator().manual_seed(4)), cond[:9]).numpy()
    assert max_relative_deviation(ref, np.loadtxt(out, delimiter=",", skiprows=1)[:, 4:]) <= TOLERANCE
    done = _run(program, package, "--bench", "1,10", "--repeats", 1, "--energy", energy, *extra)
    assert done.returncode == 0 and [r["batch"] for r in json.loads(done.stdout)] == [1, 10], done.stderr


@pytest.mark.slow
def test_cpp_wrong_aoti_file_is_one_line(program, tmp_path):
    ts = export_model(_models()[0], "torchscript", tmp_path / "m.pt").path
    import zipfile

    plain_zip = tmp_path / "plain.pt2"
    with zipfile.ZipFile(plain_zip, "w") as z:
        z.writestr("archive/version", "1")
    cases = [
        (tmp_path / "renamed.pt2", ts.read_bytes(), "not an AOTInductor package"),  # a TorchScript file named .pt2
        (tmp_path / "text.pt2", b"1,2,3\n", "not an AOTInductor package"),
        (plain_zip, None, "not an AOTInductor package"),
    ]
    for path, content, message in cases:
        if content is not None:
            path.write_bytes(content)
        out = tmp_path / "out.csv"
        done = _run(program, path, "--energy", 1000, "--n", 2, "-o", out)
        assert done.returncode == 2, (path, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr
        assert not out.exists() and not (tmp_path / "out.csv.tmp").exists()
