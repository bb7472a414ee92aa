"""Generation speed: milliseconds per shower at batch size 1, 100 and 10000.

    .venv/bin/python benchmarks/bench_generate.py [--threads 2] [--device cpu]

Runs the full :func:`caloforge.generate.generate` path (routing, network, clipping,
numpy conversion) with the shipped photon and pion architectures.  Weights are
freshly initialised: the cost does not depend on their values.  Compare with the
``ms_per_shower_cpu_b*`` columns of the CaloChallenge table (CaloShowerGAN on
ds1_pions, CaloShower2GAN/3GAN on ds1_photons).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from caloforge.generate import ShowerGenerator, generate
from caloforge.models import fit, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "caloforge" / "configs"
# showers generated per batch size: enough for a stable per-shower time
N_SHOWERS = {1: 300, 100: 5_000, 10_000: 40_000}


def loaded(config: str) -> ShowerGenerator:
    cfg = load_config(CONFIGS / f"{config}.yaml").model
    n_vox = {"ds1-photons": 368, "ds1-pions": 533}[cfg.geometry]
    torch.manual_seed(0)
    e = torch.tensor([256.0, 4194304.0], dtype=torch.float64)
    model = fit(cfg, torch.zeros(2, n_vox), e, {}).eval()  # untrained weights cost the same
    return ShowerGenerator(model, Path(config), cfg.geometry, n_vox, 256.0, 4194304.0, 0, None, asdict(cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", nargs="+", default=["caloshowergan-photons", "caloshowergan-pions"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    for name in args.configs:
        gen = loaded(name)
        row = {"config": name, "device": args.device, "threads": args.threads}
        for batch, n in N_SHOWERS.items():
            e = 256.0 * 2.0 ** rng.integers(0, 15, n)
            generate(gen, e[: min(n, 2 * batch)], batch_size=batch, device=args.device)  # warm-up
            t0 = time.perf_counter()
            generate(gen, e, batch_size=batch, device=args.device)
            row[f"ms_per_shower_b{batch}"] = round((time.perf_counter() - t0) / n * 1e3, 4)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
