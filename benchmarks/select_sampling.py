"""Choose a generation option (e.g. caloflow's voxel-latent temperature) on a validation file.

The option must not be chosen on the file the model is finally evaluated on: this script
generates one shower per shower of an *independent* validation file (another simulator seed)
for every value, and scores each sample with a screening version of the CaloChallenge
low-level classifier (the official network and rule, float32 and 5 epochs unless told
otherwise: minutes instead of an hour per value).  The value with the lowest AUC is printed
last; quote the model at that value with the full protocol on the held-out file.  For example::

    .venv/bin/caloforge simulate --preset ds1-photons --scale 0.1 --seed 2000 -o runs/flows60s6/validation.h5
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/select_sampling.py runs/flows60s6/caloflow-envelope \\
        runs/flows60s6/validation.h5 --option temperature --values 1,0.9,0.8,0.7,0.6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a saved model directory (e.g. RUN/best)")
    ap.add_argument("validation", help="validation shower file, independent of the evaluation file")
    ap.add_argument("--option", required=True, help="the family's sampling option, e.g. temperature or steps")
    ap.add_argument("--values", required=True, help="comma-separated values to try")
    ap.add_argument("--epochs", type=int, default=5, help="classifier epochs (official: 50)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--seed", type=int, default=1, help="generation seed")
    args = ap.parse_args()

    from screening import load_validation, low_level_auc, sample_like

    from caloforge.generate import load_model

    reference = load_validation(args.validation)
    gen = load_model(args.model)
    scores = {}
    for text in args.values.split(","):
        t0 = time.perf_counter()
        generated = sample_like(gen, reference, seed=args.seed, sampling={args.option: json.loads(text)})
        scores[text] = low_level_auc(reference, generated, epochs=args.epochs, dtype=args.dtype)["auc"]
        print(f"{args.option}={text}: screening AUC low {scores[text]:.3f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    best = min(scores, key=scores.get)
    print(f"best on {args.validation}: {args.option}={best} (AUC {scores[best]:.3f})")


if __name__ == "__main__":
    main()
