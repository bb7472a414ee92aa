"""Physical sampling structures (Slab / Sampling) and the Geant4 geometry description."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from caloforge.errors import GeometryError
from caloforge.geant4.description import describe_text, write_description
from caloforge.geometry import (
    GEOMETRIES,
    Geometry,
    Layer,
    Sampling,
    Slab,
    geometry_from_dict,
    geometry_from_yaml,
    load_geometry,
    MATERIALS,
)

# radiation lengths [mm], PDG "Atomic and nuclear properties of materials"
X0_MM = {
    "G4_W": 3.504,
    "G4_Si": 93.7,
    "G4_Pb": 5.612,
    "G4_lAr": 140.0,
    "G4_Fe": 17.57,
    "G4_Cu": 14.36,
    "G4_Al": 88.97,
    "G4_KAPTON": 285.6,
    "G4_POLYSTYRENE": 413.1,
    "G4_AIR": 303900.0,
}


def slabs_x0(slabs) -> float:
    return sum(s.thickness / X0_MM[s.material] for s in slabs)


def layer_x0(layer: Layer) -> float:
    return layer.sampling.repeats * slabs_x0(layer.sampling.slabs) if layer.sampling else 0.0


def total_x0(geo: Geometry) -> float:
    return sum(layer_x0(layer) for layer in geo.layers)


# ----------------------------------------------------------------------------------
# presets
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_every_preset_layer_has_a_structure_that_fills_it(name: str) -> None:
    geo = load_geometry(name)
    geo.require_sampling()
    for layer in geo.layers:
        if layer.thickness == 0:
            continue
        s = layer.sampling
        assert isinstance(s, Sampling), layer.label
        assert s.repeats >= 1
        assert abs(s.thickness - layer.thickness) <= 1e-6, layer.label
        assert math.fsum(s.repeats * slab.thickness for slab in s.slabs) == pytest.approx(layer.thickness, abs=1e-6)
        assert any(slab.active for slab in s.slabs)
        assert all(slab.thickness > 0 and slab.material in X0_MM for slab in s.slabs)
        assert len(s.slabs) <= 64  # the Geant4 application's copy numbers hold 6 bits of slab index
    assert geo.half_width > 0
    assert geo.readout_frame == ("particle" if name in ("ds2", "ds3") else "detector")


def test_ds23_is_par04_two_w_si_pairs_per_readout_layer() -> None:
    for name in ("ds2", "ds3"):
        geo = load_geometry(name)
        assert geo.n_layers == 45 and not geo.upstream
        for layer in geo.layers:
            assert layer.thickness == pytest.approx(3.4)
            assert layer.sampling == Sampling(slabs=(Slab("G4_W", 1.4), Slab("G4_Si", 0.3, active=True)), repeats=2)
        # 90 × (1.4 mm W + 0.3 mm Si) = 36.25 X0
        assert 36.0 < total_x0(geo) < 36.5
        assert "cylinder" in geo.description


@pytest.mark.parametrize(
    "name, low, high",
    [
        ("ds2", 36.0, 36.5),
        ("ds3", 36.0, 36.5),
        ("calogan", 30.5, 31.0),  # 480 mm of 2 mm Pb / 4 mm LAr
        ("atlas-4layer", 21.8, 22.5),  # ATLAS EM barrel at η ≈ 0: ≈ 22 X0
        ("clic", 21.5, 22.5),  # 76 mm of W
        ("clic-angled", 21.5, 22.5),
        ("ild", 24.0, 25.0),  # 20 × 2.1 + 10 × 4.2 mm W
        ("ild-angled", 24.0, 25.0),
    ],
)
def test_total_radiation_lengths(name: str, low: float, high: float) -> None:
    assert low < total_x0(load_geometry(name)) < high


def test_atlas_em_layers_have_the_published_depths() -> None:
    for name, ids in (("atlas-4layer", (0, 1, 2, 3)), ("ds1-photons", (0, 1, 2, 3))):
        geo = load_geometry(name)
        x0 = [layer_x0(next(l for l in geo.layers if l.id == i)) for i in ids]
        assert x0[0] < 0.2  # presampler: a thin LAr layer
        assert 4.0 < x0[1] < 4.5  # strips ≈ 4.3 X0
        assert 15.3 < x0[2] < 16.3  # middle ≈ 16 X0
        assert 1.8 < x0[3] < 2.2  # back ≈ 2 X0
        # 2 X0 of aluminium in front (cryostat + solenoid)
        assert slabs_x0(geo.upstream) == pytest.approx(2.0, abs=0.01)
        assert not any(s.active for s in geo.upstream)
        assert "accordion" in geo.description


def test_atlas_cells_keep_the_nominal_proportions() -> None:
    geo = load_geometry("ds1-pions")
    em = [l for l in geo.layers if l.name.startswith("EMB")]
    tile = [l for l in geo.layers if l.name.startswith("Tile")]
    for layer in em:
        by = {s.material: s.thickness for s in layer.sampling.slabs if not s.active}
        lar = sum(s.thickness for s in layer.sampling.slabs if s.active)
        assert by["G4_Pb"] / lar == pytest.approx(1.53 / 4.2)
        # X0 per mm equals the nominal cell's in every layer
        assert layer.thickness / layer_x0(layer) == pytest.approx(6.43 / 0.32653, rel=1e-3)
    for layer in tile:
        fe = sum(s.thickness for s in layer.sampling.slabs if s.material == "G4_Fe")
        sc = sum(s.thickness for s in layer.sampling.slabs if s.material == "G4_POLYSTYRENE" and s.active)
        assert fe / sc == pytest.approx(14 / 3)
    # Tile A/BC/D are tens of X0 of steel
    assert sum(layer_x0(l) for l in tile) > 60
    # placeholders (end-cap ids) have no material and need no structure
    assert any(l.thickness == 0 and l.sampling is None for l in geo.layers)


def test_calogan_cells_are_2mm_pb_4mm_lar() -> None:
    geo = load_geometry("calogan")
    assert geo.half_width == 240.0
    first, middle, last = (l.sampling for l in geo.layers)
    assert first == Sampling(slabs=(Slab("G4_Pb", 2.0), Slab("G4_lAr", 4.0, active=True)), repeats=15)
    # 347 and 43 mm are not multiples of 6 mm: the nearest number of cells, stretched a little
    for s, n in ((middle, 58), (last, 7)):
        assert s.repeats == n
        pb, lar = s.slabs
        assert pb.material == "G4_Pb" and not pb.active and lar.material == "G4_lAr" and lar.active
        assert lar.thickness == pytest.approx(2 * pb.thickness)
        assert pb.thickness == pytest.approx(2.0, rel=0.025)


def test_structure_agrees_with_the_effective_material_where_they_describe_the_same_stack() -> None:
    # the effective (GFlash) materials were built from these stacks: X0 per layer within 3 %
    for name in ("ds2", "calogan", "atlas-4layer", "ild"):
        geo = load_geometry(name)
        for layer in geo.layers:
            if layer.name == "presampler":  # its effective material folds in upstream material
                continue
            assert layer.thickness / layer.material.X0 == pytest.approx(layer_x0(layer), rel=0.03), (name, layer.label)


# ----------------------------------------------------------------------------------
# dict / YAML
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_presets_round_trip_through_yaml(tmp_path: Path, name: str) -> None:
    geo = load_geometry(name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(geo.to_dict(), allow_unicode=True))
    again = load_geometry(path)
    assert again == geo
    assert again.upstream == geo.upstream and again.half_width == geo.half_width
    assert again.readout_frame == geo.readout_frame
    assert [l.sampling for l in again.layers] == [l.sampling for l in geo.layers]


def test_to_dict_and_describe_keep_their_old_keys() -> None:
    geo = load_geometry("atlas-4layer")
    d = geo.to_dict()
    assert list(d)[:6] == ["name", "description", "particle", "upstream_X0", "materials", "layers"]
    assert {"upstream", "half_width", "readout_frame"} <= set(d)
    old_layer_keys = ["id", "name", "kind", "z_front", "thickness", "material", "sampling_fraction",
                      "sampling_term", "nx", "ny", "cell_x", "cell_y"]
    assert list(d["layers"][0])[: len(old_layer_keys)] == old_layer_keys
    row = geo.describe()[1]
    assert row["X0"] == pytest.approx(84.0 / MATERIALS["atlas-lar-pb"].X0)
    assert row["sampling"].startswith("13 × (")


def test_old_dicts_without_the_new_keys_still_load() -> None:
    geo = load_geometry("ds1-photons")
    d = geo.to_dict()
    for key in ("upstream", "half_width", "readout_frame"):
        del d[key]
    for layer in d["layers"]:
        layer.pop("sampling", None)
    old = geometry_from_dict(d)
    assert old.upstream == () and old.half_width == 1000.0 and old.readout_frame == "detector"
    assert all(l.sampling is None for l in old.layers)
    assert old.n_voxels == geo.n_voxels
    with pytest.raises(GeometryError, match=r"layer 0 \(PreSamplerB\) has no sampling structure"):
        old.require_sampling()


USER_YAML = """\
name: my-siw
readout_frame: particle
half_width: 300
upstream: [{material: G4_Al, thickness: 10}]
layers:
  - thickness: 3.4
    material: w-si-calochallenge
    nx: 4
    ny: 3
    cell_x: 5
    cell_y: 5
    sampling: {repeats: 2, slabs: [{material: G4_W, thickness: 1.4}, {material: G4_Si, thickness: 0.3, active: true}]}
  - name: back
    thickness: 6
    material: w-si-calochallenge
    r_edges: [0, 5, 10]
    n_alpha: 4
    sampling:
      slabs:
        - {material: G4_Pb, thickness: 2}
        - {material: G4_lAr, thickness: 4, active: true}
