"""Shower files: round trips, streaming, atomic writes and every validation error."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from caloforge.errors import DataError
from caloforge.geometry import load_geometry
from caloforge.io import (
    ShowerData,
    ShowerWriter,
    count_showers,
    detect_format,
    iter_showers,
    read_showers,
    summarize,
    write_calogan,
    write_showers,
)


def _showers(rng: np.random.Generator, n: int, n_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    energy = 2.0 ** rng.integers(8, 13, size=n).astype(float)
    showers = rng.exponential(1.0, size=(n, n_voxels)) * (rng.random((n, n_voxels)) < 0.3)
    return energy, showers.astype(np.float32)


def _raw_file(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
    return path


# ----------------------------------------------------------------------------------
def test_calochallenge_round_trip_with_conditions(tmp_path: Path, rng) -> None:
    energy, showers = _showers(rng, 50, 368)
    theta = rng.uniform(0.5, 1.5, 50)
    path = tmp_path / "a.h5"
    write_showers(path, energy, showers, conditions={"incident_theta": theta}, attrs={"producer": "test"})
    with h5py.File(path) as f:  # on-disk layout of the CaloChallenge format
        assert f["incident_energies"].shape == (50, 1)
        assert f["showers"].shape == (50, 368)
        assert f["incident_theta"].shape == (50, 1)
        assert f.attrs["producer"] == "test"
    data = read_showers(path, geometry="ds1-photons")
    np.testing.assert_array_equal(data.incident_energy, energy)
    np.testing.assert_array_equal(data.showers, showers)
    np.testing.assert_array_equal(data.conditions["incident_theta"], theta)
    assert detect_format(path) == "calochallenge" and count_showers(path) == 50
    part = read_showers(path, start=10, stop=20)
    np.testing.assert_array_equal(part.showers, showers[10:20])


def test_calogan_round_trip_maps_layers_onto_geometry(tmp_path: Path, rng) -> None:
    geo = load_geometry("calogan")
    n = 7
    layers = [rng.random((n, *shape)).astype(np.float32) for shape in ((3, 96), (12, 12), (12, 6))]
    energy_gev = rng.uniform(1, 100, size=(n, 1))
    path = _raw_file(tmp_path / "calogan.h5", energy=energy_gev, layer_0=layers[0], layer_1=layers[1],
                     layer_2=layers[2], overflow=np.zeros((n, 3)))
    data = read_showers(path)
    assert detect_format(path) == "calogan"
    np.testing.assert_allclose(data.incident_energy, energy_gev[:, 0] * 1000.0)  # GeV → MeV
    assert data.showers.shape == (n, 504)
    for got, want in zip(geo.split(data.showers), layers):
        np.testing.assert_array_equal(got, want)
    out = tmp_path / "again.h5"
    write_calogan(out, data.incident_energy, data.showers)
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["energy"][:], energy_gev)
        np.testing.assert_array_equal(f["layer_1"][:], layers[1])


def test_streaming_reads_in_bounded_chunks(tmp_path: Path, rng) -> None:
    energy, showers = _showers(rng, 103, 40)
    path = tmp_path / "s.h5"
    write_showers(path, energy, showers)
    chunks = list(iter_showers(path, chunk_size=25))
    assert [len(c) for c in chunks] == [25, 25, 25, 25, 3]
    np.testing.assert_array_equal(ShowerData.concatenate(chunks).showers, showers)


def test_writer_appends_and_keeps_complete_showers_on_interrupt(tmp_path: Path, rng) -> None:
    energy, showers = _showers(rng, 30, 12)
    path = tmp_path / "run.h5"
    with pytest.raises(KeyboardInterrupt):
        with ShowerWriter(path, 12) as w:
            w.append(energy[:10], showers[:10])
            w.append(energy[10:20], showers[10:20])
            raise KeyboardInterrupt
    assert not path.exists()
    partial = tmp_path / "run.partial.h5"
    data = read_showers(partial)
    np.testing.assert_array_equal(data.showers, showers[:20])
    assert not list(tmp_path.glob(".run.h5.*"))  # no stray temporary file


def test_failed_write_leaves_existing_file_intact(tmp_path: Path, rng) -> None:
    energy, showers = _showers(rng, 5, 8)
    path = tmp_path / "keep.h5"
    write_showers(path, energy, showers)
    before = path.read_bytes()
    with pytest.raises(DataError):
        write_showers(path, energy, showers[:, :7].reshape(5, 7), conditions={"bogus": energy})
    with pytest.raises(RuntimeError):
        with ShowerWriter(path, 8) as w:
            w.append(energy, showers)
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == before


def test_writer_rejects_wrong_shapes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected showers of shape"):
        with ShowerWriter(tmp_path / "x.h5", 4) as w:
            w.append(np.ones(2), np.ones((2, 5)))


def test_summarize_counts_and_response(tmp_path: Path) -> None:
    energy = np.array([1000.0, 1000.0, 4000.0, 2000.0])
    showers = np.zeros((4, 368), np.float32)
    showers[:, 0] = [500.0, 300.0, 2000.0, 1000.0]
    path = tmp_path / "sum.h5"
    write_showers(path, energy, showers)
    s = summarize(path, geometry="ds1-photons")
    assert s.n_showers == 4 and s.n_voxels == 368
    assert s.distinct_energies == [1000.0, 2000.0, 4000.0]
    assert s.mean_response == pytest.approx((0.5 + 0.3 + 0.5 + 0.5) / 4)
    assert s.sparsity == pytest.approx(367 / 368)
    assert s.geometry_match is True
    assert summarize(path, geometry="ds1-pions").geometry_match is False


# ----------------------------------------------------------------------------------
# Validation: each problem → one line naming the file and the problem
# ----------------------------------------------------------------------------------
def _valid(n: int = 6, v: int = 368) -> dict:
    return {"incident_energies": np.full((n, 1), 1000.0), "showers": np.ones((n, v), np.float32)}


def _case(tmp_path: Path, name: str) -> tuple[Path, str | None]:
    path = tmp_path / f"{name}.h5"
    d = _valid()
    if name == "missing":
        return path, "no such file"
    if name == "not_hdf5":
        path.write_text("incident_energies,showers\n1,2\n")
        return path, "not an HDF5 file"
    if name == "truncated":
        write_showers(path, np.full(2000, 1000.0), np.random.default_rng(0).random((2000, 368)), compression=None)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "truncated or corrupted"
    if name == "missing_dataset":
        _raw_file(path, incident_energies=d["incident_energies"])
        return path, "missing dataset 'showers'"
    if name == "misnamed_dataset":
        _raw_file(path, incident_energies=d["incident_energies"], shower=d["showers"])
        return path, "missing dataset 'showers' (found 'shower')"
    if name == "voxel_count":
        _raw_file(path, incident_energies=d["incident_energies"], showers=np.ones((6, 367), np.float32))
        return path, "367 voxels, but geometry 'ds1-photons' has 368"
    if name == "row_counts":
        _raw_file(path, incident_energies=d["incident_energies"][:5], showers=d["showers"])
        return path, "'incident_energies' has 5 rows but 'showers' has 6"
    if name == "nan":
        s = d["showers"].copy()
        s[3, 17] = np.nan
        _raw_file(path, incident_energies=d["incident_energies"], showers=s)
        return path, "'showers' contains NaN/inf (row 3)"
    if name == "inf":
        s = d["showers"].copy()
        s[4, 0] = np.inf
        _raw_file(path, incident_energies=d["incident_energies"], showers=s)
        return path, "'showers' contains NaN/inf (row 4)"
    if name == "negative":
        s = d["showers"].copy()
        s[2, 5] = -3.5
        _raw_file(path, incident_energies=d["incident_energies"], showers=s)
        return path, "'showers' has negative energies (row 2, -3.5 MeV)"
    if name == "zero_incident":
        e = d["incident_energies"].copy()
        e[1] = 0.0
        _raw_file(path, incident_energies=e, showers=d["showers"])
        return path, "'incident_energies' must be > 0, row 1 is 0"
    if name == "int_dtype":
        _raw_file(path, incident_energies=d["incident_energies"], showers=np.ones((6, 368), np.int32))
        return path, "'showers' has dtype int32, expected floating point"
    if name == "string_dtype":
        _raw_file(path, incident_energies=np.array([b"1 GeV"] * 6), showers=d["showers"])
        return path, "'incident_energies' has dtype |S5, expected floating point"
    if name == "bad_shape":
        _raw_file(path, incident_energies=np.ones((6, 2)), showers=d["showers"])
        return path, "'incident_energies' must have shape (N, 1)"
    if name == "calogan_layer_shape":
        _raw_file(path, energy=np.ones((3, 1)), layer_0=np.ones((3, 3, 95)), layer_1=np.ones((3, 12, 12)),
                  layer_2=np.ones((3, 12, 6)))
        return path, "'layer_0' must have shape (N, 3, 96)"
    raise AssertionError(name)


BAD_CASES = [
    "missing", "not_hdf5", "truncated", "missing_dataset", "misnamed_dataset", "voxel_count", "row_counts",
    "nan", "inf", "negative", "zero_incident", "int_dtype", "string_dtype", "bad_shape", "calogan_layer_shape",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_files_give_one_line_errors(tmp_path: Path, case: str) -> None:
    path, expected = _case(tmp_path, case)
    with pytest.raises(DataError) as info:
        read_showers(path, geometry="ds1-photons")
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize("case", ["nan", "negative", "zero_incident"])
def test_streaming_catches_bad_rows_in_later_chunks(tmp_path: Path, case: str) -> None:
    path, expected = _case(tmp_path, case)
    with pytest.raises(DataError, match="row"):
        for _ in iter_showers(path, chunk_size=1):
            pass


@pytest.mark.parametrize("case", ["truncated", "nan", "misnamed_dataset", "not_hdf5"])
def test_cli_info_reports_bad_files_with_exit_2(tmp_path: Path, case: str) -> None:
    from typer.testing import CliRunner

    from caloforge.cli import app

    path, expected = _case(tmp_path, case)
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2
    out = result.output.strip()
    assert "Traceback" not in out
    assert out.startswith("error:") and expected in " ".join(out.split())


def test_cli_info_and_geometry(tmp_path: Path, reference_xml_dir: Path) -> None:
    from typer.testing import CliRunner

    from caloforge.cli import app

    energy = np.array([256.0, 512.0, 1024.0])
    showers = np.zeros((3, 368), np.float32)
    showers[:, :2] = [[100.0, 28.0], [400.0, 0.0], [500.0, 12.0]]
    path = tmp_path / "ok.h5"
    write_showers(path, energy, showers)
    runner = CliRunner()
    result = runner.invoke(app, ["info", str(path), "--geometry", "ds1-photons"])
    assert result.exit_code == 0, result.output
    assert "showers: 3" in result.output
    assert "256 MeV" in result.output and "1.024 GeV" in result.output
    assert "distinct energies (3)" in result.output
    assert "matches geometry 'ds1-photons'" in result.output
    mismatch = runner.invoke(app, ["info", str(path), "--geometry", "ds2"])
    assert mismatch.exit_code == 2 and "does NOT match" in mismatch.output

    for spec, total in [("ds1-pions", 533), ("calogan", 504), (str(reference_xml_dir / "binning_dataset_2.xml"), 6480)]:
        result = runner.invoke(app, ["geometry", spec])
        assert result.exit_code == 0, result.output
        assert result.output.strip().splitlines()[-1] == f"voxels: {total}"
    bad = runner.invoke(app, ["geometry", "nope"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1


def test_written_files_honour_the_umask(tmp_path: Path) -> None:
    import os

    path = tmp_path / "perm.h5"
    old = os.umask(0o022)
    try:
        write_showers(path, np.ones(2), np.ones((2, 3)))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
