"""One row of a leaderboard: a model's quality and cost, with where each number came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Entry", "COLUMNS"]

# leaderboard.csv's columns, in order (the Markdown and HTML tables show a subset)
COLUMNS = ("name", "published", "family", "parameters", "training_minutes", "training_device", "auc_low",
           "auc_high", "fpd_x1e3", "kpd_x1e3", "etot_chi2_ndf", "ms_per_shower_b1", "ms_per_shower_b10000",
           "timing", "protocol", "pareto_auc", "pareto_fpd", "report", "run", "bench")


@dataclass
class Entry:
    """A caloforge model (``published=False``) or a published CaloChallenge 2022 entry.

    Quality: classifier AUCs (0.5: indistinguishable), FPD and KPD ×10³, E_tot χ²/ndf — lower is
    better for all.  Cost: ms per shower at batch 1 and 10 000 (``timing`` says which path and
    device), parameters, training minutes on ``training_device`` (``cpu`` or ``gpu``).
    """

    name: str
    published: bool = False
    family: str | None = None
    parameters: int | None = None
    training_minutes: float | None = None
    training_device: str | None = None
    auc_low: float | None = None
    auc_high: float | None = None
    fpd_x1e3: float | None = None
    kpd_x1e3: float | None = None
    etot_chi2_ndf: float | None = None
    ms_per_shower_b1: float | None = None
    ms_per_shower_b10000: float | None = None
    timing: str | None = None  # e.g. "onnxruntime, cpu" (the fastest timed path) or "published, cpu"
    protocol: str | None = None  # the evaluation protocol ("calochallenge" numbers compare with the table)
    pareto_auc: bool = False  # on the front of AUC (low level) vs ms/shower at batch 10 000
    pareto_fpd: bool = False  # on the front of FPD vs ms/shower at batch 10 000
    report: Path | None = None
    run: Path | None = None
    bench: Path | None = None
    geometry: str | None = None
    reference: dict[str, Any] | None = field(default=None, repr=False)  # metrics.json "reference_file"

    def row(self) -> dict[str, Any]:
        """The CSV row: :data:`COLUMNS`, paths as strings, flags as 0/1, missing values as ``None``."""
        out: dict[str, Any] = {}
        for key in COLUMNS:
            value = getattr(self, key)
            out[key] = int(value) if isinstance(value, bool) else (str(value) if isinstance(value, Path) else value)
        return out
