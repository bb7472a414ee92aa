"""Sharded generation and merging: shards join into the unsharded file; bad merges are one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.errors import ConfigError
from caloforge.io import ShowerData, write_showers
from caloforge.production import Shard, shard_rows
from caloforge.train import train

TINY = {
    "model": {"latent_dim": 8, "generator_hidden": [16], "critic_hidden": [16], "voxel_scale": 100.0,
              "critic_steps": 1},
    "training": {"batch_size": 32, "max_iterations": 6, "checkpoint_every": 6, "tensorboard": False},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    e = np.repeat([1024.0, 8192.0, 65536.0], 20)
    showers = rng.gamma(0.5, 1.0, (60, 368)) * (rng.random((60, 368)) < 0.4)
    showers *= (0.17 * e / np.maximum(showers.sum(1), 1e-9))[:, None]
    out = tmp_path_factory.mktemp("prod") / "run"
    train(TINY, ShowerData(e, showers), out, progress=False)
    return out


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _content(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {"data": {k: f[k][:] for k in f.keys()}, "attrs": dict(f.attrs)}


def _assert_same_file(a: Path, b: Path) -> None:
    ca, cb = _content(a), _content(b)
    assert sorted(ca["data"]) == sorted(cb["data"])
    for k in ca["data"]:
        assert ca["data"][k].dtype == cb["data"][k].dtype and np.array_equal(ca["data"][k], cb["data"][k]), k
    assert ca["attrs"].keys() == cb["attrs"].keys()
    assert all(np.all(ca["attrs"][k] == cb["attrs"][k]) for k in ca["attrs"])


def test_shards_cover_the_batches_once():
    for n_rows, batch, count in [(50, 7, 3), (10, 3, 4), (1, 10, 2), (100, 10, 10), (99, 1, 7)]:
        pieces = [shard_rows(n_rows, batch, Shard(k, count)) for k in range(1, count + 1)]
        assert pieces[0][0] == 0 and pieces[-1][1] == n_rows
        for (lo, hi, b0), (lo2, _, _) in zip(pieces, pieces[1:]):
            assert hi == lo2 and lo == b0 * batch or lo == hi  # contiguous, on batch boundaries
    assert Shard.parse(" 2 / 5 ") == Shard(2, 5)
    for bad in ("0/3", "4/3", "3", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="--shard"):
            Shard.parse(bad)


def test_three_shards_merge_into_the_unsharded_file(run_dir, tmp_path):
    common = ["generate", "--model", run_dir / "best", "--energies", "1GeV,8GeV", "--n", "25", "--theta", "60:120",
              "--seed", "5", "--batch-size", "7"]
    whole = _cli(*common, "-o", tmp_path / "whole.h5")
    assert whole.exit_code == 0, whole.output
    parts = []
    for k in (3, 1, 2):  # any order
        r = _cli(*common, "--shard", f"{k}/3", "-o", tmp_path / f"part{k}.h5")
        assert r.exit_code == 0, r.output
        assert f"(shard {k}/3 of 50)" in r.output
        parts.append(tmp_path / f"part{k}.h5")
    sizes = [len(h5py.File(p, "r")["showers"]) for p in sorted(parts)]
    assert sizes == [14, 21, 15] and sum(sizes) == 50  # 8 batches of 7 → 2 | 3 | 3 batches
    r = _cli("merge", *parts, "-o", tmp_path / "merged.h5")
    assert r.exit_code == 0, r.output
    assert "merged 3 shards: 50 showers" in r.output
    _assert_same_file(tmp_path / "merged.h5", tmp_path / "whole.h5")
    other_seed = _cli(*common[:-4], "--seed", "6", "--batch-size", "7", "-o", tmp_path / "seed6.h5")
    assert other_seed.exit_code == 0
    assert not np.array_equal(_content(tmp_path / "seed6.h5")["data"]["showers"],
                              _content(tmp_path / "whole.h5")["data"]["showers"])


def test_like_reference_is_split_between_shards(run_dir, tmp_path):
    rng = np.random.default_rng(3)
    e = rng.uniform(1024.0, 65536.0, 23)
    write_showers(tmp_path / "ref.h5", e, rng.random((23, 368)), {"incident_theta": rng.uniform(1.0, 2.0, 23)})
    common = ["generate", "--model", run_dir, "--like", tmp_path / "ref.h5", "--batch-size", "4", "--seed", "2"]
    assert _cli(*common, "-o", tmp_path / "whole.h5").exit_code == 0
    for k in (1, 2):
        assert _cli(*common, "--shard", f"{k}/2", "-o", tmp_path / f"p{k}.h5").exit_code == 0
    assert _cli("merge", tmp_path / "p1.h5", tmp_path / "p2.h5", "-o", tmp_path / "m.h5").exit_code == 0
    _assert_same_file(tmp_path / "m.h5", tmp_path / "whole.h5")
    merged = _content(tmp_path / "m.h5")["data"]
    assert np.array_equal(merged["incident_energies"][:, 0], e)  # the reference energies, in order


def test_bad_merges_are_one_line_errors(run_dir, tmp_path):
    def shard(k: int, n: int, name: str, *extra: str) -> Path:
        out = tmp_path / name
        r = _cli("generate", "--model", run_dir, "--energies", "2GeV", "--n", "12", "--batch-size", "4",
                 "--shard", f"{k}/{n}", "-o", out, *extra)
        assert r.exit_code == 0, r.output
        return out

    p1, p2, p3 = (shard(k, 3, f"p{k}.h5") for k in (1, 2, 3))
    q2 = shard(2, 3, "q2.h5", "--seed", "9")
    r2 = shard(2, 3, "r2.h5", "--batch-size", "3")
    s2 = shard(2, 2, "s2.h5")
    shutil.copy(p2, tmp_path / "copy2.h5")
    whole = tmp_path / "whole.h5"
    assert _cli("generate", "--model", run_dir, "--energies", "2GeV", "--n", "12", "-o", whole).exit_code == 0
    cases = [
        ((p1, p2, tmp_path / "copy2.h5", p3), "shard 2/3 given twice"),
        ((p1, p3), "shard 2/3 missing (given 2 of 3)"),
        ((p1, q2, p3), "another --seed"),
        ((p1, r2, p3), "another --batch-size"),
        ((p1, s2), "another number of shards"),
        ((p1, whole), "not a shard"),
        ((p1, tmp_path / "nope.h5"), "no such file"),
    ]
    for files, message in cases:
        out = tmp_path / "merged.h5"
        r = _cli("merge", *files, "-o", out)
        assert r.exit_code == 2, (message, r.output)
        assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not out.exists()
    r = _cli("merge", p1, p2, p3, "-o", p1)
    assert r.exit_code == 2 and "is one of the shards" in r.output
    r = _cli("generate", "--model", run_dir, "--energies", "2GeV", "--n", "4", "--shard", "4/3", "-o", tmp_path / "x.h5")
    assert r.exit_code == 2 and "K must be 1 … N" in r.output and not (tmp_path / "x.h5").exists()


def test_shards_of_another_model_are_refused(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, symlinks=True)
    # the same architecture with different weights: a different model by its SHA-256
    from safetensors.torch import load_file, save_file

    weights = other / "best" / "model.safetensors"
    state = load_file(weights)
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, weights)
    args = ["--energies", "2GeV", "--n", "8", "--batch-size", "4"]
    assert _cli("generate", "--model", run_dir, *args, "--shard", "1/2", "-o", tmp_path / "a.h5").exit_code == 0
    assert _cli("generate", "--model", other, *args, "--shard", "2/2", "-o", tmp_path / "b.h5").exit_code == 0
    r = _cli("merge", tmp_path / "a.h5", tmp_path / "b.h5", "-o", tmp_path / "m.h5")
    assert r.exit_code == 2 and "made with a different model" in r.output


def test_more_shards_than_batches_leaves_empty_shards_that_still_merge(run_dir, tmp_path):
    args = ["generate", "--model", run_dir, "--energies", "2GeV", "--n", "5", "--batch-size", "4", "--seed", "1"]
    outs = []
    for k in (1, 2, 3):
        r = _cli(*args, "--shard", f"{k}/3", "-o", tmp_path / f"e{k}.h5")
        assert r.exit_code == 0, r.output
        outs.append(tmp_path / f"e{k}.h5")
    assert "holds no showers" in _cli(*args, "--shard", "1/3", "-o", tmp_path / "again.h5").output
    assert [len(h5py.File(p, "r")["showers"]) for p in outs] == [0, 4, 1]
    assert _cli(*args, "-o", tmp_path / "whole.h5").exit_code == 0
    assert _cli("merge", *outs, "-o", tmp_path / "m.h5").exit_code == 0
    _assert_same_file(tmp_path / "m.h5", tmp_path / "whole.h5")
