"""Choose a generation option (e.g. caloflow's voxel-latent temperature) on a validation file.

The option must not be chosen on the file the model is finally evaluated on: this script
generates one shower per shower of an *independent* validation file (another simulator seed)
for every value, and scores each sample with a screening version of the CaloChallenge
low-level classifier (the official network and rule, float32 and 5 epochs unless told
otherwise: minutes instead of an hour per value).  The value with the lowest AUC is printed
last; quote the model at that value with the full protocol on the held-out file.  Issue 11::

    .venv/bin/caloforge simulate --preset ds1-photons --scale 0.1 --seed 2000 -o runs/flows60s6/validation.h5
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/select_sampling.py runs/flows60s6/caloflow-envelope \\
        runs/flows60s6/validation.h5 --option temperature --values 1,0.9,0.8,0.7,0.6
"""

from __future__ import annotations

import argparse
import json
import time


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

    import torch

    from caloforge.evaluate import calochallenge
    from caloforge.evaluate.classifier import classifier_test
    from caloforge.generate import generate, load_model
    from caloforge.io import read_showers

    torch.set_num_threads(1)
    reference = read_showers(args.validation)
    gen = load_model(args.model)
    settings = calochallenge.classifier_settings({"epochs": args.epochs, "dtype": args.dtype})
    scores = {}
    for text in args.values.split(","):
        value = json.loads(text)
        t0 = time.perf_counter()
        sample = generate(gen, reference.incident_energy, conditions=reference.conditions or None, seed=args.seed,
                          sampling={args.option: value})
        result = classifier_test((reference.incident_energy, reference.showers),
                                 (sample.incident_energy, sample.showers), mode="low", seed=0, percent=False,
                                 **settings)
        scores[text] = result["auc"]
        print(f"{args.option}={text}: screening AUC low {result['auc']:.3f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    best = min(scores, key=scores.get)
    print(f"best on {args.validation}: {args.option}={best} (AUC {scores[best]:.3f})")


if __name__ == "__main__":
    main()
