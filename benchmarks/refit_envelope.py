"""Give a caloflow / flow-matching model trained before the fraction envelope existed its envelope.

The envelope (:class:`caloforge.models.parts.envelope.FractionEnvelope`) is fitted on the model's
training showers only (the same validation split as the run, the same dequantisation seed as
``fit_state``); the weights are not touched, so the copy costs no training.  Used by the issue-11
benchmark to measure the envelope on the 60-CPU-minute caloflow of ``runs/flows60`` without
retraining it::

    .venv/bin/python benchmarks/refit_envelope.py runs/flows60/caloflow-photons/best runs/flows60/train.h5 \\
        runs/flows60s6/caloflow-envelope
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("training_file", type=Path)
    ap.add_argument("output", type=Path, help="directory for the copied checkpoint (created)")
    ap.add_argument("--bins", type=int, default=32)
    args = ap.parse_args()

    from dataclasses import replace

    from caloforge.checkpoint import restore_model
    from caloforge.io import read_showers
    from caloforge.train import split_validation

    model, meta = restore_model(args.checkpoint)
    training = meta["training"]
    data, _ = split_validation(read_showers(args.training_file), training["validation_fraction"], training["seed"])
    config = replace(model.config, envelope_bins=args.bins)
    # the family's own fit, as at the start of training: same subsample, same dequantisation draws
    fitted = type(model).fit_state(config, torch.as_tensor(data.showers), torch.as_tensor(data.incident_energy),
                                   {k: torch.as_tensor(v) for k, v in data.conditions.items()}, model.geometry,
                                   str(args.training_file))
    envelope = fitted["representation"]["envelope"]
    meta = json.loads((args.checkpoint / "config.json").read_text())  # the file as saved, to copy with the envelope
    meta["state"]["representation"]["envelope"] = envelope
    meta["model"]["envelope_bins"] = args.bins
    args.output.mkdir(parents=True, exist_ok=False)
    shutil.copy2(args.checkpoint / "model.safetensors", args.output / "model.safetensors")
    (args.output / "config.json").write_text(json.dumps(meta, indent=1))
    print(f"{args.output}: envelope of {len(envelope['max_fraction'])} energy bins "
          f"from {len(data)} training showers")


if __name__ == "__main__":
    main()
