"""Memory-aware generation blocks (caloforge.blocks): bounded on granular grids, reproducible."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from caloforge import blocks
from caloforge.generate import generate, generate_to_file, load_model
from caloforge.io import ShowerData, read_showers
from caloforge.models.base import fit
from caloforge.production import Shard, generate_production, merge_shards
from caloforge.train import load_config, train

TINY = {"model": {"latent_dim": 4, "generator_hidden": [8], "critic_hidden": [8], "critic_steps": 1},
        "training": {"batch_size": 8, "max_iterations": 2, "checkpoint_every": 2, "tensorboard": False}}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A tiny CaloShowerGAN on ds1 photons (368 voxels)."""
    rng = np.random.default_rng(0)
    e = np.repeat([1000.0, 8000.0], 20)
    run = train(TINY, ShowerData(e, rng.random((40, 368)) * e[:, None] / 368), tmp_path_factory.mktemp("blk"),
                progress=False)
    return run.best_checkpoint


def _granular_gan3d():
    """The small CPU 3DGAN on the 51 × 51 × 25 clic-angled grid (65 025 voxels), fitted on 8 showers."""
    cfg = load_config({"model": {**load_config("gan3d-clic-cpu").to_dict()["model"], "geometry": "clic-angled"}})
    rng = np.random.default_rng(1)
    n_vox = 51 * 51 * 25
    showers = torch.tensor(rng.exponential(1.0, (8, n_vox)).astype(np.float32) * (rng.random((8, n_vox)) < 0.1))
    return fit(cfg.model, showers, torch.tensor(rng.uniform(1e4, 1e5, 8)),
               {"incident_theta": torch.tensor(rng.uniform(1.1, 2.0, 8))})


def test_granular_default_block_is_within_the_budget():
    model = _granular_gan3d()
    per_shower = blocks.bytes_per_shower(model)
    block = blocks.default_block_size(model)
    # the output copies and the widest full-resolution activation map (4 channels × 65 025 float32) are counted
    assert per_shower >= blocks.OUTPUT_COPIES * 4 * model.n_voxels + 4 * 4 * model.n_voxels
    assert block * per_shower <= blocks.BLOCK_BUDGET_BYTES
    # the old fixed block of 10 000 would not fit: the bound is what shrinks it
    assert blocks.MAX_BLOCK * per_shower > blocks.BLOCK_BUDGET_BYTES and 10 <= block < blocks.MAX_BLOCK
    # shapes decide, not values: the request's first row or the default probe give the same block
    assert blocks.default_block_size(model, np.array([2e5]), {"incident_theta": np.array([1.2])}) == block
    # a larger budget never gives a smaller block
    assert blocks.default_block_size(model, budget_bytes=4 * blocks.BLOCK_BUDGET_BYTES) >= block


def test_small_geometry_keeps_the_old_default_of_10000(small):
    gen = load_model(small)
    assert blocks.default_block_size(gen.model) == blocks.MAX_BLOCK == 10_000
    e = np.geomspace(1000.0, 8000.0, 30)
    assert np.array_equal(generate(gen, e, seed=4).showers, generate(gen, e, seed=4, batch_size=10_000).showers)


def test_default_block_reproduces_the_explicit_block_and_shards(small, tmp_path, monkeypatch):
    gen = load_model(small)
    per_shower = blocks.bytes_per_shower(gen.model)
    monkeypatch.setattr(blocks, "BLOCK_BUDGET_BYTES", 7 * per_shower + 1)  # a 7-shower block
    assert blocks.default_block_size(gen.model) == 7
    e = np.geomspace(1000.0, 8000.0, 40)
    auto = generate(gen, e, seed=3).showers
    assert np.array_equal(auto, generate(gen, e, seed=3, batch_size=7).showers)
    assert not np.array_equal(auto, generate(gen, e, seed=3, batch_size=10_000).showers)  # blocks seed the noise
    # the file records the block, and shards cut at the same blocks merge into the unsharded file
    whole = generate_to_file(gen, tmp_path / "whole.h5", e, seed=3)
    with h5py.File(whole, "r") as f:
        assert int(f.attrs["batch_size"]) == 7
    assert np.array_equal(read_showers(whole).showers, auto)
    parts = [generate_production(gen, tmp_path / f"part{k}.h5", e, seed=3, shard=Shard(k, 3))[0] for k in (1, 2, 3)]
    merged, n = merge_shards(parts, tmp_path / "merged.h5")
    assert n == 40 and np.array_equal(read_showers(merged).showers, auto)
