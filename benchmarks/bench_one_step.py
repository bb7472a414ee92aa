"""One-shot generators side by side: ms per shower through ``caloforge.generate``.

The issue asks for the one-step student's cost per shower on one core at batch 10 000
within 2× of the CaloShowerGAN photon generator's.  On a shared machine only ratios
measured in one process hold, so every model is timed in turn, ``--repeats`` times, in
alternating order, and the table gives the median per model and its ratio to the first.

``--legacy-decode`` adds a row per flow-family model with the decode that caloforge used
before the float32 envelope (float64 voxels, the sorted water-filling, the whole batch in
one pass): the same model, the same noise, the old arithmetic.  ``--whole-batch`` adds a
row per model that decodes the whole batch in one pass instead of
:attr:`~caloforge.models.base.ShowerModel.decode_rows` at a time::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_one_step.py --legacy-decode --whole-batch \\
        gan=runs/flows60s7/gan-photons-4it/best student=runs/flows60s7/student-photons/best

Engines: ``pytorch`` (what ``generate`` runs below 20 000 showers) by default; ``--engine
onnxruntime`` times the exported graph in ONNX Runtime (what ``generate`` runs for large
requests).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone

import numpy as np

SHOWERS = {1: 200, 100: 2_000, 10_000: 10_000}


@contextmanager
def _whole_batch(gen):
    """Decode every batch in one pass (the class property replaced while timing)."""
    cls = type(gen.model)
    original = cls.decode_rows
    cls.decode_rows = property(lambda self: 1 << 62)
    try:
        yield
    finally:
        cls.decode_rows = original


@contextmanager
def _legacy_decode(gen):
    """The decode before the float32 envelope: float64 throughout, sorted water-filling, whole batches."""
    import torch

    from caloforge.models.parts import envelope

    rep = gen.model.representation
    original_decode, original_newton = rep.decode, envelope.water_fill_newton
    rep.decode = lambda y1, y2, e, dtype=torch.float64: original_decode(y1, y2, e, dtype=torch.float64)
    envelope.water_fill_newton = envelope.water_fill_sorted
    try:
        with _whole_batch(gen):
            yield
    finally:
        rep.decode, envelope.water_fill_newton = original_decode, original_newton


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="LABEL=checkpoint or run directory; the first is the reference")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="1,100,10000")
    ap.add_argument("--engine", default="pytorch", choices=["pytorch", "onnxruntime"])
    ap.add_argument("--legacy-decode", action="store_true")
    ap.add_argument("--whole-batch", action="store_true")
    args = ap.parse_args()

    import torch

    from caloforge.generate import generate, load_model

    torch.set_num_threads(1)
    rows = []
    for spec in args.models:
        label, _, path = spec.partition("=")
        gen = load_model(path)
        rows.append((label, gen, None))
        if args.whole_batch:
            rows.append((f"{label}, whole batch in one pass", gen, _whole_batch))
        if args.legacy_decode and getattr(getattr(gen.model, "representation", None), "envelope", None) is not None:
            rows.append((f"{label}, float64 sorted decode, whole batch (before)", gen, _legacy_decode))
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    times: dict[tuple[str, int], list[float]] = {}
    started = datetime.now(timezone.utc)
    for repeat in range(args.repeats):
        order = rows if repeat % 2 == 0 else rows[::-1]
        for label, gen, variant in order:
            for batch in batches:
                n = SHOWERS.get(batch, max(batch, 1000))
                e = np.exp(rng.uniform(np.log(gen.e_min), np.log(gen.e_max), n))
                with variant(gen) if variant else nullcontext():
                    generate(gen, e[: min(n, 2 * batch, 1000)], batch_size=batch, engine=args.engine)  # warm-up
                    t0 = time.perf_counter()
                    generate(gen, e, batch_size=batch, engine=args.engine)
                    times.setdefault((label, batch), []).append((time.perf_counter() - t0) / n * 1e3)
    print(f"{started:%Y-%m-%d %H:%M}–{datetime.now(timezone.utc):%H:%M} UTC, engine {args.engine}, one thread, "
          f"median of {args.repeats} alternating repeats, ms per shower (ratio to {rows[0][0]})\n")
    print("| model | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|" + "---|" * len(batches))
    ref = {b: statistics.median(times[(rows[0][0], b)]) for b in batches}
    for label, _, _ in rows:
        cells = []
        for b in batches:
            m = statistics.median(times[(label, b)])
            cells.append(f"{m:.4g} ({m / ref[b]:.2f}×)")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
