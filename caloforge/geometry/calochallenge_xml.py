"""Polar geometries from CaloChallenge binning XML files.

A binning file lists, per layer id, the radial bin edges ``r_edges`` [mm] and the
number of α bins ``n_bin_alpha``; depths and materials come from a separate stack.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

from caloforge.errors import GeometryError
from caloforge.geometry.materials import MATERIALS
from caloforge.geometry.model import Geometry, Layer

__all__ = ["read_xml_layers", "geometry_from_xml"]


def read_xml_layers(path: Path) -> tuple[str, list[tuple[int, tuple[float, ...], int]]]:
    """(particle name, ``(layer id, r_edges, n_alpha)`` per layer in id order) of a binning file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise GeometryError(f"{path}: not a valid binning XML file ({exc})") from None
    except OSError as exc:
        raise GeometryError(f"{path}: cannot read ({exc.strerror})") from None
    bins = root.findall("Bin")
    if not bins:
        raise GeometryError(f"{path}: no <Bin> element (is this a CaloChallenge binning file?)")
    particle = bins[0].attrib.get("name", "")
    layers = []
    for el in bins[0].findall("Layer"):
        try:
            lid = int(el.attrib["id"])
            r_edges = tuple(float(s) for s in el.attrib["r_edges"].split(","))
            n_alpha = int(el.attrib.get("n_bin_alpha", "1"))
        except (KeyError, ValueError) as exc:
            raise GeometryError(f"{path}: malformed <Layer> element ({exc})") from None
        layers.append((lid, r_edges, n_alpha))
    layers.sort(key=lambda t: t[0])  # CaloChallenge orders voxels by layer id
    return particle, layers


def geometry_from_xml(
    path: str | Path,
    name: str | None = None,
    stack: Sequence[dict] | None = None,
    upstream_X0: float = 0.0,
    description: str = "",
) -> Geometry:
    """Build a polar geometry from a CaloChallenge binning XML file.

    ``stack`` gives per-layer depth/material (dicts with ``z_front``, ``thickness``,
    ``material``, ``sampling_fraction``, ``sampling_term``, ``name``), in layer-id
    order.  Without it every layer gets 1 X0 of the W–Si mixture, so a user's XML
    works out of the box.
    """
    path = Path(path)
    particle, xml_layers = read_xml_layers(path)
    if stack is not None and len(stack) != len(xml_layers):
        raise GeometryError(f"{path}: {len(xml_layers)} layers in the XML but {len(stack)} in the material stack")
    layers = []
    z = 0.0
    default = MATERIALS["w-si-calochallenge"]
    for i, (lid, r_edges, n_alpha) in enumerate(xml_layers):
        spec = dict(stack[i]) if stack is not None else {}
        material = spec.pop("material", default)
        if isinstance(material, str):
            material = MATERIALS[material]
        thickness = spec.pop("thickness", material.X0)
        z_front = spec.pop("z_front", z)
        layers.append(
            Layer(
                id=lid,
                kind="polar",
                z_front=z_front,
                thickness=thickness,
                material=material,
                r_edges=r_edges if len(r_edges) > 1 else (),
                n_alpha=n_alpha,
                **spec,
            )
        )
        z = z_front + thickness
    return Geometry(
        name=name or path.stem,
        layers=tuple(layers),
        upstream_X0=upstream_X0,
        description=description,
        particle=particle,
        source=str(path),
    )
