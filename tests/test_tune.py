"""caloforge tune: a 2-worker study with pruning, seed statistics, resumable trials, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.errors import ConfigError
from caloforge.models import load_config
from caloforge.tuning import SearchSpace, TuneOptions, run_worker

from processes import CLI, ENV
from toy_data import write_toy_ds1

# A tiny GAN.  The two voxel_scale choices make pruning deterministic: with voxel_scale 1
# every generated E_tot/E_inc lies far above the reference, so the E_tot χ² is at its
# ceiling (2 × the 150 validation showers = 300) at the first checkpoint, while
# voxel_scale 100 starts near the reference (χ² ≈ 100–220).  --prune-above 250 prunes
# exactly the first kind.
BASE = {
    "model": {"name": "caloshowergan", "geometry": "ds1-photons", "latent_dim": 8, "generator_hidden": [16],
              "critic_hidden": [16], "voxel_scale": 100.0, "critic_steps": 1},
    "training": {"batch_size": 32, "max_iterations": 5, "checkpoint_every": 5, "tensorboard": False,
                 "validation_fraction": 0.5},
}
SPACE = {"model.voxel_scale": [100.0, 1.0], "model.critic_steps": [1, 2]}
CEILING = 300.0


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tune")
    write_toy_ds1(d / "train.h5")
    (d / "base.yaml").write_text(yaml.safe_dump(BASE))
    (d / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return {"data": d / "train.h5", "base": d / "base.yaml", "space": d / "space.yaml"}


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_two_workers_make_one_study_with_pruned_trials_and_a_best_that_generates(files, tmp_path):
    import optuna

    from caloforge.tuning.storage import open_storage
    from caloforge.tuning.study import create_or_load_study

    study_dir = tmp_path / "study"
    study_dir.mkdir()
    # queue the four configurations so that the test does not depend on which worker samples what;
    # the workers pop them from the shared storage (each exactly once)
    study = create_or_load_study(open_storage(f"sqlite:///{study_dir / 'study.db'}"), "space")
    for vs, cs in ((100.0, 1), (1.0, 1), (100.0, 2), (1.0, 2)):
        study.enqueue_trial({"model.voxel_scale": vs, "model.critic_steps": cs})
    common = [*CLI, "tune", "--config", files["base"], "--space", files["space"],
              "--data", files["data"], "-o", study_dir, "--trials", "4", "--pruner", "none", "--prune-above", "250"]
    # worker 1 trains its trial data-parallel (caloforge train --nproc 2 in a subprocess)
    procs = [subprocess.Popen([str(a) for a in common + ["--worker", str(w), "--worker-trials", str(n)] + extra],
                              env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for w, n, extra in ((0, 3, []), (1, 1, ["--nproc-per-trial", "2"]))]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    study = optuna.load_study(study_name="space", storage=f"sqlite:///{study_dir / 'study.db'}")
    trials = study.get_trials()
    assert len(trials) == 4
    by_worker: dict[int, list] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
        if t.params["model.voxel_scale"] == 1.0:
            assert t.state.name == "PRUNED", (t.number, t.state, t.intermediate_values)
            assert list(t.intermediate_values.values()) == [CEILING]
            info = json.loads((Path(t.user_attrs["trial_dir"]) / "trial.json").read_text())
            assert info["state"] == "PRUNED" and info["pruned_at"] == "seed 0, iteration 5"
        else:
            assert t.state.name == "COMPLETE" and t.value < 250.0
    assert sorted(by_worker) == [0, 1] and [len(by_worker[w]) for w in (0, 1)] == [3, 1]
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    for t in by_worker[1]:  # the data-parallel trial ran caloforge train --nproc 2 (completed or killed)
        run = Path(t.user_attrs["trial_dir"]) / "seed-0"
        assert (run.parent / "seed-0.train.log").exists()
        calls = json.loads((run / "run.json").read_text())["calls"]
        assert calls[0]["processes"] == 2
    for out in outputs:
        assert "finished trials of 4" in out or "trials (--worker-trials)" in out

    best = study.best_trial
    assert best.params["model.voxel_scale"] == 100.0
    assert (study_dir / "best").resolve() == (Path(best.user_attrs["trial_dir"]) / "seed-0" / "best").resolve()
    gen = _cli("generate", "--model", Path(best.user_attrs["trial_dir"]), "--energies", "8GeV", "--n", "5",
               "-o", tmp_path / "gen.h5")
    assert gen.exit_code == 0, gen.output
    assert "wrote 5 showers" in gen.output

    report = _cli("tune", "--report", "-o", study_dir)
    assert report.exit_code == 0, report.output
    assert "2 complete, 2 pruned" in report.output and "parameter importances:" in report.output
    for name in ("optimization_history", "parallel_coordinate", "param_importances", "intermediate_values"):
        assert (study_dir / "report" / f"{name}.png").stat().st_size > 1000
    summary = json.loads((study_dir / "report" / "report.json").read_text())
    assert summary["best"][0]["number"] == best.number and summary["counts"] == {"COMPLETE": 2, "PRUNED": 2}


_POP = """
import sys, time, warnings
import optuna
from caloforge.tuning.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.simplefilter("ignore")
study = optuna.load_study(study_name="queue", storage=open_storage(sys.argv[1]))
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
print(" ".join(str(study.ask().number) for _ in range(12)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_workers_asking_at_once_never_take_the_same_enqueued_trial(tmp_path, kind):
    # Optuna pops an enqueued trial by read-check-write; on SQLite that was not atomic, and
    # 4 workers asking at once took ~25 % of the trials twice (a race the storage must survive)
    import time

    import optuna

    from caloforge.tuning.storage import open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.journal'}"
    study = optuna.create_study(study_name="queue", storage=open_storage(url))
    for x in range(48):
        study.enqueue_trial({"x": float(x)})
    start = time.time() + 4.0  # every worker has imported and connected before the first ask
    procs = [subprocess.Popen([sys.executable, "-c", _POP, url, str(start)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    taken = [int(n) for out, _ in outputs for n in out.split()]
    assert len(taken) == 48 and sorted(taken) == list(range(48)), sorted(taken)


def test_seeds_give_mean_and_spread_and_trials_are_resumable_runs(files, tmp_path):
    out = tmp_path / "study"
    lines: list[str] = []
    options = TuneOptions(trials=1, seeds=2, metric="etot_chi2_ndf", study_name="s")
    summary = run_worker(files["base"], files["space"], files["data"], out, options=options, log=lines.append)
    assert summary.trials_run == [0] and summary.counts == {"COMPLETE": 1}
    assert "trial 0 is the base config's settings" in lines[0]
    info = json.loads((out / "trials" / "trial-0000" / "trial.json").read_text())
    assert info["params"] == {"model.voxel_scale": 100.0, "model.critic_steps": 1}  # the base config's
    values = [info["seed_values"][s]["value"] for s in ("0", "1")]
    assert values[0] != values[1] and all(np.isfinite(values)) and min(values) > 0
    assert info["mean"] == pytest.approx(np.mean(values)) and info["std"] == pytest.approx(np.std(values, ddof=1))
    assert summary.best_value == pytest.approx(np.mean(values)) and summary.best_std == pytest.approx(info["std"])
    best_seed = int(np.argmin(values))
    assert (out / "trials" / "trial-0000" / "best").resolve() == (
        out / "trials" / "trial-0000" / f"seed-{best_seed}" / "best").resolve()
    # each seed is an ordinary run directory: caloforge train --resume picks it up
    r = _cli("train", "--config", out / "trials" / "trial-0000" / "config.yaml", "--data", files["data"],
             "-o", out / "trials" / "trial-0000" / "seed-1", "--seed", "1", "--resume", "--max-iterations", "10",
             "--no-progress")
    assert r.exit_code == 0, r.output
    assert "finished 10 iterations" in r.output
    # the same command again adds nothing; a larger --trials continues the study
    again = run_worker(files["base"], files["space"], files["data"], out, options=options, log=lines.append)
    assert again.trials_run == [] and "1 finished trials of 1" in again.stopped
    # another metric cannot join this study
    with pytest.raises(ConfigError, match="study 's' was started with another --metric"):
        run_worker(files["base"], files["space"], files["data"], out, options=TuneOptions(trials=2, seeds=2,
                   study_name="s"), log=lines.append)


@pytest.mark.parametrize("space, message", [
    ({"model.critic_step": [1, 2]}, "unknown config key model.critic_step (did you mean model.critic_steps?)"),
    ({"model.gp_lambda": {"type": "float", "low": 5.0, "high": 1.0}}, "invalid range, low 5.0 must be below high 1.0"),
    ({"model.gp_lambda": {"type": "log", "low": 0.0, "high": 1.0}}, "low must be > 0"),
    ({"model.gp_lambda": {"type": "flaot", "low": 0.0, "high": 1.0}}, "unknown type 'flaot' (did you mean float?)"),
    ({"model.gp_lambda": {"type": "float", "low": 1.0, "hi": 2.0}}, "unknown field 'hi' for type float"),
    ({"model.critic_steps": {"type": "int", "low": 1.5, "high": 4}}, "must be an integer for type int"),
    ({"model.critic_steps": {"type": "int", "low": 0, "high": 4}}, "model.critic_steps = 0 gives an invalid config"),
    ({"model.critic_steps": {"type": "categorical", "choices": []}}, "choices must be a non-empty list"),
    ({"training.seed": [1, 2]}, "training.seed cannot be searched"),
    ([1, 2], "a search space is a mapping"),
])
def test_bad_search_spaces_are_one_line_errors(files, tmp_path, space, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(space))
    r = _cli("tune", "--config", files["base"], "--space", path, "--data", files["data"], "-o", tmp_path / "s")
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("storage, message", [
    ("sqlite:////nonexistent-dir/study.db", "cannot open the database (no directory /nonexistent-dir)"),
    ("journal:/nonexistent-dir/study.journal", "cannot open the journal file (no directory /nonexistent-dir)"),
    ("postgresql://tuner@127.0.0.1:1/study", "--storage postgresql://tuner@127.0.0.1:1/study: "),
    ("study-db", "expected a database URL"),
])
def test_unusable_storage_is_a_one_line_error(files, tmp_path, storage, message):
    r = _cli("tune", "--config", files["base"], "--space", files["space"], "--data", files["data"],
             "-o", tmp_path / "s", "--storage", storage)
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "s").exists()  # nothing created, no data read


def test_bad_options_are_one_line_errors(files, tmp_path):
    args = ["tune", "--config", files["base"], "--space", files["space"], "--data", files["data"], "-o", tmp_path / "s"]
    for extra, message in (
        (["--sampler", "tpee"], "--sampler 'tpee': unknown (did you mean tpe?)"),
        (["--seeds", "0"], "--seeds must be a positive integer"),
        (["--metric", "a-u-c"], "--metric 'a-u-c'"),
        (["--nproc-per-trial", "3"], "training.batch_size 32 is not divisible by --nproc-per-trial 3"),
        (["--trial-time", "soon"], "--trial-time: expected a duration"),
    ):
        r = _cli(*args, *extra)
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, (extra, r.output)
    r = _cli("tune", "--report", "-o", tmp_path / "none")
    assert r.exit_code == 2 and "no study here" in r.output


def test_grid_sampler_needs_a_finite_space():
    base = load_config(BASE)
    space = SearchSpace.from_mapping({"model.gp_lambda": {"type": "float", "low": 1.0, "high": 2.0, "step": 0.5},
                                      "model.critic_steps": {"type": "int", "low": 1, "high": 3}}, base)
    assert space.grid() == {"model.gp_lambda": [1.0, 1.5, 2.0], "model.critic_steps": [1, 2, 3]}
    with pytest.raises(ConfigError, match="model.gp_lambda is continuous"):
        SearchSpace.from_mapping({"model.gp_lambda": {"type": "float", "low": 1.0, "high": 2.0}}, base).grid()
    lists = SearchSpace.from_mapping({"model.generator_hidden": [[8], [16, 16]]}, base)
    assert lists.base_values(base) == ({}, ["model.generator_hidden"])  # [16] is not a choice
    assert lists.apply(base, {"model.generator_hidden": "[16, 16]"}).model.generator_hidden == [16, 16]


def test_on_checkpoint_hook_stops_training_cleanly_and_the_run_resumes(files, tmp_path):
    from caloforge.train import StopTraining, train

    seen = []

    def hook(iteration: int, scores: dict) -> None:
        seen.append((iteration, scores))
        if iteration == 10:
            raise StopTraining("enough")

    cfg = {**BASE, "training": {**BASE["training"], "max_iterations": 20}}
    result = train(cfg, files["data"], tmp_path / "run", progress=False, on_checkpoint=hook)
    assert [i for i, _ in seen] == [5, 10] and all("chi2_etot" in s for _, s in seen)
    assert (result.stopped, result.iterations, result.message) == ("stopped", 10, "enough")
    assert [h[0] for h in result.history] == [5, 10] and result.best_checkpoint is not None
    resumed = train(cfg, files["data"], tmp_path / "run", progress=False, resume=True)
    assert (resumed.stopped, resumed.iterations) == ("completed", 20)
