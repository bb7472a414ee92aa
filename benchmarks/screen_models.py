"""Screen several models (or sampling options) on an independent validation file.

For each ``MODEL[@key=json,...]`` (``weights="raw"``: a model with ``ema_decay`` sampled
with its trained weights instead of their average) the script generates one shower per validation shower and
scores it with the CaloChallenge low-level classifier, after the protocol's voxel cut on both
samples (1 MeV for DS1), float32, 50 epochs by default: the quick stand-in for the full
protocol when choosing between training variants::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/screen_models.py runs/flows60s6/validation.h5 \\
        runs/flows60s7/flow-matching-photons/best@steps=4 runs/flows60s7/caloflow-photons/best@temperature=0.7

The AUCs compare the listed samples with each other only (fewer showers than the held-out
file); quote the chosen one with ``caloforge evaluate --classifier`` on the held-out file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_entry(text: str) -> tuple[str, dict]:
    """``'run/best@steps=4,solver="rk4"'`` → ``('run/best', {'steps': 4, 'solver': 'rk4'})``."""
    path, _, opts = text.partition("@")
    return path, {k: json.loads(v) for k, v in (o.split("=", 1) for o in opts.split(",") if o)}


def main() -> None:
    from screening import load_validation, low_level_auc, sample_like

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("validation", help="validation shower file, independent of the evaluation file")
    ap.add_argument("models", nargs="+", help="MODEL_DIR[@option=json,...]")
    ap.add_argument("--epochs", type=int, default=50, help="classifier epochs (official: 50)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--seed", type=int, default=1, help="generation seed")
    ap.add_argument("--no-cut", action="store_true", help="skip the protocol's voxel cut")
    args = ap.parse_args()

    from caloforge.evaluate import calochallenge
    from caloforge.generate import load_model

    reference = load_validation(args.validation)
    for entry in args.models:
        path, sampling = parse_entry(entry)
        model = load_model(path)
        if sampling.pop("weights", "sampling") == "raw":  # the trained weights, not their average (ema_decay)
            model.model.average = None
        dataset = calochallenge.dataset_of(model.geometry)
        cut = None if args.no_cut or dataset is None else calochallenge.voxel_cut(dataset)
        generated = sample_like(model, reference, seed=args.seed, sampling=sampling)
        r = low_level_auc(reference, generated, epochs=args.epochs, dtype=args.dtype, cut=cut)
        print(f"{entry}: AUC low {r['auc']:.4f} (best epoch {r['best_epoch']} of {r['epochs_run']}, "
              f"cut {cut} MeV, {r['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
