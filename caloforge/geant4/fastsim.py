"""caloforge models inside Geant4: the fast-simulation model of ``caloforge-g4-fast``.

:func:`resolve_fast_model` turns what a user gives ``--fast-model`` (a TorchScript export,
or a run directory / checkpoint, exported to TorchScript once into the cache) into an
export file, after checking its metadata against the simulated geometry.  The C++ side
(``app/FastShowerModel.*``, ``inference/caloforge_inference.*``) is described in
``docs/deployment-geant4.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

from caloforge.errors import ConfigError, DataError
from caloforge.geometry import Geometry

from .build import cache_dir

__all__ = ["resolve_fast_model", "read_torchscript_metadata", "FAST_CONDITIONS"]

# what a Geant4 track gives the model (the C++ side refuses anything else, with one line)
FAST_CONDITIONS = ("incident_energy", "incident_theta", "incident_phi", "impact_x", "impact_y")


def read_torchscript_metadata(path: str | Path) -> dict:
    """The caloforge metadata (``caloforge.json``) of a TorchScript export, read from the zip without torch."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith("/extra/caloforge.json"))
            return json.loads(z.read(name))
    except (OSError, zipfile.BadZipFile, StopIteration, ValueError, KeyError):
        raise DataError(f"{path}: not a caloforge TorchScript export (export one with "
                        "`caloforge export RUN --format torchscript`)") from None


def _export_cached(source: Path) -> Path:
    """A run directory or checkpoint exported to TorchScript in the cache, keyed by the checkpoint's bytes."""
    from caloforge import checkpoint
    from caloforge.export import export_model

    try:
        directory = checkpoint.model_dir(source)
    except Exception as exc:  # noqa: BLE001 - any unreadable run is one line
        raise ConfigError(f"--fast-model {source}: not a TorchScript export, run directory or checkpoint "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    digest = hashlib.sha256()
    for f in sorted(Path(directory).rglob("*")):
        if f.is_file():
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
    out = cache_dir() / "fastsim" / f"{digest.hexdigest()[:20]}.pt"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        export_model(source, "torchscript", out)
    return out


def resolve_fast_model(model: str | Path, geometry: Geometry) -> Path:
    """The TorchScript export to run in Geant4 for ``model`` (an export, run directory or checkpoint), checked
    against ``geometry`` (ConfigError, one line, when it was trained on another)."""
    path = Path(model).expanduser()
    if not path.exists():
        raise ConfigError(f"--fast-model {model}: no such file or directory")
    export = path if path.is_file() and zipfile.is_zipfile(path) and path.suffix == ".pt" else _export_cached(path)
    meta = read_torchscript_metadata(export)
    if meta.get("geometry") != geometry.name or int(meta.get("n_voxels", -1)) != geometry.n_voxels:
        raise ConfigError(f"--fast-model {model} was trained on geometry {meta.get('geometry')!r} "
                          f"({meta.get('n_voxels')} voxels), not on the simulated {geometry.name!r} "
                          f"({geometry.n_voxels} voxels)")
    missing = [c for c in meta.get("condition_names", []) if c not in FAST_CONDITIONS]
    if missing:
        raise ConfigError(f"--fast-model {model} is conditioned on {', '.join(missing)}, which a Geant4 track does "
                          f"not give (supported: {', '.join(FAST_CONDITIONS)})")
    return Path(os.path.abspath(export))
