"""Property-based fuzzing of the shower-file reader and the geometry YAML loader.

Whatever the input, the answer is a result or a :class:`CaloforgeError` with a
one-line message, never another exception.  Hypothesis runs derandomized with no
example database, so CI sees the same examples every time.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from caloforge.errors import CaloforgeError
from caloforge.geometry import load_geometry
from caloforge.io import CALOGAN_LAYERS, CONDITION_NAMES, iter_showers, read_showers, summarize

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _one_line_error(fn, *args, **kwargs):
    """Run ``fn``: a result, or a CaloforgeError whose message is one line (anything else fails)."""
    try:
        return fn(*args, **kwargs)
    except CaloforgeError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
        return None


# ----------------------------------------------------------------------------------
# shower files
# ----------------------------------------------------------------------------------
DTYPES = ["<f4", "<f8", ">f8", "<f2", "<i4", "|u1", "|b1", "<c8"]
SPECIAL = [0.0, -1.0, -1e-30, np.nan, np.inf, -np.inf, 1e38, 5e-324]


@st.composite
def arrays(draw, rows: int, tail: tuple[int, ...]):
    """A dataset: usually the expected shape, sometimes a wrong one; any dtype; special values."""
    shape = (rows, *tail)
    if draw(st.integers(0, 5)) == 0:
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    data = draw(st.sampled_from(["ok", "ok", "special"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arr = rng.gamma(1.0, 100.0, shape) + 1.0
    if data == "special" and arr.size:
        idx = rng.integers(0, arr.size, max(1, arr.size // 5))
        arr.flat[idx] = draw(st.sampled_from(SPECIAL))
    with np.errstate(all="ignore"):
        return arr.astype(dtype)


@st.composite
def shower_files(draw):
    """Datasets of a CaloChallenge or CaloGAN file, with pieces missing, extra, broken."""
    fmt = draw(st.sampled_from(["calochallenge", "calogan", "mixed"]))
    rows = draw(st.integers(0, 6))
    datasets: dict[str, np.ndarray] = {}
    if fmt in ("calochallenge", "mixed"):
        n_vox = draw(st.sampled_from([368, 504, 3, 0]))
        datasets["incident_energies"] = draw(arrays(rows, (1,)))
        datasets["showers"] = draw(arrays(rows, (n_vox,)))
        for name in draw(st.lists(st.sampled_from(CONDITION_NAMES), unique=True, max_size=4)):
            datasets[name] = draw(arrays(rows, (1,)))
    if fmt in ("calogan", "mixed"):
        datasets["energy"] = draw(arrays(rows, (1,)))
        for name, shape in zip(CALOGAN_LAYERS, ((3, 96), (12, 12), (12, 6))):
            datasets[name] = draw(arrays(rows, shape))
        if draw(st.booleans()):
            datasets["overflow"] = draw(arrays(rows, (3,)))
    for name in draw(st.lists(st.sampled_from(sorted(datasets)), unique=True, max_size=2)):
        del datasets[name]  # a missing dataset
    extras = draw(st.lists(st.sampled_from(["shower", "Showers", "layer_3", "extra", "incident_energy"]),
                           unique=True, max_size=2))
    groups = draw(st.lists(st.sampled_from(["showers", "energy", "misc"]), unique=True, max_size=1))
    attrs = draw(st.dictionaries(st.sampled_from(["geometry", "seed", "generator"]),
                                 st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=5), st.floats()), max_size=2))
    return datasets, extras, groups, attrs


def _write_raw(path: Path, spec) -> None:
    datasets, extras, groups, attrs = spec
    with h5py.File(path, "w") as f:
        for name, arr in datasets.items():
            if name in groups:
                f.create_group(name)  # a group where a dataset belongs
            else:
                f.create_dataset(name, data=arr)
        for name in extras:
            if name not in f:
                f.create_dataset(name, data=np.zeros((2, 2)))
        for name in groups:
            if name not in f:
                f.create_group(name)
        for k, v in attrs.items():
            f.attrs[k] = v


@FUZZ
@given(spec=shower_files(), geometry=st.sampled_from([None, "ds1-photons", "calogan"]),
       chunk=st.sampled_from([None, 1, 4]))
# bugs the fuzzer found, kept as fixed examples: scalar datasets (IndexError), showers with
# 0 voxels (ZeroDivisionError in summarize), a group where a dataset belongs (AttributeError)
@example(spec=({"energy": np.float32(69.0), "layer_0": np.float32(1.0), "layer_1": np.float32(1.0),
                "layer_2": np.float32(1.0)}, [], [], {}), geometry=None, chunk=None)
@example(spec=({"incident_energies": np.ones((1, 1), np.float32), "showers": np.zeros((1, 0), np.float32)},
               [], [], {}), geometry=None, chunk=None)
@example(spec=({"incident_energies": np.ones((2, 1)), "showers": np.ones((2, 368))}, [], ["showers"], {}),
         geometry=None, chunk=None)
def test_reader_never_raises_anything_but_a_one_line_error(spec, geometry, chunk):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.h5"
        _write_raw(path, spec)
        data = _one_line_error(read_showers, path, geometry=geometry)
        chunks = _one_line_error(lambda: list(iter_showers(path, geometry=geometry, chunk_size=chunk)))
        summary = _one_line_error(summarize, path, geometry)
    for got in ([data] if data is not None else []) + (chunks or []):
        # whatever is accepted is what the module docstring promises
        assert got.showers.ndim == 2 and len(got.incident_energy) == len(got.showers)
        assert np.all(np.isfinite(got.showers)) and np.all(got.showers >= 0)
        assert np.all(np.isfinite(got.incident_energy)) and np.all(got.incident_energy > 0)
    if data is not None and chunks is not None:
        assert sum(len(c) for c in chunks) == len(data)
    if summary is not None:
        assert summary.n_showers >= 0
        if summary.n_showers:  # no NaN (a subnormal incident energy may give an infinite response)
            assert not math.isnan(summary.mean_response) and math.isfinite(summary.sparsity)


@FUZZ
@given(data=st.binary(max_size=600), keep_header=st.booleans())
def test_reader_on_random_or_truncated_bytes(data, keep_header):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "junk.h5"
        if keep_header:  # a real file, truncated and overwritten in places
            from caloforge.io import write_showers

            write_showers(path, np.array([1000.0, 2000.0]), np.ones((2, 368)))
            raw = bytearray(path.read_bytes())
            raw[len(raw) // 3: len(raw) // 3 + len(data)] = data
            path.write_bytes(bytes(raw[: max(64, len(raw) - len(data))]))
        else:
            path.write_bytes(data)
        _one_line_error(read_showers, path)
        _one_line_error(summarize, path)


def test_reader_error_names_the_file_for_a_directory_and_a_missing_file(tmp_path):
    for p in (tmp_path, tmp_path / "missing.h5"):
        with pytest.raises(CaloforgeError, match=str(p.name)):
            read_showers(p)


# ----------------------------------------------------------------------------------
# geometry YAML
# ----------------------------------------------------------------------------------
NUMBERS = st.one_of(st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.sampled_from([0, -1, 1e300, 0.5]))
VALUES = st.one_of(NUMBERS, st.none(), st.booleans(), st.text(max_size=6), st.lists(NUMBERS, max_size=5),
                   st.dictionaries(st.text(max_size=4), NUMBERS, max_size=2))
LAYER_KEYS = ["thickness", "material", "nx", "ny", "cell_x", "cell_y", "r_edges", "n_alpha", "name",
              "sampling_fraction", "id", "bogus"]
MATERIAL_KEYS = ["Z", "X0", "lambda_I", "moliere_radius", "critical_energy", "A", "density"]


@st.composite
def geometry_docs(draw):
    materials = draw(st.dictionaries(st.sampled_from(["pbwo4", "w", "x"]),
                                     st.one_of(st.dictionaries(st.sampled_from(MATERIAL_KEYS), NUMBERS, max_size=6),
                                               VALUES), max_size=2))
    good_layer = {"thickness": 20, "material": "pbwo4", "nx": 5, "ny": 4, "cell_x": 22, "cell_y": 22}
    layers = []
    for _ in range(draw(st.integers(0, 3))):
        layer = dict(good_layer) if draw(st.booleans()) else {}
        for k in draw(st.lists(st.sampled_from(LAYER_KEYS), unique=True, max_size=4)):
            layer[k] = draw(VALUES)
        layers.append(layer)
    doc = {"name": draw(st.one_of(st.text(max_size=8), VALUES)), "materials": materials,
           "layers": layers if draw(st.integers(0, 6)) else draw(VALUES)}
    for k in draw(st.lists(st.sampled_from(["name", "materials", "layers"]), unique=True, max_size=1)):
        del doc[k]
    return doc


def _load_yaml_text(text: str):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "geo.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        return _one_line_error(load_geometry, path)


@FUZZ
@given(doc=geometry_docs())
# found by the fuzzer: unhashable / non-numeric values reached Python's TypeError / ValueError
@example(doc={"name": "", "materials": {}, "layers": [{"material": [], "thickness": 0, "nx": 0, "ny": 0}]})
@example(doc={"layers": [{"thickness": 20, "material": "pbwo4", "nx": "5", "ny": 4, "cell_x": 22, "cell_y": 22}],
              "materials": {"pbwo4": {"Z": "x", "X0": 8.9, "lambda_I": 200, "moliere_radius": 21.9,
                                      "critical_energy": 9.6}}})
@example(doc={"materials": [1, 2], "layers": [{"thickness": 1, "material": "pbwo4"}]})
@example(doc={"layers": [{"thickness": 3.5, "material": "clic-w-si", "r_edges": 5, "n_alpha": 8}]})
@example(doc={"layers": [{"thickness": 3.5, "material": "clic-w-si", "nx": 1e300, "ny": 2, "cell_x": 1,
                          "cell_y": 1}]})
def test_geometry_yaml_structured(doc):
    geo = _load_yaml_text(yaml.safe_dump(doc, allow_unicode=True))
    if geo is not None:  # an accepted geometry is usable
        assert geo.n_voxels >= 0 and len(geo.layers) >= 1


@FUZZ
@given(text=st.one_of(st.text(max_size=200),
                      st.sampled_from(["", "---", "[1, 2", "name: x\nlayers: 3", "layers:\n  - !!python/object:os.system {}",
                                       "a: &a [*a]", "name: x\nlayers:\n - {thickness: 1e999}"])))
def test_geometry_yaml_raw_text(text):
    _load_yaml_text(text.replace("\x00", ""))
