"""Speed and memory of the reference simulator (run on demand; figures go to docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_simulate.py            # everything (~3 min on 2 cores)
    .venv/bin/python benchmarks/bench_simulate.py --skip-preset

Measures
* wall time of the full ``ds1-photons`` preset (121k showers, 256 MeV … 4.2 TeV) streamed
  to an HDF5 file with 2 worker processes (target: ≤ 3 minutes on 2 cores);
* showers per second on one core at 1 GeV, 65 GeV and 1 TeV for ``ds1-photons``,
  ``calogan`` and ``clic`` (photons, perpendicular; pions for reference);
* peak resident memory of the main process and of the workers (``getrusage``).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


import caloforge.simulate as sim  # noqa: E402
from caloforge.geometry import load_geometry  # noqa: E402
from caloforge.io import count_showers  # noqa: E402


def rate(geometry: str, particle: str, energy: float, min_seconds: float = 1.5) -> float:
    """Showers per second on one core (simulation only, in memory)."""
    sim.simulate(geometry, particle, [energy] * 16, seed=99)  # warm-up (imports, caches)
    n, elapsed, done = 64, 0.0, 0
    while elapsed < min_seconds:
        t0 = time.perf_counter()
        sim.simulate(geometry, particle, [energy] * n, seed=done)
        elapsed += time.perf_counter() - t0
        done += n
        n = min(2 * n, max(64, 2**22 // load_geometry(geometry).n_voxels))  # bound memory
    return done / elapsed


def peak_mib() -> tuple[float, float]:
    kib_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kib_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return kib_self / 1024, kib_children / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-preset", action="store_true", help="skip the full ds1-photons preset run")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print(f"# caloforge.simulate benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {sys.version.split()[0]}")
    if not args.skip_preset:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ds1-photons.h5"
            t0 = time.perf_counter()
            n = sim.simulate_preset_to_file(path, "ds1-photons", seed=0, workers=args.workers)
            wall = time.perf_counter() - t0
            size = path.stat().st_size / 2**20
            assert count_showers(path) == n
        print(f"ds1-photons preset: {n} showers in {wall:.1f} s with {args.workers} workers "
              f"({n / wall:.0f} showers/s, file {size:.0f} MiB gzip)")
    print("\nshowers/s per core (photons, perpendicular; pions in brackets)")
    print(f"{'geometry':<14}{'1 GeV':>18}{'65 GeV':>18}{'1 TeV':>18}")
    for geo in ("ds1-photons", "calogan", "clic"):
        cells = []
        for e in (1e3, 65e3, 1e6):
            pion_geo = "ds1-pions" if geo == "ds1-photons" else geo
            cells.append(f"{rate(geo, 'photon', e):8.0f} ({rate(pion_geo, 'pion', e, 0.8):6.0f})")
        print(f"{geo:<14}" + "".join(f"{c:>18}" for c in cells))
    me, children = peak_mib()
    print(f"\npeak RSS: main process {me:.0f} MiB, largest worker {children:.0f} MiB")


if __name__ == "__main__":
    main()
