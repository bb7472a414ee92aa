"""Fidelity of a CaloShowerGAN config on the ds1-photons reference preset after a fixed budget.

Runs the demo chain (simulate → train → generate → evaluate, :func:`caloforge.demo.run_demo`)
with a bigger training set and time budget, then prints the CaloChallenge-style numbers
(E_tot χ² per energy point, classifier AUC low/high level, FPD/KPD ×10³) next to the
CaloChallenge 2022 rows of the GAN submissions.  The reference simulator stands in for
Geant4, so compare orders of magnitude, not digits.

Run:  .venv/bin/python benchmarks/bench_fidelity.py --minutes 30 --scale 0.5 --holdout-scale 0.1
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from caloforge.demo import run_demo

ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "calochallenge_2022_final_results.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget")
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--holdout-scale", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-iterations", type=int, default=10**9, help="default: only the time budget stops training")
    ap.add_argument("--output", default="runs/fidelity")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    result = run_demo(args.output, scale=args.scale, holdout_scale=args.holdout_scale, safety_minutes=args.minutes,
                      max_iterations=args.max_iterations, config=args.config, threads=args.threads, seed=args.seed,
                      progress=False)
    metrics = json.loads((result.report.parent / "metrics.json").read_text())
    clf = metrics.get("classifier") or {}
    print(f"\nconfig {args.config}, {args.minutes:g} min training, "
          f"{result.headline['train_iterations']} iterations (best {result.headline['best_iteration']})")
    print(f"report: {result.report}")
    print(f"E_tot/E_inc chi2/ndf (all points): {result.headline['etot_chi2_ndf']:.2f}")
    print("  per point: " + ", ".join(f"{p['label']} {p['chi2_ndf']:.1f}"
                                      for p in metrics["total_energy"].get("per_point", [])))
    fpd, kpd = metrics.get("fpd") or {}, metrics.get("kpd") or {}
    print(f"FPD x1e3 {fpd.get('value', float('nan')) * 1e3:.2f} ± {fpd.get('error', float('nan')) * 1e3:.2f}   "
          f"KPD x1e3 {kpd.get('value', float('nan')) * 1e3:.4f} ± {kpd.get('error', float('nan')) * 1e3:.4f}")
    for mode in ("low", "high"):
        if clf.get(mode):
            print(f"classifier AUC {mode}-level {clf[mode]['auc']:.3f}  JSD {clf[mode].get('jsd', float('nan')):.3f}")
    print(f"timings [s]: {json.dumps({k: round(v) for k, v in result.timings.items()})}")
    if ANCHORS.exists():
        print("\nCaloChallenge 2022 (Geant4 DS1), GAN rows:")
        with ANCHORS.open() as f:
            for row in csv.DictReader(f):
                if row["dataset"].startswith("ds1") and ("GAN" in row["model"] or row["model"] == "GEANT4"):
                    print(f"  {row['dataset']:12s} {row['model']:16s} FPD {row['fpd_x1e3']:>8s}  KPD {row['kpd_x1e3']:>7s}"
                          f"  AUC low {row['auc_low_level']:>7s}  high {row['auc_high_level']:>7s}")


if __name__ == "__main__":
    main()
