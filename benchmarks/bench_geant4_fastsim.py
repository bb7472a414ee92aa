"""The speed-up a Geant4 user gets from a caloforge model: full vs fast simulation in the same program.

    nice -n 10 .venv/bin/python benchmarks/bench_geant4_fastsim.py --geometry ds1-photons \\
        --model gan=runs/gan/best --model student=runs/student/best \\
        --model fm-1=runs/fm/best@steps=1 --model fm-4=runs/fm/best@steps=4 \\
        --energies 1,10,100 --n-full 20,10,5 --n-fast 50 -o bench.json

One ``caloforge-g4-fast`` process per model, one thread (Geant4 sequential, LibTorch intra-op threads
1): photons along z through the geometry's upstream material; for each energy first the full
simulation (request ``fast off``: the model declines every particle, the same binary, geometry
and physics), then the fast simulation (``fast on``).  Each event's CPU time is the application's own
(CLOCK_PROCESS_CPUTIME_ID from the event's start to its record, inference included); the model's
share is the CPU time inside the network.  The fast events are run twice: network per event (batch 1
here, Par04's form) and per block (``fast batch block``: one call for all ``--n-fast`` events, each
event charged its share).  Warm-up events (the first inference, physics tables) are
run and dropped.  A model is a run directory or checkpoint (exported to TorchScript here; ``@steps=N``
sets the flow-matching ODE steps first) or an existing ``.pt`` export.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def export(spec: str, workdir: Path) -> tuple[Path, dict]:
    """(TorchScript path, options) for ``PATH[@steps=N]``."""
    from caloforge import checkpoint
    from caloforge.export import export_model

    path, _, opt = spec.partition("@")
    options = {k: int(v) for k, v in (o.split("=") for o in opt.split(",") if o)}
    if path.endswith(".pt") and not options:
        return Path(path), {}
    model, meta = checkpoint.restore_model(path, device="cpu")
    if options:
        model.set_sampling(**options)
    out = workdir / f"{abs(hash(spec))}.pt"
    export_model(model, "torchscript", out, checkpoint_meta=meta, source=path)
    return out, dict(options, parameters=int(sum(p.numel() for p in model.export_module().parameters())))


def run_events(g4, geometry, energy_mev: float, n: int, seed0: int):
    from caloforge.geant4.engine import gun_start

    d = np.tile([0.0, 0.0, 1.0], (n, 1))
    start = gun_start(geometry, np.zeros(n), np.zeros(n), d)
    return g4.run("photon", np.arange(seed0, seed0 + n), np.full(n, energy_mev), start, d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--geometry", default="ds1-photons")
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH[@steps=N]")
    ap.add_argument("--energies", default="1,10,100", help="GeV")
    ap.add_argument("--n-full", default="20,10,5", help="full-simulation events per energy")
    ap.add_argument("--n-fast", type=int, default=50, help="fast-simulation events per energy")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("-o", "--output", default="bench-geant4-fastsim.json")
    args = ap.parse_args()

    from caloforge.geant4.build import ensure_built
    from caloforge.geant4.runner import Geant4Process
    from caloforge.geometry import load_geometry

    geo = load_geometry(args.geometry)
    build = ensure_built(fast=True)
    energies = [float(e) for e in args.energies.split(",")]
    n_full = [int(x) for x in args.n_full.split(",")]
    n_full = n_full + [n_full[-1]] * (len(energies) - len(n_full))
    work = Path(tempfile.mkdtemp(prefix="bench-g4fast-"))
    rows, full_done = [], {}
    for k, item in enumerate(args.model):
        name, _, spec = item.partition("=")
        path, info = export(spec, work)
        with Geant4Process(geo, build=build, fast_model=path) as g4:
            run_events(g4, geo, 10_000.0, args.warmup, 10**6)  # warm-up: first inference, tables
            for e, nf in zip(energies, n_full):
                if e not in full_done:  # full simulation: once, in the first model's process
                    g4.set_fast(False)
                    full = run_events(g4, geo, e * 1e3, nf, 1)
                    g4.set_fast(True)
                    full_done[e] = full.cpu_seconds
                fast = run_events(g4, geo, e * 1e3, args.n_fast, 1)
                g4.set_fast_batch("block")  # the same events, one network call for all of them
                block = run_events(g4, geo, e * 1e3, args.n_fast, 1)
                g4.set_fast_batch("event")
                t_full, t_fast = full_done[e], fast.cpu_seconds
                row = {"model": name, "spec": spec, **info, "energy_gev": e,
                       "full_ms": 1e3 * float(np.mean(t_full)), "full_ms_median": 1e3 * float(np.median(t_full)),
                       "n_full": len(t_full), "fast_ms": 1e3 * float(np.mean(t_fast)),
                       "fast_ms_median": 1e3 * float(np.median(t_fast)), "n_fast": len(t_fast),
                       "model_ms": 1e3 * float(np.mean(fast.model_cpu)),
                       "model_share": float(fast.model_cpu.sum() / t_fast.sum()),
                       "fast_fraction": float((fast.n_fast > 0).mean()),
                       "speedup": float(np.mean(t_full) / np.mean(t_fast)),
                       "block_fast_ms": 1e3 * float(np.mean(block.cpu_seconds)),
                       "block_model_ms": 1e3 * float(np.mean(block.model_cpu)),
                       "block_speedup": float(np.mean(t_full) / np.mean(block.cpu_seconds))}
                rows.append(row)
                print(f"{name:10s} {e:6.0f} GeV  full {row['full_ms']:9.2f} ms  fast {row['fast_ms']:7.3f} ms "
                      f"(model {100 * row['model_share']:4.1f} %)  speed-up {row['speedup']:8.1f}x  "
                      f"batched {row['block_fast_ms']:7.3f} ms ({row['block_speedup']:8.1f}x)  "
                      f"fast showers {100 * row['fast_fraction']:.0f} %", flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
              platform.machine(), "cpu": _cpu(), "geometry": geo.name, "build": build.info, "threads": 1,
              "results": rows}
    Path(args.output).write_text(json.dumps(report, indent=1, default=str) + "\n")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
