"""Training speed: milliseconds per generator iteration (critic steps included).

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--iterations 10] [--device cpu]

Times ``caloforge.train._train_iteration`` (the exact training step) on random
data for the shipped configs; the data values do not change the cost.  The seed's
figure for the photon config is 38 s per 1k iterations (38 ms/it) on a V100.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from caloforge.models import Preprocessing, build_model, count_parameters
from caloforge.train import _train_iteration, load_config, resolve_device

CONFIGS = Path(__file__).resolve().parents[1] / "caloforge" / "configs"


def bench(config: str, iterations: int, device: str) -> dict:
    cfg = load_config(CONFIGS / f"{config}.yaml")
    dev = resolve_device(device)
    n_vox = {"ds1-photons": 368, "ds1-pions": 533}[cfg.model.geometry]
    torch.manual_seed(0)
    model = build_model(cfg.model, [Preprocessing(256.0, 4194304.0, n_vox, cfg.model.geometry)]).to(dev).train()
    gan, tc = model.gans[0], cfg.training
    g, d = tc.generator_optimizer, tc.critic_optimizer
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=g.lr, betas=(g.beta1, g.beta2))
    opt_d = torch.optim.Adam(gan.critic.parameters(), lr=d.lr, betas=(d.beta1, d.beta2))
    x = (torch.rand(50_000, n_vox) * 1e-3).to(dev)
    c = torch.rand(50_000).to(dev)
    data_rng, noise_rng = torch.Generator().manual_seed(1), torch.Generator(device=dev).manual_seed(2)
    for _ in range(2):  # warm-up
        _train_iteration(gan, opt_g, opt_d, x, c, tc, data_rng, noise_rng)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iterations):
        _train_iteration(gan, opt_g, opt_d, x, c, tc, data_rng, noise_rng)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / iterations * 1e3
    return {"config": config, "device": str(dev), "threads": torch.get_num_threads(), "batch": tc.batch_size,
            "critic_steps": tc.critic_steps, "G_params": count_parameters(gan.generator),
            "D_params": count_parameters(gan.critic), "ms_per_iteration": round(ms, 1),
            "s_per_1k_iterations": round(ms, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", nargs="+", default=["caloshowergan-photons", "caloshowergan-pions", "demo"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    for name in args.configs:
        print(json.dumps(bench(name, args.iterations, args.device)))


if __name__ == "__main__":
    main()
