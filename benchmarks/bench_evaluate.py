"""Benchmark of the evaluator (run on demand, not in the tests).

1. ``ds1``: features + histograms (inclusive and per energy) + FPD/KPD for 100k vs
   100k DS1-photon showers of the reference simulator; target ≤ 2 minutes on 2 cores.
2. ``ds3``: a streamed evaluation of two DS3-sized files (50k showers × 40 500
   voxels each, 8 GB of float32 per file uncompressed, as the CaloChallenge DS3
   files); reports wall time and the peak RSS of the evaluating process.

Each evaluation runs in a child process so that its peak RSS is its own.  Input
files are simulated once and cached in ``--workdir`` (in the presets' energy convention:
calibrated for DS1/DS3).  ``--protocol`` runs one or both evaluation protocols;
``--classifier`` adds the classifier test (``--cls-epochs`` / ``--cls-hidden`` /
``--cls-max`` override the protocol's classifier for a timing on CPU).

    .venv/bin/python benchmarks/bench_evaluate.py ds1 ds3 --workdir /tmp/caloforge-bench
    .venv/bin/python benchmarks/bench_evaluate.py ds1 --n-ds1 10000 --protocol calochallenge \
        --classifier --cls-epochs 1          # one epoch of the official 2×2048 classifier
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DS1_ENERGIES = [2.0**k for k in range(8, 23)]  # 256 MeV … 4.19 TeV, the DS1 photon points


def _simulate(path: Path, geometry: str, particle: str, energies, n: int, seed: int) -> None:
    if path.exists():
        return
    from caloforge.simulate import simulate_to_file

    t0 = time.perf_counter()
    count = simulate_to_file(path, geometry, particle, energies, n, seed=seed, workers=2)
    print(f"  simulated {count} showers → {path} in {time.perf_counter() - t0:.0f} s "
          f"({path.stat().st_size / 2**20:.0f} MiB)", flush=True)


def child(ref: str, gen: str, geometry: str, report: str | None, options: str) -> None:
    """Evaluate and print one JSON line: timings and peak RSS of this process."""
    from caloforge.evaluate import compare, write_report

    opts = json.loads(options)
    t0 = time.perf_counter()
    result = compare(ref, gen, geometry, per_energy=True, classifier=opts["classifier"], fpd_kpd=True, seed=0,
                     protocol=opts["protocol"], classifier_settings=opts["cls"] or None,
                     classifier_max=opts["cls_max"])
    t_compare = time.perf_counter() - t0
    rss_compare = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t_report = None
    if report:
        t0 = time.perf_counter()
        write_report(result, report)
        t_report = time.perf_counter() - t0
    print(json.dumps({
        "n_reference": result.metrics["n_reference"], "n_generated": result.metrics["n_generated"],
        "n_features": result.metrics["summary"]["n_features"], "compare_s": round(t_compare, 1),
        "steps_s": {k: round(v, 1) for k, v in result.metrics["timings_s"].items()},
        "report_s": None if t_report is None else round(t_report, 1),
        "peak_rss_compare_mib": round(rss_compare),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "headline": result.headline,
        "classifier": {k: {x: v.get(x) for x in ("auc", "n_train", "best_epoch", "epochs_run", "n_hidden")}
                       for k, v in (result.metrics["classifier"] or {}).items() if isinstance(v, dict)},
    }))


def run_child(ref: Path, gen: Path, geometry: str, report: Path | None, options: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", str(ref), str(gen), geometry, str(report or ""), json.dumps(options)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", default=["ds1", "ds3"], choices=["ds1", "ds3"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/caloforge-bench"))
    parser.add_argument("--n-ds1", type=int, default=100_000)
    parser.add_argument("--n-ds3", type=int, default=50_000)
    parser.add_argument("--report", action="store_true", help="also time write_report (plots + HTML)")
    parser.add_argument("--protocol", nargs="*", default=["calochallenge", "caloforge"],
                        choices=["calochallenge", "caloforge"])
    parser.add_argument("--classifier", action="store_true", help="also run the classifier test")
    parser.add_argument("--cls-epochs", type=int, default=None)
    parser.add_argument("--cls-hidden", type=int, default=None)
    parser.add_argument("--cls-max", type=int, default=100_000, help="showers per sample for the low-level classifier")
    args = parser.parse_args()
    cls = {k: v for k, v in (("epochs", args.cls_epochs), ("n_hidden", args.cls_hidden)) if v is not None}

    def evaluate(ref: Path, gen: Path, geometry: str, tag: str) -> None:
        for protocol in args.protocol:
            opts = {"protocol": protocol, "classifier": args.classifier, "cls": cls, "cls_max": args.cls_max}
            res = run_child(ref, gen, geometry, args.workdir / f"report-{tag}" if args.report else None, opts)
            print(tag, protocol, json.dumps(res), flush=True)

    args.workdir.mkdir(parents=True, exist_ok=True)
    if "ds1" in args.which:
        per = args.n_ds1 // len(DS1_ENERGIES) + 1
        ref, gen = args.workdir / f"ds1_ref_{args.n_ds1}.h5", args.workdir / f"ds1_gen_{args.n_ds1}.h5"
        _simulate(ref, "ds1-photons", "photon", DS1_ENERGIES, per, seed=1)
        _simulate(gen, "ds1-photons", "photon", DS1_ENERGIES, per, seed=2)
        evaluate(ref, gen, "ds1-photons", "ds1")
    if "ds3" in args.which:
        ref, gen = args.workdir / f"ds3_ref_{args.n_ds3}.h5", args.workdir / f"ds3_gen_{args.n_ds3}.h5"
        _simulate(ref, "ds3", "electron", "log:1GeV:1TeV", args.n_ds3, seed=1)
        _simulate(gen, "ds3", "electron", "log:1GeV:1TeV", args.n_ds3, seed=2)
        evaluate(ref, gen, "ds3", "ds3")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] or None, sys.argv[6])
    else:
        main()