"""


def test_user_yaml_with_sampling_structure(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(USER_YAML)
    geo = load_geometry(path)
    assert geo.readout_frame == "particle" and geo.half_width == 300.0
    assert geo.upstream == (Slab("G4_Al", 10.0),)
    assert geo.layers[0].sampling == Sampling((Slab("G4_W", 1.4), Slab("G4_Si", 0.3, True)), repeats=2)
    assert geo.layers[1].sampling.repeats == 1 and geo.layers[1].sampling.thickness == 6.0
    geo.require_sampling()
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(geo.to_dict()))
    assert load_geometry(again) == geo


def _user_yaml(**edits) -> str:
    data = yaml.safe_load(USER_YAML)
    for path, value in edits.items():
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        if value is _DELETE:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return yaml.safe_dump(data)


_DELETE = object()


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"layers.0.thickness": 3.5}, "layer 0: the sampling structure is 3.4 mm thick"),
        ({"layers.1.sampling.slabs.1.active": False}, "layer 1: a sampling structure needs at least one active slab"),
        ({"layers.1.sampling.slabs.0.thickness": -2}, "layer 1: slab thickness must be positive"),
        ({"layers.1.sampling.slabs.0.thickness": "thick"}, "layer 1: slab thickness must be a number"),
        ({"layers.0.sampling.repeats": 0}, "layer 0: sampling repeats must be an integer from 1"),
        ({"layers.0.sampling.repeats": 1.5}, "layer 0: sampling repeats must be an integer"),
        ({"layers.0.sampling.slabs.0.material": "W"}, "layer 0: slab material must be a Geant4 NIST name"),
        ({"layers.0.sampling.slabs.0.material": "G4_W foil"}, "slab material must be a Geant4 NIST name"),
        ({"layers.0.sampling.slabs.0.material": 74}, "slab material must be a Geant4 NIST name"),
        ({"layers.0.sampling.slabs.0.colour": "grey"}, "layer 0: unknown slab key(s) ['colour']"),
        ({"layers.0.sampling.slabs.1.active": "yes"}, "layer 0: slab active must be true or false"),
        ({"layers.0.sampling.slabs": []}, "layer 0: sampling slabs must not be empty"),
        ({"layers.0.sampling.slabs": "W"}, "layer 0: sampling slabs must be a list of slabs"),
        ({"layers.0.sampling": [1, 2]}, "layer 0: sampling must be a mapping"),
        ({"layers.0.sampling.layers": 3}, "layer 0: unknown sampling key(s) ['layers']"),
        ({"layers.0.sampling.slabs.0.thickness": _DELETE}, "layer 0: every slab needs 'thickness'"),
        ({"upstream": {"material": "G4_Al"}}, "upstream must be a list of slabs"),
        ({"upstream.0.material": "aluminium"}, "upstream: slab material must be a Geant4 NIST name"),
        ({"half_width": -1}, "half_width must be positive"),
        ({"half_width": "wide"}, "half_width must be a number"),
        ({"readout_frame": "lab"}, "readout_frame must be 'detector' or 'particle'"),
    ],
)
def test_bad_sampling_input_is_one_line_error_naming_file_and_layer(tmp_path: Path, edits: dict, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_user_yaml(**edits))
    with pytest.raises(GeometryError) as info:
        geometry_from_yaml(path)
    text = str(info.value)
    assert message in text
    assert text.startswith(str(path))
    assert "\n" not in text


def test_constructor_validation_names_the_layer() -> None:
    mat = MATERIALS["clic-w-si"]
    cell = Sampling(slabs=(Slab("G4_W", 3.5), Slab("G4_Si", 0.5, active=True)))
    layer = Layer(id=3, kind="cartesian", z_front=0, thickness=4.0, material=mat, name="L3", nx=1, ny=1,
                  cell_x=1, cell_y=1, sampling=cell)
    assert layer.sampling.thickness == 4.0
    with pytest.raises(GeometryError, match=r"^layer 3 \(L3\): the sampling structure is 4 mm thick .* 5 mm$"):
        Layer(id=3, kind="cartesian", z_front=0, thickness=5.0, material=mat, name="L3", nx=1, ny=1,
              cell_x=1, cell_y=1, sampling=cell)
    # within 1e-6 mm is the same thickness
    Layer(id=3, kind="cartesian", z_front=0, thickness=4.0 + 5e-7, material=mat, nx=1, ny=1, cell_x=1, cell_y=1,
          sampling=cell)
    with pytest.raises(GeometryError, match="at least one active slab"):
        Sampling(slabs=(Slab("G4_W", 3.5),))
    with pytest.raises(GeometryError, match="repeats must be an integer >= 1"):
        Sampling(slabs=cell.slabs, repeats=0)
    with pytest.raises(GeometryError, match="positive"):
        Slab("G4_W", 0.0)
    with pytest.raises(GeometryError, match="Geant4 NIST name"):
        Slab("G4_STAINLESS STEEL", 1.0)
    base = load_geometry("clic")
    with pytest.raises(GeometryError, match="readout_frame"):
        Geometry(name="x", layers=base.layers, readout_frame="lab")  # type: ignore[arg-type]
    with pytest.raises(GeometryError, match="half_width"):
        Geometry(name="x", layers=base.layers, half_width=0.0)


def test_require_sampling_message() -> None:
    data = yaml.safe_load(USER_YAML)
    del data["layers"][1]["sampling"]
    geo = geometry_from_dict(data)
    with pytest.raises(GeometryError) as info:
        geo.require_sampling()
    assert str(info.value) == (
        "geometry 'my-siw': layer 1 (back) has no sampling structure: declare `sampling:` "
        "(absorber and active slabs) to simulate it with Geant4"
    )
    with pytest.raises(GeometryError, match="layer 1 \\(back\\) has no sampling structure"):
        describe_text(geo)


# ----------------------------------------------------------------------------------
# the description file
# ----------------------------------------------------------------------------------
def parse_description(text: str) -> dict:
    """A small independent reader of the description format (docs/geant4.md, "The application")."""
    lines = [line.split() for line in text.splitlines()]
    it = iter(lines)

    def take(keyword: str) -> list[str]:
        tokens = next(it)
        assert tokens[0] == keyword, (keyword, tokens)
        return tokens[1:]

    def slab() -> tuple[str, float, bool]:
        material, thickness, active = take("slab")
        assert active in ("0", "1")
        return material, float(thickness), active == "1"

    out: dict = {"version": int(take("caloforge-geant4")[0])}
    out["name"] = " ".join(take("name"))
    out["frame"] = take("frame")[0]
    out["half_width"] = float(take("half_width")[0])
    out["cut"] = float(take("cut")[0])
    out["upstream"] = [slab() for _ in range(int(take("upstream")[0]))]
    out["layers"] = []
    for _ in range(int(take("layers")[0])):
        z, thickness, repeats, n_slabs, kind, *rest = take("layer")
        layer = {"z": float(z), "thickness": float(thickness), "repeats": int(repeats), "kind": kind}
        if kind == "none":
            assert not rest
            layer["voxels"] = 0
        elif kind == "polar":
            n_r, n_alpha, *edges = rest
            assert len(edges) == int(n_r) + 1
            layer.update(voxels=int(n_r) * int(n_alpha), edges=[float(e) for e in edges])
        else:
            assert kind == "cartesian"
            nx, ny, cx, cy = rest
            layer.update(voxels=int(nx) * int(ny), cell=(float(cx), float(cy)))
        layer["slabs"] = [slab() for _ in range(int(n_slabs))]
        out["layers"].append(layer)
    assert take("end") == []
    assert next(it, None) is None
    return out


@pytest.mark.parametrize("name", ["ds1-photons", "ds1-pions", "ds2", "calogan", "atlas-4layer", "clic", "ild-angled"])
def test_description_parses_back(name: str) -> None:
    geo = load_geometry(name)
    parsed = parse_description(describe_text(geo, cut_mm=0.7))
    assert parsed["version"] == 1 and parsed["name"] == geo.name
    assert parsed["frame"] == geo.readout_frame and parsed["half_width"] == geo.half_width
    assert parsed["cut"] == 0.7
    assert parsed["upstream"] == [(s.material, s.thickness, s.active) for s in geo.upstream]
    assert len(parsed["layers"]) == geo.n_layers
    assert sum(layer["voxels"] for layer in parsed["layers"]) == geo.n_voxels
    for p, layer in zip(parsed["layers"], geo.layers):
        assert p["z"] == layer.z_front and p["thickness"] == layer.thickness  # repr(): exact
        assert p["voxels"] == layer.n_voxels
        if layer.thickness > 0:
            assert p["repeats"] * sum(t for _, t, _ in p["slabs"]) == pytest.approx(layer.thickness, abs=1e-6)
            assert [(m, t, a) for m, t, a in p["slabs"]] == [(s.material, s.thickness, s.active)
                                                           for s in layer.sampling.slabs]
        else:
            assert p["repeats"] == 0 and p["slabs"] == []
        if layer.kind == "polar" and layer.n_voxels:
            assert p["edges"] == list(layer.r_edges)


def test_write_description_is_atomic_and_names_are_one_token(tmp_path: Path) -> None:
    data = yaml.safe_load(USER_YAML)
    data["name"] = "my  si w"
    geo = geometry_from_dict(data)
    out = write_description(geo, tmp_path / "geo.txt", cut_mm=1)
    assert out == tmp_path / "geo.txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["geo.txt"]  # no temporary left behind
    parsed = parse_description(out.read_text())
    assert parsed["name"] == "my_si_w" and parsed["cut"] == 1.0
    assert parsed["upstream"] == [("G4_Al", 10.0, False)]
    assert parsed["layers"][1]["kind"] == "polar" and parsed["layers"][1]["voxels"] == 8
    with pytest.raises(GeometryError, match="production cut"):
        describe_text(geo, cut_mm=0)
