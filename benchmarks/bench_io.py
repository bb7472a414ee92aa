"""Memory and speed of reading + validating a large CaloChallenge file.

Writes a DS3-shaped file (40500 voxels, float32, uncompressed so that the file
really is ``--size-gb`` on disk), then, each in a fresh process, measures wall time
and peak RSS of

* ``summarize`` — what ``caloforge info`` does: streams and validates every row;
* ``iter_showers`` — a plain streamed pass;
* ``read_showers`` — validate and load the whole file into memory.

Run:  .venv/bin/python benchmarks/bench_io.py [--size-gb 1] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
from caloforge import io
path, mode = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if mode == "summarize":
    n = io.summarize(path, geometry="ds3").n_showers
elif mode == "iter_showers":
    n = sum(len(c) for c in io.iter_showers(path, geometry="ds3"))
else:
    n = len(io.read_showers(path, geometry="ds3"))
dt = time.perf_counter() - t0
print(json.dumps({"mode": mode, "showers": n, "seconds": dt,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_file(path: Path, size_gb: float, seed: int = 0) -> int:
    from caloforge.io import ShowerWriter

    n_voxels = 40500
    n = int(size_gb * 2**30 / (4 * n_voxels))
    rng = np.random.default_rng(seed)
    block = 256
    with ShowerWriter(path, n_voxels, compression=None) as w:
        for lo in range(0, n, block):
            m = min(block, n - lo)
            showers = rng.exponential(1.0, (m, n_voxels)).astype(np.float32)
            showers[rng.random((m, n_voxels)) < 0.7] = 0.0  # DS3-like sparsity
            w.append(rng.uniform(1e3, 1e6, m), showers)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    path = Path(args.dir) / "caloforge_bench_io.h5"
    t0 = time.perf_counter()
    n = make_file(path, args.size_gb)
    print(f"wrote {n} showers, {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s")
    try:
        for mode in ("summarize", "iter_showers", "read_showers"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], check=True,
                                 capture_output=True, text=True, env=dict(os.environ))
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            rate = path.stat().st_size / 2**20 / rec["seconds"]
            print(f"{mode:13s} {rec['showers']} showers  {rec['seconds']:.1f} s  ({rate:.0f} MiB/s)  "
                  f"peak RSS {rec['peak_rss_mb']:.0f} MiB")
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
