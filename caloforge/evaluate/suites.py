"""Observable suites: groups of observables that apply to some geometries, registered by name.

A suite adds its own section to the metrics (``metrics[suite.key]``, ``None`` where it does not
apply), to the plots and to the report, behind one interface (:class:`ObservableSuite`):

* ``applies(geometry, data)`` – whether it has anything to say about this pair of samples;
* ``compute(source, data)`` – one pass over one sample → the suite's own summary of it;
* ``compare(reference, generated, data)`` – two summaries → a JSON-safe metrics section;
* ``plot(section, geometry, out_dir, labels)`` – PNGs → ``(section, title, file name)`` rows;
* ``html(section, plots, out_dir)`` – the report section, its plots embedded.

Built in: ``granular`` (3DGAN / BIB-AE, :mod:`caloforge.evaluate.granular_observables`) and
``paper`` (CaloGAN / ATLAS GAN, :mod:`caloforge.evaluate.paper_observables`).  A new suite is a
class with these members, passed to :func:`register_suite`.  Built-in suites load on first
use, so importing this module stays cheap.

>>> [s.key for s in registered_suites()]
['granular', 'paper']
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from caloforge.geometry import Geometry
from caloforge.io import ShowerData

__all__ = ["SuiteInputs", "ObservableSuite", "PlotRow", "register_suite", "registered_suites", "run_suites"]

ShowerSource = ShowerData | str | Path
PlotRow = tuple[str, str, str]  # (section, title, file name)


@dataclass(frozen=True)
class SuiteInputs:
    """What every suite may read: the samples (files are streamed or loaded by the suite itself),
    the geometry and the evaluation's limits."""

    reference: ShowerSource
    generated: ShowerSource
    geometry: Geometry
    training: ShowerSource | None = None
    max_showers: int | None = None
    chunk_size: int | None = None
    seed: int = 0


class ObservableSuite(Protocol):
    """The interface of a suite (see the module docstring)."""

    key: str  # its section of the metrics
    title: str  # progress step and report heading

    def applies(self, geometry: Geometry, data: SuiteInputs) -> bool: ...

    def compute(self, source: ShowerSource, data: SuiteInputs) -> Any: ...

    def compare(self, reference: Any, generated: Any, data: SuiteInputs) -> dict[str, Any] | None: ...

    def plot(self, section: Mapping[str, Any], geometry: Geometry | str, out_dir: Path,
             labels: Sequence[str]) -> list[PlotRow]: ...

    def html(self, section: Mapping[str, Any] | None, plots: Sequence[PlotRow], out_dir: Path | None) -> str: ...


# name → the suite, or "module:attribute" of a built-in one (imported on first use)
_REGISTRY: dict[str, ObservableSuite | str] = {
    "granular": "caloforge.evaluate.granular_observables:SUITE",
    "paper": "caloforge.evaluate.paper_observables:SUITE",
}


def register_suite(suite: ObservableSuite, *, replace: bool = False) -> ObservableSuite:
    """Add ``suite`` under ``suite.key``; its section then appears in every later evaluation."""
    if suite.key in _REGISTRY and not replace:
        raise ValueError(f"an observable suite {suite.key!r} is already registered")
    _REGISTRY[suite.key] = suite
    return suite


def registered_suites() -> list[ObservableSuite]:
    """Every registered suite, in registration order."""
    out = []
    for key, entry in list(_REGISTRY.items()):
        if isinstance(entry, str):
            module, attribute = entry.split(":")
            entry = _REGISTRY[key] = getattr(importlib.import_module(module), attribute)
        out.append(entry)
    return out


def run_suites(data: SuiteInputs, step: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Every suite's metrics section (``None`` where it does not apply).  ``step(title, key=key)``,
    when given, returns a context manager around each suite's work (progress and timing)."""
    from contextlib import nullcontext

    sections: dict[str, Any] = {}
    for suite in registered_suites():
        if not suite.applies(data.geometry, data):
            sections[suite.key] = None
            continue
        with step(suite.title, key=suite.key) if step is not None else nullcontext():
            sections[suite.key] = suite.compare(suite.compute(data.reference, data),
                                                suite.compute(data.generated, data), data)
    return sections
