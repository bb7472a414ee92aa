"""The geometries caloforge ships, by name, and :func:`load_geometry`.

Each entry of :data:`GEOMETRIES` builds one detector: the CaloChallenge datasets
(binning XML + material stack), CaloGAN, an ATLAS-like EM barrel, CLIC and ILD ECALs.
Every readout layer carries both its effective :class:`Material` (parametrised
engines) and its physical :class:`Sampling` slabs (Geant4 engine).
"""

from __future__ import annotations

import math
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from caloforge.errors import GeometryError
from caloforge.geometry.calochallenge_xml import geometry_from_xml, read_xml_layers
from caloforge.geometry.materials import MATERIALS
from caloforge.geometry.model import Geometry, Layer, Sampling, Slab
from caloforge.geometry.user_yaml import geometry_from_yaml

__all__ = ["GEOMETRIES", "load_geometry"]


def _binning_file(fname: str) -> Path:
    """A CaloChallenge binning XML shipped as package data (``caloforge/data/binning``)."""
    return Path(str(resources.files("caloforge") / "data" / "binning" / fname))


# Physical sampling structures (for the Geant4 engine).  Each readout layer keeps the
# thickness of its effective-material description (MATERIALS); the slabs below fill it.
# Materials are Geant4 NIST names; "*" in Sampling.describe() marks the active slabs.


def _fill(thickness: float, cell: Sequence[Slab]) -> Sampling:
    """The nominal ``cell`` repeated to fill ``thickness`` exactly.

    The number of cells is the nearest integer to thickness / cell; every slab is then
    scaled by the same factor (within a few per cent of 1), so the material ratios,
    hence the X0 per mm and the sampling fraction, stay those of the nominal cell.
    """
    nominal = math.fsum(s.thickness for s in cell)
    n = max(1, round(thickness / nominal))
    scale = thickness / (n * nominal)
    return Sampling(slabs=tuple(replace(s, thickness=s.thickness * scale) for s in cell), repeats=n)


# --- ATLAS barrel at |η| < 0.8, flattened ------------------------------------------
# The real EM barrel is an accordion: lead absorbers folded in zig-zags so that the
# sampling is uniform in φ, with the particle crossing absorbers and gaps obliquely;
# the path length inside each sampling layer differs from its radial depth.  Here every
# layer is a stack of flat slabs at normal incidence, which has the accordion's volume
# fractions, hence the same X0 per mm on average, but not its local zig-zag structure.
# Facts (ATLAS LAr TDR, CERN/LHCC 96-41; ATLAS detector paper, JINST 3 S08003):
#   absorber at |η| < 0.8: 1.53 mm Pb clad with 0.2 mm stainless steel on each side
#   (G4_Fe stands in for the steel: the NIST name G4_STAINLESS-STEEL is not a plain name;
#   the 0.15 mm of glue is left out); the 4.5 mm between absorbers is two 2.1 mm LAr drift
#   gaps on either side of the Cu/kapton readout electrode (~0.3 mm, here all G4_KAPTON).
#   Cell 6.43 mm → 0.3265 X0, i.e. X0_eff ≈ 19.7 mm (the effective atlas-lar-pb uses 19.5):
#   strips 84 mm ≈ 4.3 X0, middle 312 mm ≈ 15.8 X0, back 39 mm ≈ 2.0 X0, as ATLAS quotes.
_ATLAS_EM_CELL = (
    Slab("G4_Fe", 0.2), Slab("G4_Pb", 1.53), Slab("G4_Fe", 0.2),
    Slab("G4_lAr", 2.1, active=True), Slab("G4_KAPTON", 0.3), Slab("G4_lAr", 2.1, active=True),
)
# Presampler: an 11 mm LAr layer read out by electrodes (parallel to the particle in the
# real detector); modelled as 1 mm of passive electrode/support (G4_KAPTON for the FR4)
# in front of 10 mm of active LAr.  The cryostat and solenoid in front are `upstream`.
_ATLAS_PRESAMPLER_CELL = (Slab("G4_KAPTON", 1.0), Slab("G4_lAr", 10.0, active=True))
# Tile calorimeter: steel / plastic scintillator, 14 mm : 3 mm per period (volume ratio
# 4.7 : 1, ATLAS Tile TDR CERN/LHCC 96-42).  The real tiles are planes perpendicular to the
# beam, so a particle at η ≈ 0.2 runs almost along them; here they are flat slabs across
# its path with the same steel : scintillator ratio.
_ATLAS_TILE_CELL = (Slab("G4_Fe", 14.0), Slab("G4_POLYSTYRENE", 3.0, active=True))
# In front of the presampler at η ≈ 0.2: inner cryostat wall + solenoid ≈ 2 X0, modelled
# as 2 X0 of aluminium (X0(Al) = 88.97 mm, PDG).  The outer cryostat between EMB3 and
# Tile is not modelled (vacuum), nor is anything between the presampler and the strips.
_ATLAS_UPSTREAM = (Slab("G4_Al", 2 * 88.97),)
_ATLAS_NOTE = ("; Geant4: flat Pb/LAr and Fe/scintillator slabs at normal incidence instead of the accordion "
               "and the tiles (same material per mm on average), 2 X0 of Al upstream")


