"""Shared set-up of the screening scripts: a model's sample on an independent validation file,
scored by the CaloChallenge low-level classifier (the official network and rule; float32 and
fewer epochs unless told otherwise).

Used by ``select_sampling.py``, ``threshold_screen.py`` and ``screen_models.py``.  Never
screen on the evaluation file: the validation file is another simulator seed.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np


def load_validation(path: str):
    """The validation showers (:class:`caloforge.io.Showers`), with torch at one thread."""
    import torch

    from caloforge.io import read_showers

    torch.set_num_threads(1)
    return read_showers(path)


def sample_like(model, reference, *, seed: int = 1, sampling: Mapping[str, Any] | None = None) -> np.ndarray:
    """One generated shower per reference shower (same incident energies and conditions)."""
    from caloforge.generate import generate, load_model

    gen = load_model(model) if isinstance(model, str) else model
    sample = generate(gen, reference.incident_energy, conditions=reference.conditions or None, seed=seed,
                      sampling=dict(sampling or {}))
    return np.asarray(sample.showers)


def low_level_auc(reference, generated: np.ndarray, *, epochs: int, dtype: str = "float32",
                  cut: float | None = None) -> dict[str, Any]:
    """The low-level classifier's result (``auc``, ``best_epoch``, …, ``seconds``).

    ``cut``: voxels below it [MeV] read 0 in *both* samples, as the CaloChallenge protocol
    does before every metric (``None``: no cut)."""
    from caloforge.evaluate import calochallenge
    from caloforge.evaluate.classifier import classifier_test

    ref = np.asarray(reference.showers)
    if cut is not None:
        ref, generated = calochallenge.apply_cut(ref, cut), calochallenge.apply_cut(generated, cut)
    t0 = time.perf_counter()
    settings = calochallenge.classifier_settings({"epochs": epochs, "dtype": dtype})
    result = classifier_test((reference.incident_energy, ref), (reference.incident_energy, generated), mode="low",
                             seed=0, percent=False, **settings)
    return {**result, "seconds": time.perf_counter() - t0}
