"""The Pareto front of (cost, quality) points where lower is better on both axes.

>>> pareto_mask([(1.0, 0.9), (10.0, 0.6), (5.0, 0.95), (None, 0.1)])
[True, True, False, False]
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["pareto_mask", "dominates"]

Point = tuple[float | None, float | None]


def _usable(p: Point) -> bool:
    return all(v is not None and math.isfinite(v) for v in p)


def dominates(a: Point, b: Point) -> bool:
    """``a`` is no worse than ``b`` on both axes and better on one.

    >>> dominates((1, 1), (1, 2)), dominates((1, 1), (1, 1)), dominates((0, 2), (1, 1))
    (True, False, False)
    """
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])  # type: ignore[operator]


def pareto_mask(points: Sequence[Point]) -> list[bool]:
    """Which points no other point dominates; a point with a missing or non-finite value is never
    on the front (it cannot be placed).  Equal points are both on it."""
    usable = [p for p in points if _usable(p)]
    return [_usable(p) and not any(dominates(q, p) for q in usable) for p in points]
