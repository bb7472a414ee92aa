"""Data-parallel training with torchrun's elastic launcher (gloo on the loopback, 2 processes)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from caloforge.io import write_showers
from test_model_core import toy_showers

TESTS = Path(__file__).resolve().parent
CFG = {"model": {"name": "toy_lognormal", "geometry": "ds1-photons", "lr": 0.05},
       "training": {"batch_size": 64, "max_iterations": 30, "checkpoint_every": 10, "log_every": 1,
                    "tensorboard": False, "validation_fraction": 0.25, "keep_checkpoints": 5}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    d = toy_showers(200)
    write_showers(tmp / "train.h5", d.incident_energy, d.showers)
    (tmp / "toy.yaml").write_text(yaml.safe_dump(CFG))
    return tmp


def _train(files: Path, out: Path, *extra: str, nproc: int = 1, env_extra: dict | None = None):
    env = {**os.environ, "CALOFORGE_MODELS": "toy_family", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **(env_extra or {})}
    env.pop("TOY_DIE_AT", None) if not env_extra else None
    cmd = [sys.executable, "-m", "caloforge", "train", "--config", str(files / "toy.yaml"), "--data",
           str(files / "train.h5"), "-o", str(out), "--no-progress", "--threads", "1", "--nproc", str(nproc), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _losses(run: Path) -> np.ndarray:
    with open(run / "log.csv") as f:
        return np.array([float(r["nll"]) for r in csv.DictReader(f)])


@pytest.mark.slow
def test_two_processes_follow_the_single_process_loss_curve(files):
    single = _train(files, files / "single")
    assert single.returncode == 0, single.stderr
    double = _train(files, files / "double", nproc=2)
    assert double.returncode == 0, double.stderr
    a, b = _losses(files / "single"), _losses(files / "double")
    assert len(a) == len(b) == 30
    assert np.allclose(a, b, rtol=1e-5, atol=1e-6), np.abs(a - b).max()
    assert a[-1] < a[0]
    # rank 0 alone wrote the run directory: one call record, two processes
    import json

    calls = json.loads((files / "double" / "run.json").read_text())["calls"]
    assert [(c["processes"], c["threads"]) for c in calls] == [(2, 1)]
    wa = load_file(files / "single" / "checkpoints" / "iter-0000030" / "model.safetensors")
    wb = load_file(files / "double" / "checkpoints" / "iter-0000030" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)


@pytest.mark.slow
def test_a_dead_rank_stops_the_others_and_the_run_resumes(files):
    t0 = time.monotonic()
    killed = _train(files, files / "killed", nproc=2, env_extra={"TOY_DIE_AT": "25:1"})
    assert killed.returncode == 1, killed.stderr
    lines = [l for l in killed.stderr.splitlines() if l.startswith("error:")]
    assert lines == ["error: training process 1 of 2 failed (exit code 17); the other processes were stopped"]
    assert time.monotonic() - t0 < 120  # stopped, not hung until a timeout
    done = sorted(p.name for p in (files / "killed" / "checkpoints").iterdir())
    assert done[-1] == "iter-0000020"
    resumed = _train(files, files / "killed", "--resume", nproc=2)
    assert resumed.returncode == 0, resumed.stderr
    straight = files / "double"  # the uninterrupted 2-process run of the previous test (or run it now)
    if not (straight / "checkpoints" / "iter-0000030").exists():
        assert _train(files, straight, nproc=2).returncode == 0
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(straight / "checkpoints" / "iter-0000030" / name)
        b = load_file(files / "killed" / "checkpoints" / "iter-0000030" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # resuming with another number of processes is refused with one line
    other = _train(files, files / "killed", "--resume", "--max-iterations", "40", nproc=1)
    assert other.returncode == 2 and "same number" in other.stderr
