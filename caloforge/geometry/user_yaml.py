"""User geometries from YAML or plain data, validated field by field.

YAML gives any type anywhere, so every value is checked before a :class:`Layer` or
:class:`Slab` sees it, and every error names the file, the layer and the key.
"""

from __future__ import annotations

import math
from pathlib import Path

from caloforge.errors import GeometryError
from caloforge.geometry.materials import MATERIALS
from caloforge.geometry.model import G4_MATERIAL, READOUT_FRAMES, Geometry, Layer, Material, Sampling, Slab

__all__ = ["geometry_from_dict", "geometry_from_yaml"]


_LAYER_KEYS = set(Layer.__dataclass_fields__)
_MATERIAL_KEYS = {"Z", "X0", "lambda_I", "moliere_radius", "critical_energy"}


_INT_FIELDS = {"id", "n_alpha", "nx", "ny"}
_FLOAT_FIELDS = {"z_front", "thickness", "sampling_fraction", "sampling_term", "cell_x", "cell_y"}
_MAX_LAYER_BINS = 10**7  # per layer: beyond this a typo, not a calorimeter


def _number(where: str, key: str, value, integer: bool = False, positive: bool = False):
    """A finite number (an integer with ``integer``) from YAML, or GeometryError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GeometryError(f"{where}: {key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise GeometryError(f"{where}: {key} must be finite, got {value}")
    if positive and value <= 0:
        raise GeometryError(f"{where}: {key} must be positive, got {value}")
    if integer:
        if value != int(value) or abs(value) > _MAX_LAYER_BINS:
            raise GeometryError(f"{where}: {key} must be an integer up to {_MAX_LAYER_BINS}, got {value}")
        return int(value)
    return float(value)


def _text(where: str, key: str, value) -> str:
    if isinstance(value, (dict, list)):
        raise GeometryError(f"{where}: {key} must be text, got {value!r}")
    return "" if value is None else str(value)


def _layer_spec(where: str, raw: dict) -> dict:
    """A layer mapping with every field of the right type (YAML gives anything)."""
    spec = dict(raw)
    for key in _INT_FIELDS & set(spec):
        spec[key] = _number(where, key, spec[key], integer=True)
    for key in _FLOAT_FIELDS & set(spec):
        spec[key] = _number(where, key, spec[key])
    if "name" in spec:
        spec["name"] = _text(where, "name", spec["name"])
    if "kind" in spec and spec["kind"] not in ("polar", "cartesian"):
        raise GeometryError(f"{where}: kind must be 'polar' or 'cartesian', not {spec['kind']!r}")
    if "r_edges" in spec:
        edges = spec["r_edges"]
        if not isinstance(edges, list) or len(edges) > _MAX_LAYER_BINS:
            raise GeometryError(f"{where}: r_edges must be a list of radii in mm, got {edges!r}")
        spec["r_edges"] = tuple(_number(where, "r_edges", v) for v in edges)
    if spec.get("nx", 0) * spec.get("ny", 0) > _MAX_LAYER_BINS or spec.get("n_alpha", 1) * len(
            spec.get("r_edges", ())) > _MAX_LAYER_BINS:
        raise GeometryError(f"{where}: more than {_MAX_LAYER_BINS} voxels in one layer")
    if spec.get("sampling") is not None:
        spec["sampling"] = _sampling_spec(where, spec["sampling"])
    return spec


_SLAB_KEYS = {"material", "thickness", "active"}
_MAX_SLABS = 100_000  # slabs in one cell / repeats of a layer: beyond this a typo


def _slab_spec(where: str, raw) -> Slab:
    """One ``{material: G4_W, thickness: 1.4, active: false}`` mapping → :class:`Slab`."""
    if not isinstance(raw, dict):
        raise GeometryError(f"{where}: a slab must be a mapping like {{material: G4_W, thickness: 1.4}}, got {raw!r}")
    unknown = set(raw) - _SLAB_KEYS
    if unknown:
        raise GeometryError(f"{where}: unknown slab key(s) {sorted(unknown)} (use material, thickness, active)")
    for key in ("material", "thickness"):
        if key not in raw:
            raise GeometryError(f"{where}: every slab needs '{key}'")
    material = raw["material"]
    if not isinstance(material, str) or not G4_MATERIAL.match(material):
        raise GeometryError(f"{where}: slab material must be a Geant4 NIST name like G4_W, not {material!r}")
    thickness = _number(where, "slab thickness", raw["thickness"], positive=True)
    active = raw.get("active", False)
    if not isinstance(active, bool):
        raise GeometryError(f"{where}: slab active must be true or false, got {active!r}")
    return Slab(material=material, thickness=thickness, active=active)


def _slab_list(where: str, raw, key: str) -> tuple[Slab, ...]:
    if not isinstance(raw, list) or len(raw) > _MAX_SLABS:
        raise GeometryError(f"{where}: {key} must be a list of slabs ({{material, thickness, active}}), got {raw!r}")
    return tuple(_slab_spec(where, item) for item in raw)


def _sampling_spec(where: str, raw) -> Sampling:
    """``{repeats: 2, slabs: [...]}`` → :class:`Sampling` (errors name ``where``)."""
    if isinstance(raw, Sampling):
        return raw
    if not isinstance(raw, dict):
        raise GeometryError(f"{where}: sampling must be a mapping {{repeats: N, slabs: [...]}}, got {raw!r}")
    unknown = set(raw) - {"repeats", "slabs"}
    if unknown:
        raise GeometryError(f"{where}: unknown sampling key(s) {sorted(unknown)} (use repeats, slabs)")
    if "slabs" not in raw:
        raise GeometryError(f"{where}: sampling needs 'slabs'")
    slabs = _slab_list(where, raw["slabs"], "sampling slabs")
    if not slabs:
        raise GeometryError(f"{where}: sampling slabs must not be empty")
    repeats = _number(where, "sampling repeats", raw.get("repeats", 1), integer=True)
    if repeats < 1 or repeats > _MAX_SLABS:
        raise GeometryError(f"{where}: sampling repeats must be an integer from 1 to {_MAX_SLABS}, got {repeats}")
    try:
        return Sampling(slabs=slabs, repeats=repeats)
    except GeometryError as exc:
        raise GeometryError(f"{where}: {exc}") from None


def geometry_from_dict(data: dict, where: str = "geometry") -> Geometry:
    """Build a :class:`Geometry` from plain data (the form :meth:`Geometry.to_dict` writes).

    Layers may omit ``z_front`` (stacked one after another) and ``id`` (numbered in
    order); materials are given by name from :data:`MATERIALS` or defined in a
    ``materials:`` block.  For the Geant4 engine a layer may declare its physical
    ``sampling:`` structure (``{repeats: N, slabs: [{material: G4_W, thickness: 1.4},
    {material: G4_Si, thickness: 0.3, active: true}]}``, N cells summing to the layer's
    thickness), and the geometry its ``upstream:`` slabs, ``half_width`` [mm] and
    ``readout_frame`` (``detector`` or ``particle``).
    """
    if not isinstance(data, dict):
        raise GeometryError(f"{where}: expected a mapping at the top level")
    unknown = set(data) - {"name", "description", "particle", "upstream_X0", "materials", "layers",
                           "upstream", "half_width", "readout_frame"}
    if unknown:
        raise GeometryError(f"{where}: unknown key(s) {sorted(unknown)}")
    materials = dict(MATERIALS)
    user_materials = data.get("materials") or {}
    if not isinstance(user_materials, dict):
        raise GeometryError(f"{where}: 'materials' must be a mapping of name → properties")
    for mname, props in user_materials.items():
        if not isinstance(props, dict) or set(props) != _MATERIAL_KEYS:
            raise GeometryError(f"{where}: material {mname!r} needs exactly {sorted(_MATERIAL_KEYS)}")
        mname = _text(where, "material name", mname)
        materials[mname] = Material(name=mname, **{k: _number(f"{where}: material {mname!r}", k, v, positive=True)
                                                   for k, v in props.items()})
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise GeometryError(f"{where}: 'layers' must be a non-empty list")
    layers = []
    z = 0.0
    for i, raw in enumerate(raw_layers):
        if not isinstance(raw, dict):
            raise GeometryError(f"{where}: layer {i} must be a mapping")
        unknown = set(raw) - _LAYER_KEYS
        if unknown:
            raise GeometryError(f"{where}: layer {i}: unknown key(s) {sorted(unknown)}")
        spec = _layer_spec(f"{where}: layer {i}", raw)
        spec.setdefault("id", i)
        spec.setdefault("z_front", z)
        mname = spec.get("material")
        if not isinstance(mname, str) or mname not in materials:
            raise GeometryError(f"{where}: layer {i}: unknown material {mname!r}")
        spec["material"] = materials[mname]
        if "thickness" not in spec:
            raise GeometryError(f"{where}: layer {i}: 'thickness' is required")
        if "kind" not in spec:
            spec["kind"] = "polar" if "r_edges" in spec else "cartesian"
        if "r_edges" in spec:
            spec["r_edges"] = tuple(float(v) for v in spec["r_edges"])
        try:
            layer = Layer(**spec)
        except TypeError as exc:
            raise GeometryError(f"{where}: layer {i}: {exc}") from None
        except GeometryError as exc:  # name the file too
            raise GeometryError(f"{where}: {exc}") from None
        layers.append(layer)
        z = layer.z_front + layer.thickness
    upstream = _slab_list(f"{where}: upstream", data.get("upstream") or [], "upstream")
    half_width = _number(where, "half_width", data.get("half_width", 1000.0), positive=True)
    readout_frame = data.get("readout_frame", "detector")
    if readout_frame not in READOUT_FRAMES:
        raise GeometryError(f"{where}: readout_frame must be 'detector' or 'particle', not {readout_frame!r}")
    try:
        return Geometry(
            name=_text(where, "name", data.get("name")) or "custom",
            layers=tuple(layers),
            upstream_X0=_number(where, "upstream_X0", data.get("upstream_X0", 0.0)),
            description=_text(where, "description", data.get("description")),
            particle=_text(where, "particle", data.get("particle")),
            source=where,
            upstream=upstream,
            half_width=half_width,
            readout_frame=readout_frame,
        )
    except GeometryError as exc:
        raise GeometryError(exc.args[0] if str(exc).startswith(where) else f"{where}: {exc}") from None


def geometry_from_yaml(path: str | Path) -> Geometry:
    """Read a user geometry from YAML (see :func:`geometry_from_dict` for the schema).

    Example file::

        name: my-ecal
        layers:
          - {thickness: 3.5, material: clic-w-si, nx: 10, ny: 10, cell_x: 5, cell_y: 5}
          - {thickness: 3.5, material: clic-w-si, r_edges: [0, 5, 10, 20], n_alpha: 8}

    With the physical structure the Geant4 engine needs::

        name: my-siw
        upstream: [{material: G4_Al, thickness: 10}]
        layers:
          - thickness: 3.4
            material: w-si-calochallenge
            nx: 10
            ny: 10
            cell_x: 5
            cell_y: 5
            sampling:
              repeats: 2
              slabs: [{material: G4_W, thickness: 1.4}, {material: G4_Si, thickness: 0.3, active: true}]
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise GeometryError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise GeometryError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return geometry_from_dict(data, where=str(path))