def _atlas_ds1_stack(n_layers: int) -> list[dict]:
    """ATLAS barrel at |η| ≈ 0.2: presampler, EMB1-3, (empty end-cap ids), Tile A/BC/D."""
    lar, ps, tile = MATERIALS["atlas-lar-pb"], MATERIALS["atlas-presampler"], MATERIALS["atlas-tile-fe-scint"]
    # depths [mm] measured from the presampler front; EMB ≈ 4.3 + 16 + 2 X0,
    # Tile A/BC/D ≈ 1.5 / 4.1 / 1.8 λ_I.  The gap between EMB3 and Tile holds the cryostat.
    barrel = {
        0: dict(name="PreSamplerB", z_front=0.0, thickness=11.0, material=ps, sampling_fraction=0.25, sampling_term=0.3),
        1: dict(name="EMB1", z_front=40.0, thickness=84.0, material=lar, sampling_fraction=0.18, sampling_term=0.10),
        2: dict(name="EMB2", z_front=124.0, thickness=312.0, material=lar, sampling_fraction=0.18, sampling_term=0.10),
        3: dict(name="EMB3", z_front=436.0, thickness=39.0, material=lar, sampling_fraction=0.18, sampling_term=0.10),
        12: dict(name="TileBar0", z_front=800.0, thickness=310.0, material=tile, sampling_fraction=0.034, sampling_term=0.28),
        13: dict(name="TileBar1", z_front=1110.0, thickness=850.0, material=tile, sampling_fraction=0.034, sampling_term=0.28),
        14: dict(name="TileBar2", z_front=1960.0, thickness=370.0, material=tile, sampling_fraction=0.034, sampling_term=0.28),
    }
    cells = {ps.name: _ATLAS_PRESAMPLER_CELL, lar.name: _ATLAS_EM_CELL, tile.name: _ATLAS_TILE_CELL}
    for spec in barrel.values():
        spec["sampling"] = _fill(spec["thickness"], cells[spec["material"].name])
    stack = []
    z = 0.0
    for lid in range(n_layers):
        if lid in barrel:
            spec = barrel[lid]
            z = spec["z_front"] + spec["thickness"]
        else:
            # end-cap / HEC ids are not crossed in the barrel: zero-thickness placeholders
            z_next = min((s["z_front"] for k, s in barrel.items() if k > lid), default=z)
            spec = dict(name=f"unused{lid}", z_front=z_next if lid > 3 else z, thickness=0.0, material=lar)
        stack.append(spec)
    # zero-thickness placeholders must not sit inside a real layer
    z_prev = 0.0
    for spec in stack:
        spec["z_front"] = max(spec["z_front"], z_prev)
        z_prev = spec["z_front"] + spec["thickness"]
    return stack


def _ds1(particle: str) -> Geometry:
    path = _binning_file(f"binning_dataset_1_{particle}.xml")
    n_layers = len(read_xml_layers(path)[1])
    geo = geometry_from_xml(
        path,
        name=f"ds1-{particle}",
        stack=_atlas_ds1_stack(n_layers),
        upstream_X0=2.0,
        description=f"CaloChallenge dataset 1 ({particle}): ATLAS barrel at |η|≈0.2, LAr/Pb EM + Fe/scint Tile"
                    + _ATLAS_NOTE,
    )
    # the outermost radial bins of the ds1 binning reach r = 2000 mm: slabs as wide as that
    return replace(geo, upstream=_ATLAS_UPSTREAM, half_width=2000.0)


