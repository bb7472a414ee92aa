"""Does a higher readout threshold on generated showers lower the classifier's AUC?

A diagnostic: the flow-based models light up ten times too many small voxels
at low energy (docs/benchmarks-log.md, "What the 50-epoch classifier still sees").  This script
generates one shower per shower of an *independent* validation file, zeroes every voxel
below each threshold in turn (the same sample each time) and scores each with the
CaloChallenge low-level classifier (the official network and rule; float32 and the given
number of epochs).  If the small hits were what the classifier sees, a threshold that
removes them would lower the AUC::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/threshold_screen.py runs/flows60s7/caloflow-photons/best \\
        runs/flows60s6/validation.h5 --sampling temperature=0.7 --thresholds 0,0.3 --epochs 50
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a saved model directory (e.g. RUN/best)")
    ap.add_argument("validation", help="validation shower file, independent of the evaluation file")
    ap.add_argument("--sampling", action="append", default=[], metavar="KEY=JSON", help="generation option")
    ap.add_argument("--thresholds", default="0,0.1,0.3,1", help="comma-separated thresholds in MeV")
    ap.add_argument("--epochs", type=int, default=50, help="classifier epochs (official: 50)")
    ap.add_argument("--seed", type=int, default=1, help="generation seed")
    args = ap.parse_args()

    import numpy as np
    from screening import load_validation, low_level_auc, sample_like

    sampling = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.sampling)}
    reference = load_validation(args.validation)
    generated = sample_like(args.model, reference, seed=args.seed, sampling=sampling)
    for text in args.thresholds.split(","):
        threshold = float(text)
        showers = np.where(generated >= threshold, generated, 0.0).astype(generated.dtype)
        hits = float((showers > 0).sum(1).mean())
        result = low_level_auc(reference, showers, epochs=args.epochs)  # the reference keeps its small hits
        print(f"threshold {threshold:g} MeV: {hits:.1f} hits per shower, AUC low {result['auc']:.3f} "
              f"(best epoch {result['best_epoch']} of {result['epochs_run']}, {result['seconds']:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
