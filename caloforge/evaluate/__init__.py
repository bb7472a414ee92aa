"""Physics validation of generated showers against a reference sample.

* :mod:`~caloforge.evaluate.features` – per-shower observables (pure functions)
* :mod:`~caloforge.evaluate.metrics` – separation power, χ², FPD/KPD, memorisation
* :mod:`~caloforge.evaluate.classifier` – the CaloChallenge DNN two-sample test
* :mod:`~caloforge.evaluate.calochallenge` – the official CaloChallenge protocol's definitions
  (voxel cut, 30-column set, fixed bins, classifier and FPD/KPD settings)
* :mod:`~caloforge.evaluate.compare` – :func:`compare`: everything in one streamed call
* :mod:`~caloforge.evaluate.plots` / :mod:`~caloforge.evaluate.report` – PNGs and ``report.html``

Submodules load on first use, so ``import caloforge.evaluate`` stays cheap (no
matplotlib, no torch).

>>> import caloforge.evaluate as ev
>>> callable(ev.compare), callable(ev.write_report)
(True, True)
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["compare", "write_report", "EvaluationResult", "features", "metrics", "classifier", "calochallenge",
           "plots", "report"]

# compare.py needs only numpy/h5py; importing it here also makes ``caloforge.evaluate.compare``
# the function (the name would otherwise be bound to the submodule on its first import).
from caloforge.evaluate.compare import EvaluationResult, compare  # noqa: E402

_SUBMODULES = {"features", "metrics", "classifier", "calochallenge", "plots", "report"}
_LAZY = {"write_report": "report"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
