"""caloforge bench: the CaloChallenge timing protocol's structure (never timing values), table, JSON, errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from caloforge.bench import bench, calls_per_repeat, calochallenge_rows, format_table, time_calls
from caloforge.cli import app
from caloforge.errors import ConfigError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from caloforge.checkpoint import point_best, write_checkpoint
    from tests.test_export import tiny_model

    root = tmp_path_factory.mktemp("run")
    point_best(root, write_checkpoint(root / "checkpoints" / "iter-0000001", tiny_model("caloshowergan", 1),
                                      meta={"iteration": 1}))
    return root


def test_protocol_excludes_warmup_and_takes_the_median():
    calls = []
    row = time_calls(lambda: calls.append(1), batch=100, repeats=3)
    assert len(calls) == 2 + 3 * calls_per_repeat(100) == 2 + 3 * 10
    assert row["min_ms_per_shower"] <= row["ms_per_shower"] <= row["max_ms_per_shower"]
    assert calls_per_repeat(1) == 1000 and calls_per_repeat(10_000) == 1


def test_bench_times_every_requested_path(run_dir):
    report = bench(run_dir, paths=["pytorch", "generate", "onnxruntime"], batches=[1, 7], repeats=2, threads=1,
                   showers_per_repeat=20)
    got = {(r["path"], r["batch"]) for r in report["results"]}
    assert got == {(p, b) for p in ("pytorch", "generate", "onnxruntime") for b in (1, 7)}
    assert all(r["ms_per_shower"] > 0 and r["threads"] == 1 and r["device"] == "cpu" for r in report["results"])
    assert report["model"]["geometry"] == "ds1-pions" and report["machine"]["threads"] == 1
    assert set(report["model"]["conditions"]) == {"incident_energy", "incident_theta", "incident_phi", "impact_x"}
    json.dumps(report)  # JSON-able
    table = format_table(report)
    assert {row[1] for row in table if row[0].startswith("caloforge")} == {"pytorch", "generate", "onnxruntime"}


def test_calochallenge_rows_match_the_dataset(tmp_path):
    csv = tmp_path / "anchors.csv"
    csv.write_text("dataset,model,ms_per_shower_cpu_b1,ms_per_shower_cpu_b100,ms_per_shower_cpu_b10000\n"
                   "ds1_pions,CaloShowerGAN,1163,70.7,1.6\nds1_photons,CaloINN,37.9,2.78,2.88\nds1_pions,GEANT4,,,\n")
    rows = calochallenge_rows("ds1-pions", csv)
    assert rows == [{"model": "CaloShowerGAN", "ms_per_shower_cpu_b1": 1163.0, "ms_per_shower_cpu_b100": 70.7,
                     "ms_per_shower_cpu_b10000": 1.6}]
    assert calochallenge_rows("calogan", csv) == []


def test_bench_bad_input(run_dir):
    with pytest.raises(ConfigError, match="--paths"):
        bench(run_dir, paths=["tensorflow"])
    with pytest.raises(ConfigError, match="--batches"):
        bench(run_dir, batches=[0])


def test_cli_bench_prints_a_table_and_writes_json(run_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--model", str(run_dir), "--batches", "1,5", "--repeats", "1",
                                      "--paths", "pytorch,onnxruntime", "--energy", "10GeV", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output and "batch 5" in result.output
    report = json.loads(out.read_text())
    assert report["model"]["conditions"]["incident_energy"] == 10000.0
    bad = CliRunner().invoke(app, ["bench", "--model", str(run_dir), "--batches", "1,x"])
    assert bad.exit_code == 2 and "--batches" in bad.output


def test_bench_times_bf16_only_when_it_passes_its_check(run_dir, monkeypatch):
    import caloforge.engine as engine

    monkeypatch.setattr(engine, "CHECK_SHOWERS", 256)
    monkeypatch.setattr(engine, "MAX_SHIFT", -1.0)  # a check nothing passes: reported, not timed
    report = bench(run_dir, paths=["bf16"], batches=[1, 3], repeats=1, showers_per_repeat=3)
    assert report["results"] == [] and "failed" in report["checks"]["bf16"]
    if not engine.bf16_supported():
        assert "bf16" in report["checks"]["bf16"]["failed"]
        return
    assert "physics check" in report["checks"]["bf16"]["failed"]
    monkeypatch.setattr(engine, "MAX_SHIFT", float("inf"))
    report = bench(run_dir, paths=["bf16"], batches=[1, 3], repeats=1, showers_per_repeat=3)
    assert {(r["path"], r["batch"]) for r in report["results"]} == {("bf16", 1), ("bf16", 3)}
    assert "E_tot/E_inc" in report["checks"]["bf16"]


@pytest.mark.slow
def test_cli_bench_times_an_ode_model_at_the_requested_steps(tmp_path):
    """``--sampling steps=N`` reaches every path (the exported graph is traced with it) and the report
    says what was timed; an option the family lacks is a one-line error, exit code 2."""
    from caloforge.checkpoint import point_best, write_checkpoint
    from tests.test_export import tiny_model

    run = tmp_path / "fm"
    point_best(run, write_checkpoint(run / "checkpoints" / "iter-0000001", tiny_model("flow_matching"),
                                     meta={"iteration": 1}))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--model", str(run), "--batches", "1,5", "--repeats", "1",
                                      "--paths", "pytorch,generate,onnxruntime", "--sampling", "steps=2",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "steps 2" in " ".join(result.output.split())  # the table title names what was timed (rich may wrap it)
    report = json.loads(out.read_text())
    assert report["model"]["sampling"]["steps"] == 2
    assert {r["path"] for r in report["results"]} == {"pytorch", "generate", "onnxruntime"}
    gan = CliRunner().invoke(app, ["bench", "--model", str(run.parent / "nowhere"), "--sampling", "steps"])
    assert gan.exit_code == 2 and "KEY=VALUE" in gan.output
    bad = CliRunner().invoke(app, ["bench", "--model", str(run), "--sampling", "temperature=0.5"])
    assert bad.exit_code == 2 and "temperature" in bad.output and "Traceback" not in bad.output
