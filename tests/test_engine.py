"""The ONNX Runtime generation path: same showers as PyTorch from the same seed, used only where it applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from caloforge.engine import BLOCK, OnnxSampler, fast_sampler
from caloforge.errors import ConfigError
from caloforge.export import TOLERANCE, max_relative_deviation
from caloforge.generate import ShowerGenerator, generate
from tests.test_export import tiny_model


def _generator(model) -> ShowerGenerator:
    lo, hi = model.energy_limits
    return ShowerGenerator(model, Path("tiny"), model.geometry.name, model.n_voxels, lo, hi, 0, None, {})


def test_sampler_reproduces_model_sample_across_blocks():
    model = tiny_model("caloshowergan", 1)  # angles, impact point, kinetic energy
    sampler = OnnxSampler.build(model)
    n = 2 * BLOCK + 17  # several blocks and a remainder
    rng = np.random.default_rng(0)
    cond = {"incident_energy": rng.uniform(300, 4e6, n), "incident_theta": rng.uniform(0.9, 2.2, n),
            "incident_phi": rng.uniform(-3, 3, n), "impact_x": rng.normal(0, 5, n)}
    fast = sampler.sample(cond, torch.Generator().manual_seed(4))
    slow = model.sample(cond, torch.Generator().manual_seed(4)).numpy()
    assert fast.shape == slow.shape == (n, model.n_voxels) and slow.sum() > 0
    assert max_relative_deviation(slow, fast) <= TOLERANCE


def test_energy_split_keeps_pytorch():
    # it draws noise per energy range: the exported graph on sample_noise is not its sampler
    assert fast_sampler(tiny_model("energy_split")) is None
    gen = _generator(tiny_model("energy_split"))
    with pytest.raises(ConfigError, match="--engine onnxruntime is not available"):
        generate(gen, np.full(10, 5000.0), engine="onnxruntime")


def test_generate_engines_agree_for_a_seed():
    gen = _generator(tiny_model("caloshowergan", 0))
    e = np.geomspace(300.0, 4e6, 1500)
    a = generate(gen, e, seed=3, batch_size=700, engine="pytorch").showers
    b = generate(gen, e, seed=3, batch_size=700, engine="onnxruntime").showers
    assert a.sum() > 0 and max_relative_deviation(a, b) <= TOLERANCE
    with pytest.raises(ConfigError, match="--engine 'tensorrt'"):
        generate(gen, e, engine="tensorrt")
