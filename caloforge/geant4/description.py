"""The geometry description the Geant4 application reads (text, one token list per line).

Format (version 1)::

    caloforge-geant4 1
    name <geometry name, whitespace replaced by _>
    frame detector|particle
    half_width <mm>
    cut <production cut, mm>
    upstream <n_slabs>
    slab <material> <thickness_mm> <0|1>          (n_slabs lines)
    layers <n_layers>
    layer <z_front_mm> <thickness_mm> <repeats> <n_slabs> <readout>
    slab <material> <thickness_mm> <0|1>          (n_slabs lines after each layer line)
    end

``readout`` is ``none``, ``polar <n_r> <n_alpha> <r_edge_0> ... <r_edge_n_r>`` or
``cartesian <nx> <ny> <cell_x_mm> <cell_y_mm>``.  Numbers are written with ``repr``
precision.  Every layer of the geometry is listed, in order, so layer indices and the
voxel numbering are those of :class:`caloforge.geometry.Geometry`; a zero-thickness
placeholder layer (no material) is written as ``layer <z> 0.0 0 0 none``.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

from caloforge.errors import GeometryError, OutputError
from caloforge.geometry import Geometry, Layer, Slab, load_geometry

__all__ = ["FORMAT_VERSION", "describe_text", "write_description"]

FORMAT_VERSION = 1


def _num(value: float) -> str:
    return repr(float(value))


def _slab_line(slab: Slab) -> str:
    return f"slab {slab.material} {_num(slab.thickness)} {1 if slab.active else 0}"


def _readout(layer: Layer) -> str:
    if layer.n_voxels == 0:
        return "none"
    if layer.kind == "polar":
        edges = " ".join(_num(r) for r in layer.r_edges)
        return f"polar {layer.n_r} {layer.n_alpha} {edges}"
    return f"cartesian {layer.nx} {layer.ny} {_num(layer.cell_x)} {_num(layer.cell_y)}"


def describe_text(geometry: Geometry | str, cut_mm: float = 0.7) -> str:
    """The description of ``geometry`` for the Geant4 application, as text.

    Raises :class:`GeometryError` when a layer with material has no sampling structure
    (:meth:`Geometry.require_sampling`) or the production cut is not a positive length.
    """
    geometry = load_geometry(geometry)
    geometry.require_sampling()
    if isinstance(cut_mm, bool) or not isinstance(cut_mm, (int, float)) or not math.isfinite(cut_mm) or cut_mm <= 0:
        raise GeometryError(f"the Geant4 production cut must be a positive length in mm, got {cut_mm!r}")
    name = re.sub(r"\s+", "_", geometry.name.strip()) or "unnamed"
    lines = [
        f"caloforge-geant4 {FORMAT_VERSION}",
        f"name {name}",
        f"frame {geometry.readout_frame}",
        f"half_width {_num(geometry.half_width)}",
        f"cut {_num(cut_mm)}",
        f"upstream {len(geometry.upstream)}",
        *(_slab_line(s) for s in geometry.upstream),
        f"layers {geometry.n_layers}",
    ]
    for layer in geometry.layers:
        sampling = layer.sampling if layer.thickness > 0 else None
        repeats, slabs = (sampling.repeats, sampling.slabs) if sampling is not None else (0, ())
        lines.append(f"layer {_num(layer.z_front)} {_num(layer.thickness)} {repeats} {len(slabs)} {_readout(layer)}")
        lines.extend(_slab_line(s) for s in slabs)
    lines.append("end")
    return "\n".join(lines) + "\n"


def write_description(geometry: Geometry | str, path: str | Path, cut_mm: float = 0.7) -> Path:
    """Write :func:`describe_text` to ``path`` atomically (temporary file + rename); returns the path."""
    text = describe_text(geometry, cut_mm)
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the Geant4 geometry description ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OutputError(f"{path}: cannot write the Geant4 geometry description ({exc.strerror})") from None
    return path
