"""CPU cost of the Geant4 engine: CPU seconds per shower by geometry and incident energy (one core).

    .venv/bin/python benchmarks/bench_geant4.py [--geometries ds2,calogan] [--energies 1,10,50] [--n 20,10,4]
                                                [--particle electron] [--out docs/geant4-cost.json]

The time is the application's own CPU time per event (CLOCK_PROCESS_CPUTIME_ID around each
event, so start-up and the Python side are excluded); the figure to plan productions with is
the mean per GeV.  Each geometry runs in one application process, perpendicular incidence at
the readout centre, visible energy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time

import numpy as np

from caloforge.geant4.build import ensure_built
from caloforge.geant4.engine import gun_start
from caloforge.geant4.runner import Geant4Process
from caloforge.geometry import load_geometry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--geometries", default="ds2,ds3,calogan,atlas-4layer,ds1-photons,clic,ild")
    ap.add_argument("--energies", default="1,10,50", help="GeV")
    ap.add_argument("--n", default="20,10,4", help="showers at each energy")
    ap.add_argument("--particle", default="electron")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    energies = [float(e) for e in args.energies.split(",")]
    counts = [int(n) for n in args.n.split(",")]
    build = ensure_built()
    rng = np.random.default_rng(args.seed)
    rows = []
    print(f"Geant4 {build.info.get('geant4_version')} ({build.info.get('physics')}), {args.particle}, "
          f"CPU s per shower (ms per GeV)")
    for name in args.geometries.split(","):
        geo = load_geometry(name)
        wall = time.perf_counter()
        with Geant4Process(geo, build=build) as g4:
            cells = []
            for e_gev, n in zip(energies, counts):
                d = np.tile([0.0, 0.0, 1.0], (n, 1))
                start = gun_start(geo, np.zeros(n), np.zeros(n), d)
                out = g4.run(args.particle, rng.integers(1, 2**63 - 1, n, dtype=np.uint64),
                             np.full(n, e_gev * 1e3), start, d)
                cpu = float(out.cpu_seconds.mean())
                rows.append({"geometry": name, "energy_gev": e_gev, "n": n, "cpu_s_per_shower": cpu,
                             "ms_per_gev": 1e3 * cpu / e_gev})
                cells.append(f"{e_gev:g} GeV: {cpu:.3f} s ({1e3 * cpu / e_gev:.1f} ms/GeV)")
        print(f"{name:14s} " + "  ".join(cells) + f"   [{time.perf_counter() - wall:.0f} s wall]")
    if args.out:
        meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                "machine": platform.processor() or platform.machine(), "geant4": build.info, "particle": args.particle,
                "command": "benchmarks/bench_geant4.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()
                                                                      if k != "out")}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
