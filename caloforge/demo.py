"""The end-to-end demo: simulate → train → generate → evaluate on the embedded default.

``make demo`` runs :func:`run_demo` through ``caloforge demo``.  It uses the reference
simulator's ``ds1-photons`` preset (a DS1-photon-like set, scaled down so it fits the
time budget), trains the shipped ``demo-flow-matching.yaml`` config (the network of
``flow-matching-photons``, the CPU recommendation) for a fixed number of iterations,
picks the best checkpoint by the config's ``training.select_by`` score (the held-out
flow-matching loss), generates as many showers as the held-out reference, and writes
the evaluation report.  ``config="demo"`` runs the CaloShowerGAN demo instead (best
checkpoint by the total-energy χ²).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["DEFAULT_CONFIG", "DemoResult", "run_demo"]

DEFAULT_CONFIG = "demo-flow-matching"  # the shipped config the demo trains unless told otherwise


@dataclass
class DemoResult:
    report: Path
    headline: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(
    output: str | Path = "demo-run",
    *,
    scale: float = 0.1,
    holdout_scale: float = 0.05,
    max_iterations: int | None = None,
    safety_minutes: float = 20.0,
    classifier: bool = True,
    config: str | Path = DEFAULT_CONFIG,
    threads: int | None = 1,
    classifier_epochs: int = 5,
    seed: int = 0,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> DemoResult:
    """Run the whole chain into ``output`` and return the report path and headline numbers.

    ``scale`` / ``holdout_scale`` shrink the DS1-photon per-energy counts of the training
    and held-out reference sets (1.0 = the full ≈121k showers).  ``config`` is a shipped
    config name or a YAML path; ``max_iterations`` overrides its iteration budget and
    ``safety_minutes`` caps the training time (a warning is logged when it fires).
    ``classifier_epochs`` trains the official CaloChallenge classifier for that many of its 50
    epochs (the report says so).  ``threads`` sets torch's intra-op threads for training: the demo network is small
    enough that one thread beats two on a 2-core machine (the second mostly waits on
    synchronisation).
    """
    from caloforge import io
    from caloforge.models import load_config
    from caloforge.errors import ConfigError
    from caloforge.evaluate import compare
    from caloforge.evaluate.report import write_report
    from caloforge.generate import generate, load_model
    from caloforge.simulate import simulate_preset
    from caloforge.train import train

    if not safety_minutes > 0 or not 0 < scale <= 1 or not 0 < holdout_scale <= 1:  # before minutes of simulation
        raise ConfigError("--minutes must be > 0 and --scale / --holdout-scale in (0, 1]")
    if max_iterations is not None and max_iterations <= 0:
        raise ConfigError(f"--iterations must be positive, got {max_iterations}")
    cfg = load_config(config)
    iterations = max_iterations or cfg.training.max_iterations
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - t0

    # 1. reference showers: an independent held-out set for the final comparison
    train_file, holdout_file = out / "reference_train.h5", out / "reference_holdout.h5"
    log(f"[1/4] simulating DS1-photon-like reference showers (scale {scale} + held-out {holdout_scale})")
    with timed("simulate"):
        train_data = simulate_preset("ds1-photons", seed=seed, scale=scale, progress=progress)
        io.write_showers(train_file, train_data.incident_energy, train_data.showers, train_data.conditions)
        holdout = simulate_preset("ds1-photons", seed=seed + 1, scale=holdout_scale, progress=progress)
        io.write_showers(holdout_file, holdout.incident_energy, holdout.showers, holdout.conditions)
    log(f"      {len(train_data)} training showers → {train_file}, {len(holdout)} held out → {holdout_file}")

    # 2. train a fixed number of iterations; the best checkpoint is chosen by the config's select_by score
    log(f"[2/4] training {cfg.model.name} ({config} config) for {iterations} iterations")
    with timed("train"):
        result = train(cfg, train_data, out / "run", max_time=safety_minutes * 60.0, max_iterations=iterations,
                       progress=progress, seed=seed, threads=threads)
    if result.best_checkpoint is None:
        raise RuntimeError(f"training produced no scored checkpoint ({result.stopped})")
    if result.stopped == "max_time":
        log(f"      warning: the {safety_minutes:g}-minute safety limit stopped training after "
            f"{result.iterations} of {iterations} iterations; the numbers below differ from the README's")
    log(f"      {result.iterations} iterations, best checkpoint {result.best_checkpoint} "
        f"(iteration {result.best_iteration}, {_score_text(cfg.training.select_by, result.best_score)})")

    # 3. generate as many showers as the held-out reference, same energies
    log(f"[3/4] generating {len(holdout)} showers with the best checkpoint")
    with timed("generate"):
        generated = generate(load_model(result.best_checkpoint), holdout.incident_energy, seed=seed)
        io.write_showers(out / "generated.h5", generated.incident_energy, generated.showers)

    # 4. evaluate against the held-out reference
    log("[4/4] evaluating generated vs held-out reference" + (" (with classifier test)" if classifier else ""))
    with timed("evaluate"):
        # the CaloChallenge protocol (numbers to read against the published table), with the official
        # 2 × 2048 classifier trained for DEMO_CLASSIFIER_EPOCHS of its 50 epochs: 50 are a GPU-sized job
        evaluation = compare(holdout, generated, "ds1-photons", classifier=classifier, seed=seed, training=train_data,
                             protocol="calochallenge", classifier_settings={"epochs": classifier_epochs})
        report = write_report(evaluation, out / "report")

    headline = dict(evaluation.headline)
    headline["classifier_epochs"] = classifier_epochs if classifier else None
    headline["train_iterations"] = result.iterations
    headline["best_iteration"] = result.best_iteration
    with io.atomic_path(out / "demo_summary.json") as tmp:
        tmp.write_text(json.dumps({"headline": headline, "timings_s": timings}, indent=2))
    return DemoResult(report=Path(report), headline=headline, timings=timings)


def _score_text(select_by: str, score: float) -> str:
    """The best checkpoint's selection score as the summary prints it."""
    if select_by == "chi2_etot":
        return f"E_tot χ² {score:.1f}"
    label = {"val_loss": "held-out loss", "val_nll": "held-out NLL"}.get(select_by, select_by)
    return f"{label} {score:.4f}"
