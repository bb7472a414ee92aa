"""The published CaloChallenge 2022 final results, shipped as package data.

``caloforge/data/calochallenge_2022_final_results.csv``: one row per model and dataset
(``ds1_photons``, ``ds1_pions``, ``ds2``, ``ds3``), with FPD/KPD ×10³, low- and high-level
classifier AUCs and ms per shower at batch 1, 100 and 10 000 on CPU and GPU.

>>> rows = published_entries("ds1-photons")
>>> len(rows) > 5, rows[0].published, all(r.ms_per_shower_b10000 is None or r.ms_per_shower_b10000 > 0 for r in rows)
(True, True, True)
"""

from __future__ import annotations

import csv
from pathlib import Path

from caloforge.leaderboard.entry import Entry

__all__ = ["PUBLISHED_CSV", "DATASETS", "published_entries"]

PUBLISHED_CSV = Path(__file__).resolve().parents[1] / "data" / "calochallenge_2022_final_results.csv"
# caloforge's geometry names → the table's dataset names
DATASETS = {"ds1-photons": "ds1_photons", "ds1-pions": "ds1_pions", "ds2": "ds2", "ds3": "ds3"}


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def published_entries(dataset: str, timing: str = "cpu", path: Path = PUBLISHED_CSV) -> list[Entry]:
    """The table's rows for ``dataset`` (a key of :data:`DATASETS`), timings on ``timing``
    (``cpu`` or ``gpu``); the GEANT4 row (Geant4 against itself) is kept: it is the floor."""
    table_name = DATASETS[dataset]
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["dataset"] != table_name:
                continue
            params = _number(row.get("params_generation"))
            out.append(Entry(
                name=row["model"], published=True, parameters=None if params is None else int(params),
                auc_low=_number(row.get("auc_low_level")), auc_high=_number(row.get("auc_high_level")),
                fpd_x1e3=_number(row.get("fpd_x1e3")), kpd_x1e3=_number(row.get("kpd_x1e3")),
                ms_per_shower_b1=_number(row.get(f"ms_per_shower_{timing}_b1")),
                ms_per_shower_b10000=_number(row.get(f"ms_per_shower_{timing}_b10000")),
                timing=f"published, {timing}", protocol="calochallenge", geometry=dataset))
    return out
