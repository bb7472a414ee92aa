"""Leaderboard: entries from reports, runs and bench JSON; the reference check; Pareto marks; the
published rows in grey; the four files written atomically; one-line errors through the CLI."""

from __future__ import annotations

import copy
import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.errors import DataError
from caloforge.leaderboard import build_leaderboard
from caloforge.leaderboard.published import PUBLISHED_CSV, published_entries
from caloforge.leaderboard.write import PUBLISHED_COLOUR, figure

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def metrics(tmp_path_factory) -> dict:
    """The metrics.json of one real, tiny evaluation (two simulated-like files, a quick classifier)."""
    from caloforge.evaluate import compare, write_report
    from caloforge.io import write_showers

    d = tmp_path_factory.mktemp("evaluation")
    rng = np.random.default_rng(0)
    for name, scale in (("ref.h5", 1.0), ("gen.h5", 1.1)):
        e = rng.choice([1e3, 1e4], 300)
        write_showers(d / name, e, rng.exponential(scale, (300, 368)) * e[:, None] / 368)
    result = compare(d / "ref.h5", d / "gen.h5", "ds1-photons", per_energy=False, classifier=True,
                     classifier_settings={"epochs": 2, "n_hidden": 16})
    write_report(result, d / "report", plots=False)
    return json.loads((d / "report" / "metrics.json").read_text())


def _report(directory: Path, metrics: dict, auc: float, fpd: float, sha: str | None = None) -> Path:
    """A report directory in the real layout, with its AUC (low level) and FPD ×10³ set."""
    m = copy.deepcopy(metrics)
    m["headline"].update(auc_low=auc, classifier_auc=auc, fpd_x1e3=fpd, fpd=fpd / 1e3)
    m["classifier"]["low"]["auc"] = auc
    m["fpd"].update(value=fpd / 1e3, value_x1e3=fpd)
    if sha is not None:
        m["reference_file"]["sha256"] = sha
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(m))
    return directory


def _bench(path: Path, ms_b1: float, ms_b10k: float, model: str = "/elsewhere/best") -> Path:
    rows = [{"path": "pytorch", "device": "cpu", "threads": 1, "batch": b, "ms_per_shower": ms}
            for b, ms in ((1, ms_b1), (100, ms_b1 / 2), (10_000, ms_b10k))]
    rows.append({"path": "onnxruntime", "device": "cpu", "threads": 1, "batch": 10_000, "ms_per_shower": 2 * ms_b10k})
    path.write_text(json.dumps({"model": {"path": model, "family": "from-bench", "parameters": 7}, "results": rows}))
    return path


def _run(directory: Path, metrics: dict, auc: float, fpd: float, ms: tuple[float, float], **kw) -> Path:
    """RUN/ with RUN/best/ (config.json with a training cost, a safetensors header of 12 weights),
    RUN/report/metrics.json and RUN/bench.json."""
    best = directory / "checkpoints" / "iter-0000010"
    best.mkdir(parents=True)
    (best / "config.json").write_text(json.dumps({"family": "caloshowergan", "training_cost": {
        "wall_s": 120.0, "device": "gpu", "processes": 2}}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}).encode()
    (best / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(48))
    (directory / "best").symlink_to(Path("checkpoints") / "iter-0000010")
    (directory / "run.json").write_text("{}")
    _report(directory / "report", metrics, auc, fpd, **kw)
    _bench(directory / "bench.json", *ms)
    return directory


def _board(tmp_path: Path, metrics: dict):
    runs = tmp_path / "runs"
    _run(runs / "fast", metrics, 0.80, 30.0, (1.0, 0.05))
    _run(runs / "good", metrics, 0.55, 3.0, (20.0, 5.0))
    _run(runs / "dominated", metrics, 0.90, 40.0, (30.0, 8.0))
    return build_leaderboard([runs], tmp_path / "out")


