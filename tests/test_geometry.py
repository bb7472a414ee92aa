"""Geometry: CaloChallenge XML layouts, Cartesian presets, voxel order, YAML."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from caloforge.errors import GeometryError
from caloforge.geometry import (
    GEOMETRIES,
    Geometry,
    geometry_from_dict,
    geometry_from_xml,
    geometry_from_yaml,
    load_geometry,
)

XML_TOTALS = {
    "binning_dataset_1_photons.xml": 368,
    "binning_dataset_1_pions.xml": 533,
    "binning_dataset_2.xml": 6480,
    "binning_dataset_3.xml": 40500,
}
PRESET_TOTALS = {
    "ds1-photons": 368,
    "ds1-pions": 533,
    "ds2": 6480,
    "ds3": 40500,
    "calogan": 504,
    "atlas-4layer": 266,
    "clic": 25 * 25 * 25,
    "ild": 30 * 30 * 30,
    "clic-angled": 51 * 51 * 25,
    "ild-angled": 30 * 60 * 30,
}


@pytest.mark.parametrize("fname, total", XML_TOTALS.items())
def test_official_xml_voxel_totals(reference_xml_dir: Path, fname: str, total: int) -> None:
    geo = geometry_from_xml(reference_xml_dir / fname)
    assert geo.n_voxels == total


@pytest.mark.parametrize("fname", XML_TOTALS)
def test_package_ships_identical_binning_files(reference_xml_dir: Path, fname: str) -> None:
    from importlib import resources

    shipped = Path(str(resources.files("caloforge") / "data" / "binning" / fname))
    assert shipped.read_bytes() == (reference_xml_dir / fname).read_bytes()


@pytest.mark.parametrize("name, total", PRESET_TOTALS.items())
def test_preset_voxel_totals(name: str, total: int) -> None:
    geo = load_geometry(name)
    assert geo.n_voxels == total
    assert set(GEOMETRIES) == set(PRESET_TOTALS)


def test_ds1_layers_follow_xml_ids_and_empty_layers_have_no_voxels() -> None:
    geo = load_geometry("ds1-photons")
    assert [layer.id for layer in geo.layers] == list(range(24))
    assert [geo.layers[i].id for i in geo.active_layers] == [0, 1, 2, 3, 12]
    assert [layer.n_voxels for layer in geo.layers if layer.n_voxels] == [8, 160, 190, 5, 5]
    # slices are contiguous, empty layers get empty slices
    starts = [s.start for s in geo.layer_slices]
    assert starts[:5] == [0, 8, 168, 358, 363]
    assert geo.layer_slices[4].start == geo.layer_slices[4].stop == 363
    assert geo.layer_slices[12] == slice(363, 368)
    # material still there behind the empty readout ids of the barrel (Tile BC, D)
    assert geo.layers[13].thickness > 0 and geo.layers[13].n_voxels == 0


def test_polar_voxel_order_alpha_outer_r_inner() -> None:
    geo = load_geometry("ds1-photons")
    layer = geo.layers[1]  # 10 α × 16 r
    r_edges = np.asarray(layer.r_edges)
    r_mid = 0.5 * (r_edges[1:] + r_edges[:-1])
    a_edges = np.linspace(-math.pi, math.pi, 11)
    a_mid = 0.5 * (a_edges[1:] + a_edges[:-1])
    x, y = layer.voxel_centers()
    for index in (0, 1, 15, 16, 17, 159):
        i_a, i_r = divmod(index, 16)
        assert np.hypot(x[index], y[index]) == pytest.approx(r_mid[i_r])
        assert np.arctan2(y[index], x[index]) == pytest.approx(a_mid[i_a])
    # a single α bin puts the centre on the x axis (CaloChallenge: α = 0)
    x0, y0 = geo.layers[0].voxel_centers()
    np.testing.assert_allclose(y0, 0.0, atol=1e-12)
    np.testing.assert_allclose(x0, [2.5, 7.5, 20, 40, 75, 150, 300, 500])


def test_voxel_centers_cover_all_voxels_with_layer_depths() -> None:
    geo = load_geometry("ds1-pions")
    c = geo.voxel_centers
    for key in ("x", "y", "z", "r", "alpha"):
        assert c[key].shape == (geo.n_voxels,)
    for pos, s in zip(range(geo.n_layers), geo.layer_slices):
        np.testing.assert_allclose(c["z"][s], geo.layers[pos].z_center)
    np.testing.assert_array_equal(geo.voxel_layer[geo.layer_slices[12]], 12)


@pytest.mark.parametrize("name", ["ds1-photons", "calogan", "atlas-4layer", "ds2"])
def test_locate_inverts_voxel_centers(name: str) -> None:
    for layer in load_geometry(name).layers:
        if not layer.n_voxels:
            continue
        x, y = layer.voxel_centers()
        np.testing.assert_array_equal(layer.locate(x, y), np.arange(layer.n_voxels))
        far = layer.outer_radius * 3 + 1
        assert layer.locate(np.array([far]), np.array([far]))[0] == -1


@pytest.mark.parametrize("name", ["ds1-photons", "calogan", "clic"])
def test_voxel_areas_tile_the_readout(name: str) -> None:
    geo = load_geometry(name)
    for layer, s in zip(geo.layers, geo.layer_slices):
        if not layer.n_voxels:
            continue
        total = geo.voxel_areas[s].sum()
        if layer.kind == "polar":
            assert total == pytest.approx(math.pi * layer.r_edges[-1] ** 2)
        else:
            assert total == pytest.approx(layer.nx * layer.cell_x * layer.ny * layer.cell_y)


def test_cartesian_presets_have_the_published_cell_layouts() -> None:
    assert [layer.shape for layer in load_geometry("calogan").layers] == [(3, 96), (12, 12), (12, 6)]
    atlas = load_geometry("atlas-4layer")
    assert [(l.name, l.nx, l.ny) for l in atlas.layers] == [
        ("presampler", 7, 3), ("strips", 56, 3), ("middle", 7, 7), ("back", 4, 7)
    ]
    clic = load_geometry("clic")
    assert clic.n_layers == 25 and all(l.shape == (25, 25) and l.cell_x == 5.0 for l in clic.layers)
    ild = load_geometry("ild")
    assert ild.n_layers == 30 and all(l.shape == (30, 30) and l.cell_x == 5.0 for l in ild.layers)
    # CaloGAN: every layer spans the same 480 × 480 mm face
    for layer in load_geometry("calogan").layers:
        assert layer.nx * layer.cell_x == pytest.approx(480.0)
        assert layer.ny * layer.cell_y == pytest.approx(480.0)


@pytest.mark.parametrize("name", list(PRESET_TOTALS))
def test_every_layer_has_material_and_depth_order(name: str) -> None:
    geo = load_geometry(name)
    for a, b in zip(geo.layers, geo.layers[1:]):
        assert b.z_front >= a.z_front + a.thickness - 1e-9
    for layer in geo.layers:
        m = layer.material
        assert m.X0 > 0 and m.lambda_I > m.X0 and m.moliere_radius > 0 and m.critical_energy > 0
        assert 0 < layer.sampling_fraction <= 1
    # EM calorimeters: enough radiation lengths to contain an EM shower
    x0 = sum(l.thickness / l.material.X0 for l in geo.layers)
    assert x0 > 20


def test_split_join_round_trip_and_layer_energy(rng: np.random.Generator) -> None:
    for name in ("ds1-pions", "atlas-4layer"):
        geo = load_geometry(name)
        showers = rng.random((4, geo.n_voxels))
        parts = geo.split(showers)
        assert len(parts) == geo.n_layers
        for part, layer in zip(parts, geo.layers):
            assert part.shape == (4, *layer.shape)
        np.testing.assert_array_equal(geo.join(parts), showers)
        np.testing.assert_array_equal(geo.join([parts[i] for i in geo.active_layers]), showers)
        e_layer = geo.layer_energy(showers)
        np.testing.assert_allclose(e_layer.sum(axis=1), showers.sum(axis=1))
        np.testing.assert_allclose(e_layer[:, geo.active_layers[0]], parts[geo.active_layers[0]].sum(axis=(1, 2)))
    with pytest.raises(GeometryError, match="369 voxels per shower"):
        load_geometry("ds1-photons").split(np.zeros((1, 369)))


def test_yaml_round_trip(tmp_path: Path) -> None:
    for name in ("atlas-4layer", "ds1-photons"):
        geo = load_geometry(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(geo.to_dict(), allow_unicode=True))
        again = load_geometry(path)
        assert isinstance(again, Geometry)
        assert again == geo


def test_user_yaml_minimal(tmp_path: Path) -> None:
    path = tmp_path / "mine.yml"
    path.write_text(
        "name: my-ecal\n"
        "materials:\n"
        "  pbwo4: {Z: 68.4, X0: 8.9, lambda_I: 200, moliere_radius: 21.9, critical_energy: 9.6}\n"
        "layers:\n"
        "  - {thickness: 20, material: pbwo4, nx: 5, ny: 4, cell_x: 22, cell_y: 22}\n"
        "  - {thickness: 200, material: pbwo4, r_edges: [0, 10, 30, 60], n_alpha: 8}\n"
    )
    geo = load_geometry(path)
    assert geo.name == "my-ecal"
    assert geo.n_voxels == 20 + 24
    assert geo.layers[1].kind == "polar" and geo.layers[1].z_front == 20
    assert geo.layers[0].material.X0 == 8.9


@pytest.mark.parametrize(
    "text, message",
    [
        ("layers: []\n", "'layers' must be a non-empty list"),
        ("layers:\n  - {thickness: 5, material: unobtainium, nx: 2, ny: 2, cell_x: 1, cell_y: 1}\n", "unknown material"),
        ("layers:\n  - {thickness: 5, material: clic-w-si, nx: 2, ny: 2, cell_x: 1, cell_y: 1, colour: red}\n",
         "unknown key"),
        ("layers:\n  - {material: clic-w-si, nx: 2, ny: 2, cell_x: 1, cell_y: 1}\n", "'thickness' is required"),
        ("layers:\n  - {thickness: 5, material: clic-w-si, nx: 0, ny: 2, cell_x: 1, cell_y: 1}\n", "nx, ny >= 1"),
        ("layers: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_is_one_line_error_naming_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(GeometryError) as info:
        geometry_from_yaml(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_xml_and_unknown_names(tmp_path: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text("<Bins><Bin><Layer id='0'")
    with pytest.raises(GeometryError, match="broken.xml: not a valid binning XML"):
        load_geometry(broken)
    nobin = tmp_path / "nobin.xml"
    nobin.write_text("<Other/>")
    with pytest.raises(GeometryError, match="no <Bin> element"):
        load_geometry(nobin)
    with pytest.raises(GeometryError, match="no such file"):
        load_geometry(tmp_path / "missing.xml")
    with pytest.raises(GeometryError, match="unknown geometry 'atlas'"):
        load_geometry("atlas")


def test_geometry_from_dict_rejects_overlapping_layers() -> None:
    data = {
        "layers": [
            {"thickness": 10, "material": "clic-w-si", "nx": 1, "ny": 1, "cell_x": 1, "cell_y": 1},
            {"thickness": 10, "z_front": 5, "material": "clic-w-si", "nx": 1, "ny": 1, "cell_x": 1, "cell_y": 1},
        ]
    }
    with pytest.raises(GeometryError, match="overlaps"):
        geometry_from_dict(data)