def _ds23(number: int) -> Geometry:
    path = _binning_file(f"binning_dataset_{number}.xml")
    mat = MATERIALS["w-si-calochallenge"]
    n_layers = len(read_xml_layers(path)[1])
    # each readout layer = 2 × (1.4 mm W + 0.3 mm Si): 3.4 mm; the sampling fraction is the
    # CaloChallenge's own (its files are the Si energy divided by 0.033)
    # Physical structure: Geant4's Par04 example, the detector of CaloChallenge datasets 2/3
    # (CaloChallenge 2022 dataset description; Geant4 examples/extended/parameterisations/Par04):
    # a cylinder of inner radius 80 cm made of 90 sub-layers alternating 1.4 mm W (absorber)
    # and 0.3 mm Si (active), read out in 45 layers of two sub-layers each, in the particle's
    # frame.  45 × 2 × (1.4/3.504 + 0.3/93.7) ≈ 36.2 X0.  Flat slabs approximate the cylinder.
    cell = Sampling(slabs=(Slab("G4_W", 1.4), Slab("G4_Si", 0.3, active=True)), repeats=2)
    stack = [
        dict(name=f"L{i}", z_front=3.4 * i, thickness=3.4, material=mat, sampling_fraction=0.033, sampling_term=0.17,
             sampling=cell)
        for i in range(n_layers)
    ]
    geo = geometry_from_xml(
        path,
        name=f"ds{number}",
        stack=stack,
        description=f"CaloChallenge dataset {number}: 45 Si-W layers (1.4 mm W / 0.3 mm Si pairs), electrons; "
                    f"Geant4: flat slabs approximate Par04's cylinder (inner radius 80 cm)",
    )
    return replace(geo, readout_frame="particle")


def _cartesian(name: str, specs: Sequence[dict], description: str, upstream_X0: float = 0.0,
               **geometry_fields) -> Geometry:
    layers = []
    z = 0.0
    for i, spec in enumerate(specs):
        spec = dict(spec)
        spec.setdefault("z_front", z)
        if isinstance(spec["material"], str):
            spec["material"] = MATERIALS[spec["material"]]
        layers.append(Layer(id=i, kind="cartesian", **spec))
        z = spec["z_front"] + spec["thickness"]
    return Geometry(name=name, layers=tuple(layers), upstream_X0=upstream_X0, description=description,
                    **geometry_fields)


# CaloGAN's GEANT4 detector (Paganini, de Oliveira, Nachman, PRL 120 (2018) 042003 and
# PRD 97 (2018) 014021): a 480 mm cube of lead absorber and liquid-argon active medium,
# 2 mm Pb + 4 mm LAr per sampling cell, read out in layers 90 / 347 / 43 mm deep.
# 90 mm = 15 cells exactly; 347 and 43 mm are not multiples of 6 mm, so those layers hold
# 58 cells of 5.983 mm and 7 cells of 6.143 mm, Pb : LAr kept at 1 : 2 (_fill: < 2.5 % off
# the nominal 2 / 4 mm, same X0 per mm and sampling fraction).  A partial last cell would
# need the whole layer spelt out slab by slab (116 slabs), more than the Geant4
# application's 64 slabs per cell.
# Cell: 2/5.612 + 4/140 = 0.385 X0 → 30.8 X0 in all (the effective calogan-pb-lar: 480/15.6).
_CALOGAN_CELL = (Slab("G4_Pb", 2.0), Slab("G4_lAr", 4.0, active=True))


def _calogan() -> Geometry:
    # CaloGAN (Paganini et al. 2017): 480 × 480 mm LAr/Pb block, 3 layers of 90 / 347 / 43 mm
    common = dict(material="calogan-pb-lar", sampling_fraction=0.2, sampling_term=0.10)
    return _cartesian(
        "calogan",
        [
            dict(name="layer_0", thickness=90.0, nx=96, ny=3, cell_x=5.0, cell_y=160.0,
                 sampling=_fill(90.0, _CALOGAN_CELL), **common),
            dict(name="layer_1", thickness=347.0, nx=12, ny=12, cell_x=40.0, cell_y=40.0,
                 sampling=_fill(347.0, _CALOGAN_CELL), **common),
            dict(name="layer_2", thickness=43.0, nx=6, ny=12, cell_x=80.0, cell_y=40.0,
                 sampling=_fill(43.0, _CALOGAN_CELL), **common),
        ],
        "CaloGAN 3-layer LAr/Pb sampling calorimeter (3×96, 12×12, 12×6 cells)",
        half_width=240.0,  # the 480 mm cube: showers leak out of its sides as in CaloGAN
    )


