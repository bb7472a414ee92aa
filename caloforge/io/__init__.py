"""Shower files: CaloChallenge and CaloGAN HDF5, streamed, validated, written atomically.

* :mod:`~caloforge.io.showers` – :class:`ShowerData`, the array layout every function
  takes and returns, and the checks every shower passes
* :mod:`~caloforge.io.formats` – format detection and the readers (:func:`read_showers`,
  :func:`iter_showers`, :class:`ShowerFile`)
* :mod:`~caloforge.io.writer` – :class:`ShowerWriter`, :func:`write_showers`, :func:`write_calogan`
* :mod:`~caloforge.io.files` – output checks and atomic writes of any file
* :mod:`~caloforge.io.summary` – :func:`summarize` (``caloforge info``)
* :mod:`~caloforge.io.hdf5` – opening HDF5 files with one-line errors

Example
-------
>>> import numpy as np, tempfile, os
>>> from caloforge.io import write_showers, read_showers
>>> path = os.path.join(tempfile.mkdtemp(), "tiny.h5")
>>> write_showers(path, np.array([1000.0, 2000.0]), np.ones((2, 368)))
>>> data = read_showers(path, geometry="ds1-photons")
>>> len(data), data.showers.shape
(2, (2, 368))
"""

from caloforge.io.files import atomic_path, check_output_dir, check_output_file
from caloforge.io.formats import (
    CALOGAN_LAYERS,
    DEFAULT_CHUNK_BYTES,
    ShowerFile,
    count_showers,
    detect_format,
    iter_showers,
    read_showers,
)
from caloforge.io.showers import CONDITION_NAMES, ShowerData, check_showers
from caloforge.io.summary import FileSummary, summarize
from caloforge.io.writer import ShowerWriter, write_calogan, write_showers

__all__ = [
    "CONDITION_NAMES",
    "CALOGAN_LAYERS",
    "DEFAULT_CHUNK_BYTES",
    "ShowerData",
    "ShowerWriter",
    "FileSummary",
    "detect_format",
    "read_showers",
    "iter_showers",
    "count_showers",
    "ShowerFile",
    "write_showers",
    "write_calogan",
    "summarize",
    "check_showers",
    "atomic_path",
    "check_output_file",
    "check_output_dir",
]
