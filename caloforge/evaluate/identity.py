"""Which sample an evaluation compared against: a record that lets two reports say whether they
share a reference (``metrics.json`` → ``reference_file``).

A file is named by its base name, its size in bytes, its shower count and a SHA-256 of its
bytes (streamed: a DS3-sized file costs seconds, not memory); an in-memory sample has no name or
size and is hashed over its incident energies and voxels.  Two records describe the same
reference when their hashes agree (:func:`same_reference`).

>>> import numpy as np
>>> from caloforge.io import ShowerData
>>> a = sample_identity(ShowerData(np.array([1.0, 2.0]), np.ones((2, 368))))
>>> a["n_showers"], a["name"], len(a["sha256"])
(2, None, 64)
>>> same_reference(a, dict(a)), same_reference(a, {**a, "sha256": "0" * 64})
(True, False)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from caloforge.io import ShowerData, count_showers

__all__ = ["sample_identity", "same_reference", "describe_reference"]

_BLOCK = 1 << 22  # 4 MiB reads: hashing stays bounded in memory whatever the file size


def sample_identity(source: ShowerData | str | Path) -> dict[str, Any]:
    """``{"name", "size_bytes", "n_showers", "sha256"}`` of a shower file or an in-memory sample."""
    digest = hashlib.sha256()
    if isinstance(source, ShowerData):
        for array in (source.incident_energy, source.showers):
            digest.update(np.ascontiguousarray(array).tobytes())
        return {"name": None, "size_bytes": None, "n_showers": len(source), "sha256": digest.hexdigest()}
    path = Path(source)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return {"name": path.name, "size_bytes": path.stat().st_size, "n_showers": count_showers(path),
            "sha256": digest.hexdigest()}


def same_reference(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two identity records name the same sample: equal hashes (names may differ: a copy
    of the file under another name is the same reference)."""
    return bool(a.get("sha256")) and a.get("sha256") == b.get("sha256")


def describe_reference(identity: Mapping[str, Any] | None) -> str:
    """A short label for messages: ``name (N showers, sha256 1a2b3c4d…)``.

    >>> describe_reference({"name": "ref.h5", "n_showers": 10, "sha256": "ab" * 32})
    'ref.h5 (10 showers, sha256 abababab…)'
    >>> describe_reference(None)
    'no recorded reference'
    """
    if not identity:
        return "no recorded reference"
    name = identity.get("name") or "an in-memory sample"
    return f"{name} ({identity.get('n_showers')} showers, sha256 {str(identity.get('sha256'))[:8]}…)"