def _atlas_4layer() -> Geometry:
    # ATLAS EM barrel images: Δη×Δφ cells projected at r ≈ 1.5 m (Δη 0.025 ≈ 37.5 mm, Δφ 0.1 ≈ 150 mm)
    lar, ps = "atlas-lar-pb", "atlas-presampler"
    return _cartesian(
        "atlas-4layer",
        [
            dict(name="presampler", z_front=0.0, thickness=11.0, nx=7, ny=3, cell_x=37.5, cell_y=150.0,
                 material=ps, sampling_fraction=0.25, sampling_term=0.3,
                 sampling=_fill(11.0, _ATLAS_PRESAMPLER_CELL)),
            dict(name="strips", z_front=40.0, thickness=84.0, nx=56, ny=3, cell_x=4.6875, cell_y=150.0,
                 material=lar, sampling_fraction=0.18, sampling_term=0.10, sampling=_fill(84.0, _ATLAS_EM_CELL)),
            dict(name="middle", thickness=312.0, nx=7, ny=7, cell_x=37.5, cell_y=37.5,
                 material=lar, sampling_fraction=0.18, sampling_term=0.10, sampling=_fill(312.0, _ATLAS_EM_CELL)),
            dict(name="back", thickness=39.0, nx=4, ny=7, cell_x=75.0, cell_y=37.5,
                 material=lar, sampling_fraction=0.18, sampling_term=0.10, sampling=_fill(39.0, _ATLAS_EM_CELL)),
        ],
        "ATLAS-like EM barrel: presampler 7×3, strips 56×3, middle 7×7, back 4×7 (266 cells)" + _ATLAS_NOTE,
        upstream_X0=2.0,
        upstream=_ATLAS_UPSTREAM,
    )


# 3DGAN's CLIC ECAL (Khattak, Vallecorsa et al., ACAT 2019: "1.5 m inner radius, 5 mm × 5 mm
# segmentation: 25 tungsten absorber layers + silicon sensors").  The paper gives no
# thicknesses; the CLIC detector model with those numbers (CLIC NDM ECAL barrel, CERN twiki
# CLIC/ClicNDM_ECal: inner r 1500 mm, 5.1 mm Si pads, 25 layers: 17 × 2.4 mm W then
# 8 × 4.8 mm W, ≈ 23 X0) sets the absorbers; 0.5 mm Si sensors as in CLICdet (CLICdp-Note-2017-001).
# The preset keeps its 25 uniform 5 mm readout layers, so:
#   front 17 layers: 2.4 W + 0.5 Si* + 0.2 G4_KAPTON (PCB) + 0.1 G4_Cu (traces) + 1.8 G4_AIR (gap)
#   back 8 layers:   4.4 W + 0.5 Si* + 0.1 G4_KAPTON — the W is 4.4 mm, not 4.8, to fit 5 mm.
# Total W 76 mm (as CLICdet's 40 × 1.9 mm); ≈ 22.0 X0 (the effective clic-w-si says 25).
_CLIC_FRONT = (Slab("G4_W", 2.4), Slab("G4_Si", 0.5, active=True), Slab("G4_KAPTON", 0.2), Slab("G4_Cu", 0.1),
               Slab("G4_AIR", 1.8))
_CLIC_BACK = (Slab("G4_W", 4.4), Slab("G4_Si", 0.5, active=True), Slab("G4_KAPTON", 0.1))


def _clic_layers(n: int) -> list[dict]:
    return [
        dict(name=f"L{i}", thickness=5.0, nx=n, ny=n, cell_x=5.0, cell_y=5.0,
             material="clic-w-si", sampling_fraction=0.013, sampling_term=0.17,
             sampling=Sampling(slabs=_CLIC_FRONT if i < 17 else _CLIC_BACK))
        for i in range(25)
    ]


