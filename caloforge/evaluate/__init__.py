"""Physics validation of generated showers against a reference sample.

The evaluation runs as stages with typed hand-offs (:mod:`~caloforge.evaluate.result`):

* :mod:`~caloforge.evaluate.scan` – one streamed pass per sample → ``SampleSummary``
  (per-shower observables from :mod:`~caloforge.evaluate.features`, pure functions)
* :mod:`~caloforge.evaluate.histograms` – every feature over common bins → ``FeatureHistogram``
* :mod:`~caloforge.evaluate.distances` – E_tot χ², FPD/KPD, memorisation
  (on the pure functions of :mod:`~caloforge.evaluate.metrics`)
* :mod:`~caloforge.evaluate.identity` – the reference file's name, size, shower count and hash
* :mod:`~caloforge.evaluate.classifier` – the CaloChallenge DNN two-sample test
* :mod:`~caloforge.evaluate.suites` – registered observable suites (granular, paper)
* :mod:`~caloforge.evaluate.calochallenge` – the official CaloChallenge protocol's definitions
  (voxel cut, 30-column set, fixed bins, classifier and FPD/KPD settings)
* :func:`compare` (:mod:`~caloforge.evaluate.pipeline`) – the stages composed, one streamed call
* :mod:`~caloforge.evaluate.plots` / :mod:`~caloforge.evaluate.report` – PNGs and ``report.html``,
  on the shared pieces of :mod:`~caloforge.evaluate.render`

Everything loads on first use, so ``import caloforge.evaluate`` stays cheap (no matplotlib, no
torch), and this package imports none of its modules up front.

>>> import caloforge.evaluate as ev
>>> callable(ev.compare), callable(ev.write_report)
(True, True)
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["compare", "write_report", "EvaluationResult", "FeatureHistogram", "register_suite", "features",
           "metrics", "classifier", "calochallenge", "plots", "report", "scan", "histograms", "distances",
           "suites", "result", "render", "identity"]

_SUBMODULES = {"features", "metrics", "classifier", "calochallenge", "plots", "report", "scan", "histograms",
               "distances", "suites", "result", "render", "pipeline", "grid", "paper_observables",
               "granular_observables", "identity"}
# public names → the module defining them
_LAZY = {"compare": "pipeline", "write_report": "report", "EvaluationResult": "result",
         "FeatureHistogram": "result", "register_suite": "suites"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
