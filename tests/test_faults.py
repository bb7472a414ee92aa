"""Faults as batch systems and shared nodes deliver them, with real signals to real processes.

The matrix: each command × {SIGINT to its process group (a terminal's Ctrl-C), SIGINT to
the main process only (``kill -INT PID``, a workflow engine), SIGTERM to the main process
(Slurm, HTCondor, Kubernetes, ``kill``), SIGKILL of one worker (the out-of-memory killer)}
where the command has workers.  Afterwards: the documented exit code (130, 130, 143, 4),
no traceback, no process of the run left (the whole process tree, including the sessions
of their own that torchrun's ranks and tune's training subprocesses run in), and only
complete files (partial files hold whole showers; an interrupted training resumes
bit-identically).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from caloforge.io import read_showers

from processes import CLI, ENV, Run, clean_exit, cmdline, temps
from toy_data import write_toy_ds1

FAULTS = ["group-int", "main-int", "main-term", "kill-worker"]
EXIT = {"group-int": 130, "main-int": 130, "main-term": 143, "kill-worker": 4}
GAN = {"model": {"name": "caloshowergan", "geometry": "ds1-photons", "latent_dim": 8, "generator_hidden": [16],
                 "critic_hidden": [16], "voxel_scale": 100.0, "critic_steps": 1},
       "training": {"batch_size": 32, "max_iterations": 100_000, "checkpoint_every": 100_000, "log_every": 50,
                    "tensorboard": False, "validation_fraction": 0.5}}


def _whole(path: Path, nonzero: bool = True) -> int:
    d = read_showers(path)  # validates every row
    assert not nonzero or np.all(d.showers.sum(axis=1) > 0), "a zero-filled row: half a write"
    return len(d)


def _same_as_uninterrupted(partial: Path, n: int, blocks) -> None:
    """The ``n`` rows of ``partial`` are the first ``n`` of the uninterrupted run's ``blocks``."""
    kept, rows = [], 0
    for block in blocks:
        if rows >= n:
            break
        kept.append(block.showers)
        rows += len(block)
    assert np.array_equal(read_showers(partial).showers, np.concatenate(kept)[:n])


# ----------------------------------------------------------------------------------
# simulate: the worker pool
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", FAULTS)
def test_simulate_under_faults(tmp_path, fault):
    run = Run(["simulate", "--preset", "ds1-photons", "--scale", "0.2", "--seed", "3", "-j", "2", "-q",
               "-o", "f.h5"], tmp_path)
    run.wait_for(lambda: len(run.workers()) == 2 and temps(tmp_path))
    time.sleep(0.8)  # some blocks finished
    run.fault(fault, worker=run.workers()[-1])
    t0 = time.monotonic()
    rc, text = run.finish()
    assert time.monotonic() - t0 < 10
    clean_exit(rc, text, EXIT[fault])
    if fault == "kill-worker":
        assert "simulation worker" in text and "killed by SIGKILL" in text, text
    assert not (tmp_path / "f.h5").exists() and temps(tmp_path) == []
    partial = tmp_path / "f.partial.h5"
    if partial.exists():  # whole showers, the ones the same seed gives
        n = _whole(partial, nonzero=False)  # a low-energy shower may be empty: compared row by row below
        from caloforge.simulate import get_preset, iter_plan

        _same_as_uninterrupted(partial, n, iter_plan("ds1-photons", get_preset("ds1-photons").parts(None, 0.2),
                                                     seed=3, workers=1, energy_scale="calibrated"))


def test_simulate_sigterm_to_the_group_keeps_the_partial_file(tmp_path):
    """Slurm signals every process of the job step: the workers die of it, the run is still interrupted."""
    run = Run(["simulate", "--preset", "ds1-photons", "--scale", "0.2", "-j", "2", "-q", "-o", "f.h5"], tmp_path)
    run.wait_for(lambda: len(run.workers()) == 2 and temps(tmp_path))
    time.sleep(1.0)
    os.killpg(run.p.pid, signal.SIGTERM)
    rc, text = run.finish()
    clean_exit(rc, text, 143)
    assert _whole(tmp_path / "f.partial.h5", nonzero=False) > 0