def _clic() -> Geometry:
    return _cartesian(
        "clic",
        _clic_layers(25),
        "CLIC-like Si-W ECAL: 25 layers of 25×25 cells, 5 mm pitch (≈25 X0)",
    )


# BIB-AE's ILD Si-W ECAL (McKeown et al. 2023: "30 layers of alternating active (Si) and
# passive (W) material, 5×5 mm² silicon cells").  ILD's ECAL model (ILD LoI / DBD, ILD_l5):
# 20 layers with 2.1 mm W, then 10 with 4.2 mm W, 0.5 mm Si sensors; the rest of each
# readout layer (1.3 mm) is the slab's PCB, copper and air: 0.8 mm G4_KAPTON (FR4 stand-in),
# 0.1 mm G4_Cu, 0.4 mm G4_AIR.  3.9 = 2.1 + 1.8 and 6.0 = 4.2 + 1.8 mm; ≈ 24.4 X0.
_ILD_SERVICES = (Slab("G4_Si", 0.5, active=True), Slab("G4_KAPTON", 0.8), Slab("G4_Cu", 0.1), Slab("G4_AIR", 0.4))


def _ild() -> Geometry:
    specs = []
    for i in range(30):
        front = i < 20  # ILD: 20 layers with 2.1 mm W, then 10 with 4.2 mm W
        specs.append(
            dict(
                name=f"L{i}",
                thickness=3.9 if front else 6.0,
                nx=30,
                ny=30,
                cell_x=5.0,
                cell_y=5.0,
                material="ild-w-si-front" if front else "ild-w-si-back",
                sampling_fraction=0.012 if front else 0.007,
                sampling_term=0.17,
                sampling=Sampling(slabs=(Slab("G4_W", 2.1 if front else 4.2), *_ILD_SERVICES)),
            )
        )
    return _cartesian("ild", specs, "ILD-like Si-W ECAL: 30 layers of 30×30 cells, 5 mm pitch (≈24 X0)")


def _clic_angled() -> Geometry:
    # 3DGAN's angled CLIC sample (Vallecorsa et al., ACAT 2019): electrons at 60°–120° need a
    # wider transverse window, 51 × 51 cells of 5 mm, over the same 25 layers
    return _cartesian(
        "clic-angled",
        _clic_layers(51),
        "CLIC-like Si-W ECAL for inclined showers: 25 layers of 51×51 cells, 5 mm pitch (≈25 X0)",
    )


def _ild_angled() -> Geometry:
    # The BIB-AE multi-parameter grid (McKeown et al. 2023): angled photons projected onto
    # (x, y, z) = (30, 60, 30) cells; the polar angle tilts the shower along y (60 cells)
    base = _ild()
    layers = tuple(replace(layer, nx=30, ny=60) for layer in base.layers)
    return replace(base, name="ild-angled", layers=layers,
                   description="ILD-like Si-W ECAL for inclined photons: 30 layers of 60 (y) × 30 (x) cells, "
                               "5 mm pitch (≈24 X0); the polar angle tilts showers along y")


# name → a builder of the geometry (built on demand: the XML presets read files)
GEOMETRIES: dict[str, Callable[[], Geometry]] = {
    "ds1-photons": lambda: _ds1("photons"),
    "ds1-pions": lambda: _ds1("pions"),
    "ds2": lambda: _ds23(2),
    "ds3": lambda: _ds23(3),
    "calogan": _calogan,
    "atlas-4layer": _atlas_4layer,
    "clic": _clic,
    "ild": _ild,
    "clic-angled": _clic_angled,
    "ild-angled": _ild_angled,
}


def load_geometry(spec: str | Path | Geometry) -> Geometry:
    """A preset name, a CaloChallenge ``.xml`` file or a ``.yaml`` file → :class:`Geometry`."""
    if isinstance(spec, Geometry):
        return spec
    text = str(spec)
    if text in GEOMETRIES:
        return GEOMETRIES[text]()
    path = Path(text)
    if path.suffix.lower() == ".xml":
        if not path.exists():
            raise GeometryError(f"{path}: no such file")
        return geometry_from_xml(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        if not path.exists():
            raise GeometryError(f"{path}: no such file")
        return geometry_from_yaml(path)
    raise GeometryError(f"unknown geometry {text!r}: use one of {', '.join(GEOMETRIES)} or a .xml/.yaml file")
