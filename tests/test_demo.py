"""The end-to-end chain behind `make demo`, on a tiny budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.demo import DEFAULT_CONFIG, run_demo
from caloforge.io import read_showers
from caloforge.models import load_config


def test_demo_trains_flow_matching_by_default() -> None:
    """The demo trains the CPU recommendation, on a fixed budget that picks ``best`` without a χ² lottery."""
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.model.name == "flow_matching" and cfg.model.geometry == "ds1-photons"
    assert cfg.training.select_by == "val_loss"
    assert cfg.model.lr_decay_iterations == cfg.training.max_iterations  # the schedule ends with the budget
    assert cfg.training.max_iterations % cfg.training.checkpoint_every == 0  # the last iteration is scored
    assert load_config("demo").model.name == "caloshowergan"  # the GAN demo stays one flag away


@pytest.mark.slow
@pytest.mark.parametrize("config", [DEFAULT_CONFIG, "demo"])
def test_demo_chain_runs_end_to_end(tmp_path: Path, config: str) -> None:
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", scale=0.01, holdout_scale=0.01, max_iterations=40, config=config,
                      classifier=False, log=lines.append, progress=False)
    out = tmp_path / "demo"
    assert result.report == out / "report" / "report.html" and result.report.exists()
    assert (out / "report" / "metrics.json").exists()
    # as many generated showers as held-out reference showers, at the same energies
    holdout = read_showers(out / "reference_holdout.h5", geometry="ds1-photons")
    generated = read_showers(out / "generated.h5", geometry="ds1-photons")
    assert len(generated) == len(holdout) > 0
    assert (generated.incident_energy == holdout.incident_energy).all()
    assert math.isfinite(result.headline["etot_chi2_ndf"]) and result.headline["etot_chi2_ndf"] > 0
    assert result.headline["classifier_auc"] is None  # classifier switched off
    assert result.headline["train_iterations"] == 40
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["timings_s"]) == {"simulate", "train", "generate", "evaluate"}
    assert [line.split()[0] for line in lines if line.startswith("[")] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert f"({config} config)" in next(line for line in lines if line.startswith("[2/4]"))


def test_demo_cli_rejects_bad_budgets(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--output", str(tmp_path / "d"), "--minutes", "0"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1


def test_demo_cli_rejects_an_unknown_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--output", str(tmp_path / "d"), "--config", "no-such-demo"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()  # refused before anything was simulated