def test_simulate_workers_die_with_a_killed_parent(tmp_path):
    run = Run(["simulate", "--preset", "ds1-photons", "--scale", "0.2", "-j", "2", "-q", "-o", "f.h5"], tmp_path)
    run.wait_for(lambda: len(run.workers()) == 2 and temps(tmp_path))
    run.p.kill()
    rc, _ = run.finish()
    assert rc == -signal.SIGKILL


# ----------------------------------------------------------------------------------
# simulate --engine geant4: worker pool + one Geant4 process per worker
# ----------------------------------------------------------------------------------
def _geant4_missing() -> str | None:
    from caloforge.geant4.build import require_geant4

    return require_geant4()


G4_ARGS = ["simulate", "--engine", "geant4", "-g", "calogan", "-p", "photon", "--energy-range", "1GeV:3GeV",
           "--n", "600", "--seed", "5", "-j", "2", "-q", "-o", "f.h5"]


def _geant4_apps(run: Run) -> list[int]:
    return [p for p in run.workers() if "caloforge-g4" in cmdline(p)]


@pytest.mark.slow
@pytest.mark.skipif(_geant4_missing() is not None, reason=f"Geant4 unavailable: {_geant4_missing()}")
@pytest.mark.parametrize("fault", [*FAULTS, "kill-geant4"])
def test_geant4_simulate_under_faults(tmp_path, fault):
    run = Run(G4_ARGS, tmp_path)
    run.wait_for(lambda: len(_geant4_apps(run)) == 2 and temps(tmp_path))
    time.sleep(1.5)  # some blocks finished
    python_workers = [p for p in run.workers() if p not in _geant4_apps(run)]
    run.fault("kill-worker" if fault.startswith("kill") else fault,
              worker=_geant4_apps(run)[-1] if fault == "kill-geant4" else python_workers[-1])
    rc, text = run.finish()  # no Geant4 process may outlive the run, whoever was signalled
    clean_exit(rc, text, {**EXIT, "kill-geant4": 2}[fault])
    if fault == "kill-geant4":
        assert "Geant4 process" in text and "killed by SIGKILL" in text, text
    assert not (tmp_path / "f.h5").exists() and temps(tmp_path) == []
    partial = tmp_path / "f.partial.h5"
    if partial.exists():  # whole showers, the ones the same seed gives (Geant4 is seeded per shower)
        n = _whole(partial)
        from caloforge.simulate import iter_plan
        from caloforge.simulate.api import make_part

        _same_as_uninterrupted(partial, n, iter_plan("calogan", [make_part("photon", "1GeV:3GeV", 600)], seed=5,
                                                     workers=1, engine="geant4"))


# ----------------------------------------------------------------------------------
# train: one process, and torchrun's ranks
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("faults-train")
    write_toy_ds1(d / "train.h5")
    (d / "gan.yaml").write_text(yaml.safe_dump(GAN))
    return {"data": d / "train.h5", "config": d / "gan.yaml", "dir": d}


def _train_args(files, out: Path, *extra) -> list:
    return ["train", "-c", files["config"], "-d", files["data"], "-o", out, "--threads", "1", "--no-progress", *extra]


def _started(out: Path) -> bool:
    return (out / "log.csv").exists() and len((out / "log.csv").read_text().splitlines()) > 2  # in the loop


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["group-int", "main-int", "main-term"])
def test_train_checkpoints_on_a_stop_signal(tmp_path, train_files, fault):
    out = tmp_path / "run"
    run = Run(_train_args(train_files, out), tmp_path)
    run.wait_for(lambda: _started(out))
    run.fault(fault)
    rc, text = run.finish()
    clean_exit(rc, text, EXIT[fault])
    ckpts = sorted((out / "checkpoints").iterdir())
    assert len(ckpts) == 1 and "continue with --resume" in text, text
    assert ckpts[0].name in text and temps(tmp_path) == []


