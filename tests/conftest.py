"""Shared test fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Two xdist workers on two cores: one thread each keeps them from fighting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # test-only modules (toy_family, toy_data, processes) import by name
    sys.path.insert(0, str(TESTS))
# toy_family.py is a model family that tests import by name; collecting it for doctests too
# would import (and register) it a second time under another module name.  processes.py
# (running and signalling the command) and toy_data.py have no doctests: one import is enough.
collect_ignore = ["toy_family.py", "processes.py", "toy_data.py"]
SHARED_REFERENCE = REPO.parent / "shared" / "reference" / "calochallenge"


@pytest.fixture(scope="session")
def reference_xml_dir() -> Path:
    """The official CaloChallenge binning files beside the checkout (../shared)."""
    if not SHARED_REFERENCE.is_dir():
        pytest.fail(f"reference binning files not found at {SHARED_REFERENCE}")
    return SHARED_REFERENCE


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def pytest_configure(config) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # torch is a dependency; this only guards odd environments
        pass
