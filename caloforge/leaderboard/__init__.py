"""Pick a model: one table and one Pareto plot of quality against cost for every model evaluated on
the same reference file, next to the published CaloChallenge 2022 entries of that dataset.

* :mod:`~caloforge.leaderboard.sources` – reports, runs and bench JSON files → entries
* :mod:`~caloforge.leaderboard.published` – the published table (package data)
* :mod:`~caloforge.leaderboard.pareto` – the Pareto front (lower is better on both axes)
* :mod:`~caloforge.leaderboard.write` – ``leaderboard.{csv,md,png,html}``
* :func:`build_leaderboard` (:mod:`~caloforge.leaderboard.build`) – all of it, one call

See ``docs/leaderboard.md``.
"""

from __future__ import annotations

from caloforge.leaderboard.build import Leaderboard, build_leaderboard
from caloforge.leaderboard.entry import Entry

__all__ = ["Leaderboard", "Entry", "build_leaderboard"]
