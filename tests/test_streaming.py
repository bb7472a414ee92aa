"""Streamed training data: the shuffle pool, its checkpointed state, and training from it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from caloforge.errors import ConfigError
from caloforge.io import ShowerData, ShowerFile, write_showers
from caloforge.streaming import StreamingBatchSource
from caloforge.train import _open_stream, _streams, load_config, split_validation, train

N_ROWS, N_VOX = 300, 5


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """A file whose row r has incident energy r + 1 and voxel 0 = r, chunked by 16 rows."""
    import h5py

    path = tmp_path_factory.mktemp("stream") / "numbered.h5"
    rows = np.arange(N_ROWS, dtype=np.float64)
    with h5py.File(path, "w") as f:
        f.create_dataset("incident_energies", data=(rows + 1)[:, None])
        f.create_dataset("showers", data=np.repeat(rows[:, None], N_VOX, 1).astype(np.float32), chunks=(16, N_VOX),
                         compression="gzip")
        f.create_dataset("incident_theta", data=(1.0 + rows / N_ROWS)[:, None])
    return path


def _source(path, rows, seed=0, pool_rows=128, generator_seed=1):
    return StreamingBatchSource(ShowerFile(path), rows, batch_size=10,
                                generator=torch.Generator().manual_seed(generator_seed), pool_rows=pool_rows,
                                seed=seed)


def _drawn_rows(batch) -> np.ndarray:
    rows = batch.showers[:, 0].numpy().astype(np.int64)
    assert np.array_equal(rows + 1, batch.incident_energy.numpy())  # showers and conditions stay aligned
    assert np.allclose(batch.conditions["incident_theta"].numpy(), 1.0 + rows / N_ROWS)
    return rows


def test_pool_draws_only_training_rows_reaches_them_all_and_stays_bounded(numbered):
    train_rows = np.sort(np.random.default_rng(0).permutation(N_ROWS)[:240])
    val_rows = np.setdiff1d(np.arange(N_ROWS), train_rows)
    src = _source(numbered, train_rows)
    assert src.block_rows == 16 and src.pool_blocks == 8  # whole HDF5 chunks; 128 rows of pool
    assert src._pool_showers.shape == (128, N_VOX)  # memory: the pool, not the file
    seen = np.concatenate([_drawn_rows(src.next()) for _ in range(480)])  # 4800 draws: 20 a row
    assert not np.isin(seen, val_rows).any()
    assert set(seen) == set(train_rows)
    # every block entered the pool once per epoch: rows are drawn about equally often
    counts = np.bincount(seen, minlength=N_ROWS)[train_rows]
    assert counts.mean() == pytest.approx(20.0) and counts.min() > 5 and counts.max() < 45


def test_pool_state_resumes_the_same_batches(numbered):
    rows = np.arange(0, N_ROWS, 3)
    a = _source(numbered, rows)
    for _ in range(7):
        a.next()
    state, rng = a.state(), a.generator.get_state()
    expected = [_drawn_rows(a.next()) for _ in range(9)]
    b = _source(numbered, rows)  # a fresh process: the pool is rebuilt from the state
    b.load_state(json.loads(json.dumps(state)))
    b.generator.set_state(rng)
    assert all(np.array_equal(x, _drawn_rows(b.next())) for x in expected)
    # another block-order seed draws other rows; a changed pool size refuses to resume
    c = _source(numbered, rows, seed=5)
    assert not all(np.array_equal(x, _drawn_rows(c.next())) for x in expected[:3])
    with pytest.raises(ConfigError, match="pool_blocks"):
        _source(numbered, rows, pool_rows=256).load_state(state)


def test_take_and_fit_sample(numbered):
    rows = np.arange(1, N_ROWS, 2)
    src = _source(numbered, rows)
    b = src.take(np.array([5, 0, 5, 149]))
    assert _drawn_rows(b).tolist() == [11, 1, 11, 299]
    fit = src.fit_sample()
    got = _drawn_rows(fit)
    assert len(got) <= 128 + 4 and set(got) <= set(rows)
    # the extremes are included, so the condition encodings' ranges are those of all training rows
    assert got.min() == 1 and got.max() == 299


def test_stream_split_matches_the_in_memory_split(numbered):
    cfg = load_config({"model": {"name": "caloshowergan", "geometry": "ds1-photons"},
                       "training": {"validation_fraction": 0.2, "score_max_showers": 40, "seed": 3}}).training
    reader, train_rows, val, fingerprint = _open_stream(numbered, None, cfg, None, "numbered")
    reader.close()
    data = ShowerData(np.arange(1.0, N_ROWS + 1), np.repeat(np.arange(N_ROWS, dtype=np.float32)[:, None], N_VOX, 1))
    tr, va = split_validation(data, 0.2, 3)
    assert np.array_equal(train_rows + 1, tr.incident_energy)
    keep = np.sort(np.random.default_rng(3).permutation(len(va))[:40])
    assert np.array_equal(val.incident_energy, va.incident_energy[keep])  # same rows, same scoring subset
    assert not np.isin(val.incident_energy, tr.incident_energy).any()
    assert fingerprint["sum_energy_deposit"] == pytest.approx(float(tr.showers.astype(np.float64).sum()))


def test_stream_modes(numbered, tmp_path):
    base = {"model": {"name": "caloshowergan", "geometry": "ds1-photons"}}
    assert load_config({**base, "training": {"stream": True}}).training.stream == "true"  # YAML's bool
    with pytest.raises(ConfigError, match="training.stream must be"):
        load_config({**base, "training": {"stream": "sometimes"}})
    with pytest.raises(ConfigError, match="training.stream_pool_mb"):
        load_config({**base, "training": {"stream_pool_mb": 0}})

    class Geo:
        n_voxels = N_VOX

    tc = load_config(base).training
    assert not _streams(tc, numbered, Geo)  # 6 kB of showers: in memory
    tiny = load_config({**base, "training": {"stream_pool_mb": 1e-3}}).training
    assert _streams(tiny, numbered, Geo)  # larger than 4 pools: streamed
    data = ShowerData(np.ones(2), np.ones((2, N_VOX)))
    assert not _streams(load_config({**base, "training": {"stream": "true"}}).training, data, Geo)


# ----------------------------------------------------------------------------------
# training from a stream
# ----------------------------------------------------------------------------------
TOY_GEOMETRY = """
name: toy-siw-stream
layers:
""" + "".join("  - {thickness: 10.0, material: clic-w-si, nx: 8, ny: 8, cell_x: 5.0, cell_y: 5.0, "
              "sampling_fraction: 0.013, sampling_term: 0.17}\n" for _ in range(6))
BIBAE_TINY = {"name": "bibae", "particle": "electron", "conditions": {"incident_energy": "log", "incident_theta": "cos"},
              "latent_dim": 3, "random_dim": 2, "encoder_channels": [2], "decoder_channels": [2], "decoder_upsample": 2,
              "decoder_seed_channels": 2, "hidden": 16, "critic_channels": [2], "critic_hidden": 8,
              "postprocessor_channels": 4, "stages": [3, 3], "critic_steps": 1, "hit_mmd_kernel": 8,
              "hit_mmd_stride": 8, "hit_mmd_cutoff": 32, "kde_max_showers": 40}


@pytest.mark.slow
def test_streamed_training_resumes_bit_identically(tmp_path):
    """BIB-AE through a pool of 32 showers (two blocks refilled per iteration) across the latent-KDE
    fit (read back from the file in chunks) and the stage switch: a run stopped after 2 iterations
    and resumed ends with the very weights of the uninterrupted run."""
    from caloforge.simulate import simulate

    geo = tmp_path / "toy.yaml"
    geo.write_text(TOY_GEOMETRY)
    data = simulate(str(geo), "electron", "10GeV:50GeV", 120, theta=(math.radians(60), math.radians(120)),
                    phi=0.0, seed=3)
    path = tmp_path / "toy.h5"
    write_showers(path, data.incident_energy, data.showers, data.conditions)
    pool_mb = 32 * 384 * 4 / 2**20
    cfg = {"model": {**BIBAE_TINY, "geometry": str(geo)},
           "training": {"batch_size": 8, "max_iterations": 6, "checkpoint_every": 2, "log_every": 1,
                        "tensorboard": False, "validation_fraction": 0.2, "score_max_showers": 16,
                        "keep_checkpoints": 10, "stream": "true", "stream_pool_mb": pool_mb}}
    train(cfg, path, tmp_path / "ref", progress=False)
    train(cfg, path, tmp_path / "cut", progress=False, max_iterations=2)
    train(cfg, path, tmp_path / "cut", progress=False, resume=True)
    meta = json.loads((tmp_path / "ref" / "checkpoints" / "iter-0000006" / "config.json").read_text())
    assert meta["data_stream"]["kind"] == "stream" and meta["data_stream"]["pool_blocks"] == 8
    assert meta["data_stream"]["position"] == 8 + 6 * 2  # one batch of 8 an iteration: two 4-row refills
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(tmp_path / "ref" / "checkpoints" / "iter-0000006" / name)
        b = load_file(tmp_path / "cut" / "checkpoints" / "iter-0000006" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    w = load_file(tmp_path / "ref" / "checkpoints" / "iter-0000006" / "model.safetensors")
    assert int(w["kde_count"]) == 40 and torch.isfinite(w["kde_points"]).all()
