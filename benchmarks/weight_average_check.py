"""The held-out loss of a run's checkpoints with their weight average and with the trained
weights (a flow family trained with ``model.ema_decay`` > 0 stores both).

Rows: every kept checkpoint; columns: each validation metric (``val_cfm``, ``val_nll`` …)
for the average and for the raw weights, on the same held-out showers (the trainer's own
validation split and scoring subset of ``--max-showers``) and the same noise::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/weight_average_check.py runs/ema10c/fm runs/flows60/train.h5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory trained with model.ema_decay > 0")
    ap.add_argument("data", help="the run's training file (its validation split is rebuilt)")
    ap.add_argument("--max-showers", type=int, default=10000)
    args = ap.parse_args()

    import torch

    from caloforge.checkpoint import list_checkpoints, restore_model
    from caloforge.io import read_showers
    from caloforge.models.base import Batch
    from caloforge.train import _score_subset, split_validation

    torch.set_num_threads(1)
    training = json.loads((Path(args.run) / "run.json").read_text())["config"]["training"]
    _, val = split_validation(read_showers(args.data), training["validation_fraction"], training["seed"])
    keep = _score_subset(len(val), SimpleNamespace(score_max_showers=args.max_showers, seed=training["seed"]))
    if keep is not None:  # the trainer's own scoring subset
        val = val.select(keep)
    batch = Batch(torch.as_tensor(val.showers), torch.as_tensor(val.incident_energy), {})
    print(f"{args.run}: {len(val)} held-out showers")
    for iteration, path in list_checkpoints(args.run):
        model, _ = restore_model(path)
        if model.average is None:
            raise SystemExit(f"{path}: trained without model.ema_decay")
        averaged = model.validation_metrics(batch)
        model.average = None
        raw = model.validation_metrics(batch)
        print(f"{iteration:>8}  " + "  ".join(f"{k} {averaged[k]:.4f} (raw {raw[k]:.4f})" for k in averaged),
              flush=True)


if __name__ == "__main__":
    main()
