"""Voxel layouts of calorimeters and the material stacks behind them.

* :mod:`~caloforge.geometry.model` – :class:`Geometry`, :class:`Layer`, :class:`Slab`,
  :class:`Sampling`, :class:`Material`: the data model and the voxel order
* :mod:`~caloforge.geometry.materials` – :data:`MATERIALS`, effective layer materials by name
* :mod:`~caloforge.geometry.calochallenge_xml` – polar geometries from CaloChallenge binning XML
* :mod:`~caloforge.geometry.user_yaml` – user geometries from YAML, validated
* :mod:`~caloforge.geometry.catalogue` – :data:`GEOMETRIES`, the shipped detectors, and
  :func:`load_geometry` (a name, an ``.xml`` or a ``.yaml`` file)

Example
-------
>>> from caloforge.geometry import load_geometry
>>> g = load_geometry("ds1-photons")
>>> g.n_voxels
368
>>> [layer.n_voxels for layer in g.layers if layer.n_voxels]
[8, 160, 190, 5, 5]
"""

from caloforge.geometry.calochallenge_xml import geometry_from_xml
from caloforge.geometry.catalogue import GEOMETRIES, load_geometry
from caloforge.geometry.materials import MATERIALS
from caloforge.geometry.model import READOUT_FRAMES, Geometry, Layer, Material, Sampling, Slab, with_layers
from caloforge.geometry.user_yaml import geometry_from_dict, geometry_from_yaml

__all__ = [
    "Material",
    "Slab",
    "Sampling",
    "Layer",
    "Geometry",
    "MATERIALS",
    "GEOMETRIES",
    "READOUT_FRAMES",
    "load_geometry",
    "geometry_from_xml",
    "geometry_from_dict",
    "geometry_from_yaml",
    "with_layers",
]