@pytest.mark.slow
def test_train_resumes_bit_identically_after_sigterm(tmp_path, train_files):
    total = 600
    straight = tmp_path / "straight"
    done = subprocess.run([*CLI, *map(str, _train_args(train_files, straight, "--max-iterations", total))],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "run"
    run = Run(_train_args(train_files, out, "--max-iterations", total), tmp_path)
    run.wait_for(lambda: _started(out))
    run.fault("main-term")
    rc, text = run.finish()
    clean_exit(rc, text, 143)
    stopped_at = int(sorted((out / "checkpoints").iterdir())[-1].name.split("-")[1])
    assert 0 < stopped_at < total, "the run ended before SIGTERM; make it longer"
    resumed = subprocess.run([*CLI, *map(str, _train_args(train_files, out, "--max-iterations", total,
                                                           "--resume"))],
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    name = f"checkpoints/iter-{total:07d}"
    for f in ("model.safetensors", "optimizer.safetensors"):
        assert (out / name / f).read_bytes() == (straight / name / f).read_bytes(), f


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_data_parallel_train_under_faults(tmp_path, train_files, fault):
    out = tmp_path / "run"
    run = Run(_train_args(train_files, out, "--nproc", "2"), tmp_path)
    run.wait_for(lambda: _started(out), timeout=180)
    ranks = [p for p in run.workers() if b"caloforge" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(ranks) >= 2, ranks
    run.fault(fault, worker=ranks[-1])
    rc, text = run.finish()
    clean_exit(rc, text, EXIT[fault])
    if fault == "kill-worker":
        assert "training process" in text and "killed by SIGKILL" in text, text
    else:  # the ranks agreed on one iteration and rank 0 wrote its checkpoint
        assert len(list((out / "checkpoints").iterdir())) == 1 and "continue with --resume" in text, text


@pytest.mark.slow
def test_data_parallel_ranks_stop_with_a_killed_launcher(tmp_path, train_files):
    out = tmp_path / "run"
    run = Run(_train_args(train_files, out, "--nproc", "2"), tmp_path)
    run.wait_for(lambda: _started(out), timeout=180)
    run.p.kill()
    rc, _ = run.finish(timeout=60)
    assert rc == -signal.SIGKILL
    assert len(list((out / "checkpoints").iterdir())) == 1  # the ranks checkpointed on their way out


# ----------------------------------------------------------------------------------
# generate, evaluate, bench, export, merge: one process each
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(train_files) -> Path:
    out = train_files["dir"] / "model"
    done = subprocess.run([*CLI, *map(str, _train_args(train_files, out, "--max-iterations", "4"))], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out / "best"


STOPS = ["group-int", "main-int", "main-term"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", STOPS)
def test_generate_under_stop_signals(tmp_path, tiny_model, fault):
    run = Run(["generate", "-m", tiny_model, "--energies", "1GeV,60GeV", "--n", "400000", "--batch-size", "1000",
               "--engine", "pytorch", "-o", "gen.h5"], tmp_path)
    run.wait_for(lambda: temps(tmp_path))
    time.sleep(0.5)
    run.fault(fault)
    rc, text = run.finish()
    clean_exit(rc, text, EXIT[fault])
    assert not (tmp_path / "gen.h5").exists() and temps(tmp_path) == []
    if (tmp_path / "gen.partial.h5").exists():
        _whole(tmp_path / "gen.partial.h5")


@pytest.mark.parametrize("fault", STOPS)
def test_evaluate_under_stop_signals(tmp_path, train_files, fault):
    data = train_files["data"]
    out = tmp_path / "report"
    run = Run(["evaluate", "--reference", data, "--generated", data, "--geometry", "ds1-photons", "-o", out,
               "--classifier"], tmp_path)  # the classifier makes it a minute long: the signal lands mid-work
    run.wait_for(lambda: "classifier" in run.stderr(), timeout=120)  # at work, past the imports
    time.sleep(0.5)
    run.fault(fault)
    rc, text = run.finish()
    clean_exit(rc, text, EXIT[fault])
    assert temps(tmp_path) == []
    if (out / "metrics.json").exists():
        json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("command", ["bench", "export", "merge"])
def test_sigterm_stops_the_other_commands_cleanly(tmp_path, tiny_model, command):
    """SIGTERM lands where it lands: the command exits 143 or 0, never leaving a temporary file.
    An output published before the signal arrived (the rename is the last act) stays, whole."""
    if command == "bench":
        args = ["bench", "-m", tiny_model, "--paths", "pytorch", "--batches", "1,100", "--repeats", "2000",
                "-o", "bench.json"]
        final = tmp_path / "bench.json"
    elif command == "export":
        args = ["export", "-m", tiny_model, "-f", "torchscript", "-o", "m.pt"]
        final = tmp_path / "m.pt"
    else:
        for k in (1, 2):
            done = subprocess.run([*CLI, "generate", "-m", str(tiny_model), "--energies", "1GeV", "--n", "60000",
                                   "--batch-size", "1000", "--shard", f"{k}/2", "-o", str(tmp_path / f"s{k}.h5")],
                                  env=ENV, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
        args = ["merge", "s1.h5", "s2.h5", "-o", "m.h5", "-q"]
        final = tmp_path / "m.h5"
    run = Run(args, tmp_path)
    run.wait_for(lambda: Path(f"/proc/{run.p.pid}/maps").exists()
                 and b"caloforge" in Path(f"/proc/{run.p.pid}/cmdline").read_bytes())
    time.sleep({"bench": 5.0, "export": 3.0, "merge": 2.5}[command])  # past the imports, into the work
    run.fault("main-term")
    rc, text = run.finish()
    if rc == 0:  # finished first: its output is whole
        assert final.exists()
    else:  # stopped: before the rename nothing is published, after it the file is whole
        clean_exit(rc, text, 143)
    assert temps(tmp_path) == [] and not list(tmp_path.glob(".*tmp*"))
    if final.exists():
        if final.suffix == ".h5":
            assert _whole(final) == 60000
        elif final.suffix == ".json":
            assert json.loads(final.read_text())
        else:
            assert zipfile.is_zipfile(final)  # a TorchScript archive


# ----------------------------------------------------------------------------------
# tune: interrupted trials continue; a dead worker's trial is retried once (journal, PostgreSQL)
# ----------------------------------------------------------------------------------
TUNE_BASE = {**GAN, "training": {**GAN["training"], "max_iterations": 1500, "checkpoint_every": 250}}
SPACE = {"model.voxel_scale": [100.0, 30.0], "model.critic_steps": [1, 2]}


@pytest.fixture(scope="module")
def tune_files(train_files) -> dict[str, Path]:
    d = train_files["dir"]
    (d / "tune.yaml").write_text(yaml.safe_dump(TUNE_BASE))
    (d / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return {**train_files, "base": d / "tune.yaml", "space": d / "space.yaml"}


def _tune_args(files, out: Path, *extra) -> list:
    return ["tune", "-c", files["base"], "--space", files["space"], "-d", files["data"], "-o", out, "--threads", "1",
            "--sampler", "random", "--pruner", "none", *extra]


def _trial_jsons(study: Path) -> list[dict]:
    out = []
    for p in sorted(study.glob("trials/trial-*/trial.json")):
        try:
            out.append(json.loads(p.read_text()))
        except ValueError:
            pass  # being replaced (atomic): read it next time
    return out


def _checkpointed(study: Path, pid: int | None = None) -> bool:
    for info in _trial_jsons(study):
        d = study / "trials" / f"trial-{info.get('resumes_trial') or info['number']:04d}"
        if (pid is None or info.get("pid") == pid) and any(d.glob("seed-*/checkpoints/iter-*")):
            return True
    return False


@pytest.mark.slow
def test_tune_sigterm_marks_the_trial_interrupted_and_the_next_worker_continues_it(tmp_path, tune_files):
    study = tmp_path / "study"
    run = Run(_tune_args(tune_files, study, "--trials", "1"), tmp_path)
    run.wait_for(lambda: _checkpointed(study), timeout=180)
    run.fault("main-term")
    rc, text = run.finish()
    clean_exit(rc, text, 143)
    info = json.loads((study / "trials" / "trial-0000" / "trial.json").read_text())
    assert info["state"] == "INTERRUPTED" and info["interrupted_by"] == "SIGTERM", text
    stopped = max(int(p.name.split("-")[1]) for p in study.glob("trials/trial-0000/seed-*/checkpoints/iter-*"))
    done = subprocess.run([*CLI, *map(str, _tune_args(tune_files, study, "--trials", "1"))], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    import optuna

    trials = optuna.load_study(study_name="space", storage=f"sqlite:///{study / 'study.db'}").get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(0, "FAIL"), (1, "COMPLETE")]
    assert trials[0].user_attrs["interrupted"] == "SIGTERM" and trials[1].user_attrs["resumes_trial"] == 0
    calls = json.loads((study / "trials" / "trial-0000" / "seed-0" / "run.json").read_text())["calls"]
    assert [c["started_iteration"] for c in calls] == [0, stopped]  # resumed, not restarted


def _postgres_binaries() -> Path | None:
    for bin_dir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (bin_dir / "initdb").exists() and (bin_dir / "postgres").exists():
            return bin_dir
    return None


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    """A throwaway PostgreSQL server on a unix socket (Debian's package; .ci/run installs it)."""
    required = os.environ.get("CALOFORGE_REQUIRE_POSTGRES") == "1"
    bin_dir = _postgres_binaries()
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's default PostgreSQL driver)
    except ImportError:
        bin_dir = None
    if bin_dir is None:
        message = "PostgreSQL (Debian's postgresql package) or psycopg (the dev extra) is not installed"
        pytest.fail(message) if required else pytest.skip(message)
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="caloforge-pg-"))  # outside pytest's private (0700) root directory
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as an unprivileged user
        import pwd

        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        assert user is not None, "no unprivileged user to run PostgreSQL as"
        pw = pwd.getpwnam(user)
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        run_as = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
    init = subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "tuner",
                           "--no-sync"], capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    port = 54000 + os.getpid() % 1000
    server = subprocess.Popen([*run_as, str(bin_dir / "postgres"), "-D", str(data), "-k", str(sock),
                               "-c", "listen_addresses=", "-p", str(port), "-c", "fsync=off"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql://tuner@/postgres?host={sock}&port={port}"
    try:
        import psycopg

        t0 = time.monotonic()
        while True:
            try:
                psycopg.connect(host=str(sock), port=port, user="tuner", dbname="postgres").close()
                break
            except psycopg.OperationalError:
                assert server.poll() is None and time.monotonic() - t0 < 60, "PostgreSQL did not start"
                time.sleep(0.2)
        yield url
    finally:
        server.send_signal(signal.SIGINT)  # "fast" shutdown: SIGTERM would wait for the sessions to end
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_tune_retries_a_killed_workers_trial_once_and_resumes_its_runs(tmp_path, tune_files, storage, request):
    import optuna

    study = tmp_path / "study"
    study.mkdir()
    url = f"journal:{study / 'study.journal'}" if storage == "journal" else request.getfixturevalue("postgres_url")
    env = {**ENV, "CALOFORGE_TUNE_HEARTBEAT_S": "1", "CALOFORGE_TUNE_GRACE_S": "4"}
    args = _tune_args(tune_files, study, "--trials", "3", "--storage", url, "--study-name", f"s-{storage}")
    victim = Run([*args, "--worker", "0"], tmp_path, env)
    victim.wait_for(lambda: _checkpointed(study, victim.p.pid), timeout=180)
    other = Run([*args, "--worker", "1"], tmp_path, env)
    victim.fault("kill-worker", worker=victim.p.pid)  # the out-of-memory killer takes the whole worker
    victim.finish()
    rc, text = other.finish(timeout=400)
    assert rc == 0 and "Traceback" not in text, text

    from caloforge.tuning.storage import open_storage

    trials = optuna.load_study(study_name=f"s-{storage}", storage=open_storage(url)).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1, states  # 3 finished, exactly
    dead = next(t for t in trials if t.state.name == "FAIL")
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    info = json.loads((study / "trials" / f"trial-{dead.number:04d}" / "trial.json").read_text())
    assert info["resumes_trial"] == dead.number and info["state"] == "COMPLETE"
    calls = json.loads((study / "trials" / f"trial-{dead.number:04d}" / "seed-0" / "run.json").read_text())["calls"]
    assert len(calls) == 2 and calls[1]["started_iteration"] > 0  # its run directory was resumed