def test_table_values_and_pareto_marks(tmp_path, metrics):
    board = _board(tmp_path, metrics)
    assert board.dataset == "ds1-photons" and board.dataset_origin == "the reports' geometry"
    flags = {e.name: (e.pareto_auc, e.pareto_fpd) for e in board.entries}
    assert flags == {"fast": (True, True), "good": (True, True), "dominated": (False, False)}
    with open(tmp_path / "out" / "leaderboard.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    good = rows["good"]
    assert good["family"] == "caloshowergan" and good["parameters"] == "12"  # the checkpoint, not the bench
    assert float(good["training_minutes"]) == pytest.approx(4.0) and good["training_device"] == "gpu"
    assert float(good["auc_low"]) == pytest.approx(0.55) and float(good["fpd_x1e3"]) == pytest.approx(3.0)
    assert float(good["auc_high"]) == pytest.approx(metrics["headline"]["auc_high"])
    assert float(good["kpd_x1e3"]) == pytest.approx(metrics["headline"]["kpd_x1e3"])
    assert float(good["etot_chi2_ndf"]) == pytest.approx(metrics["headline"]["etot_chi2_ndf"])
    # the fastest CPU path at each batch size
    assert float(good["ms_per_shower_b1"]) == 20.0 and float(good["ms_per_shower_b10000"]) == 5.0
    assert (good["pareto_auc"], rows["dominated"]["pareto_auc"], rows["dominated"]["pareto_fpd"]) == ("1", "0", "0")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| **good** | caloshowergan | 12 | 4 GPU min | 0.55 |" in md
    assert "| dominated |" in md and "**dominated**" not in md


def test_published_rows_of_the_dataset_are_grey(tmp_path, metrics):
    board = _board(tmp_path, metrics)
    names = {e.name for e in board.published}
    with open(PUBLISHED_CSV) as f:
        expected = {r["model"] for r in csv.DictReader(f) if r["dataset"] == "ds1_photons"}
    assert names == expected and "CaloINN" in names
    assert not any(e.pareto_auc or e.pareto_fpd for e in board.published)
    fig = figure(board)
    texts = {t.get_text(): t.get_color() for ax in fig.axes for t in ax.texts}
    assert texts["CaloINN"] == PUBLISHED_COLOUR and texts["good"] != PUBLISHED_COLOUR
    page = (tmp_path / "out" / "leaderboard.html").read_text()
    assert '<tr class="published"><td class="name">CaloINN</td>' in page
    assert "data:image/png;base64," in page and "<script" not in page
    with open(tmp_path / "out" / "leaderboard.csv") as f:
        published = [r for r in csv.DictReader(f) if r["published"] == "1"]
    assert {r["name"] for r in published} == expected
    assert published_entries("ds2")[0].geometry == "ds2"


def test_bench_pairing_explicit_and_by_timed_model(tmp_path, metrics):
    report = _report(tmp_path / "a", metrics, 0.6, 5.0)
    bench = _bench(tmp_path / "timings.json", 3.0, 0.3)
    board = build_leaderboard([report], None, benches={str(report): bench})
    assert board.entries[0].ms_per_shower_b10000 == 0.3 and board.entries[0].family == "from-bench"
    run = _run(tmp_path / "runs" / "r", metrics, 0.6, 5.0, (1.0, 0.1))
    loose = _bench(tmp_path / "loose.json", 9.0, 0.9, model=str(run / "best"))
    (run / "bench.json").unlink()
    board = build_leaderboard([run, loose], None)
    assert board.entries[0].ms_per_shower_b1 == 9.0
    with pytest.raises(DataError, match="none of the given runs"):
        build_leaderboard([report, _bench(tmp_path / "stray.json", 1, 1)], None)


def _invoke(*args: str):
    res = CliRunner().invoke(app, ["leaderboard", *args])
    lines = [line for line in res.output.splitlines() if line.strip()]
    return res, lines


def test_a_mismatched_reference_is_refused_with_one_line(tmp_path, metrics):
    a = _report(tmp_path / "a", metrics, 0.6, 5.0)
    b = _report(tmp_path / "b", metrics, 0.7, 6.0, sha="0" * 64)
    res, lines = _invoke(str(a), str(b), "-o", str(tmp_path / "out"))
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.output
    assert str(b / "metrics.json") in lines[0] and "reference" in lines[0]
    assert not (tmp_path / "out").exists()
    res, lines = _invoke(str(a), str(b), "-o", str(tmp_path / "out"), "--skip-mismatched")
    assert res.exit_code == 0, res.output
    assert any(line.startswith("warning: left out: b") for line in lines)
    assert "dataset: ds1-photons (from the reports' geometry)" in res.output
    with open(tmp_path / "out" / "leaderboard.csv") as f:
        assert [r["name"] for r in csv.DictReader(f) if r["published"] == "0"] == ["a"]


@pytest.mark.parametrize("problem", ["no-metrics", "missing-path", "other-dataset", "bad-bench-pair"])
def test_bad_input_is_one_line_exit_2(tmp_path, metrics, problem):
    a = _report(tmp_path / "a", metrics, 0.6, 5.0)
    args = [str(a)]
    if problem == "no-metrics":
        run = tmp_path / "run"
        run.mkdir()
        (run / "run.json").write_text("{}")
        args.append(str(run))
    elif problem == "missing-path":
        args.append(str(tmp_path / "nowhere"))
    elif problem == "other-dataset":
        args += ["--dataset", "ds2"]
    else:
        args += ["--bench", "no-equals-sign"]
    res, lines = _invoke(*args, "-o", str(tmp_path / "out"))
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.output
    if problem == "no-metrics":
        assert "run: no metrics.json" in lines[0]


def test_files_are_written_atomically(tmp_path, metrics, monkeypatch):
    import caloforge.io

    written = []
    original = caloforge.io.atomic_path

    def recording(path, *args, **kwargs):
        written.append(Path(path).name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(caloforge.io, "atomic_path", recording)
    _board(tmp_path, metrics)
    assert sorted(written) == ["leaderboard.csv", "leaderboard.html", "leaderboard.md", "leaderboard.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(written)  # no temporary file left


def test_the_published_table_ships_with_the_package():
    assert PUBLISHED_CSV.parent == REPO / "caloforge" / "data"
    text = (REPO / "pyproject.toml").read_text()
    assert "data/calochallenge_2022_final_results.csv" in text
