"""Training speed: ms per iteration of the shipped configs, and data-parallel throughput.

    .venv/bin/python benchmarks/bench_train.py [--threads 1] [--iterations 10] [--device cpu]
    .venv/bin/python benchmarks/bench_train.py --data-parallel [--config demo] [--iterations 300]

The first form times one ``training_step`` of each family's model (critic steps
included for GANs) on random data; the data values do not change the cost.  The
seed's figure for the CaloShowerGAN photon config is 38 ms per iteration on a V100.

``--data-parallel`` runs ``caloforge train`` on a simulated DS1-photon file with the
same global batch as 1 process × 1 thread, 1 process × 2 threads and 2 processes ×
1 thread (``--nproc 2``, gloo on the loopback), and reports showers per second
from each run's log (showers = iterations × global batch × (critic steps + 1)).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from caloforge.models import BatchSource, count_parameters, fit, load_config
from caloforge.runtime import resolve_device

CONFIGS = Path(__file__).resolve().parents[1] / "caloforge" / "configs"


def bench(config: str, iterations: int, device: str) -> dict:
    cfg = load_config(CONFIGS / f"{config}.yaml")
    dev = resolve_device(device)
    n_vox = {"ds1-photons": 368, "ds1-pions": 533}[cfg.model.geometry]
    torch.manual_seed(0)
    showers = torch.rand(50_000, n_vox) * 10.0
    energy = 256.0 * 2.0 ** torch.randint(0, 15, (50_000,)).double()
    model = fit(cfg.model, showers, energy, {}).to(dev).train()
    optimizers = model.configure_optimizers()
    data = BatchSource(showers.to(dev), energy.to(dev), {}, cfg.training.batch_size, torch.Generator().manual_seed(1))
    noise = torch.Generator(device=dev).manual_seed(2)
    for _ in range(2):  # warm-up
        model.training_step(data, optimizers, noise)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iterations):
        model.training_step(data, optimizers, noise)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / iterations * 1e3
    params = {name: count_parameters(getattr(model, name)) for name in ("generator", "critic") if hasattr(model, name)}
    return {"config": config, "family": cfg.model.name, "device": str(dev), "threads": torch.get_num_threads(),
            "batch": cfg.training.batch_size, "params": params, "ms_per_iteration": round(ms, 1)}


def data_parallel(config: str, iterations: int) -> list[dict]:
    from caloforge.io import write_showers
    from caloforge.simulate import simulate_preset

    cfg = load_config(CONFIGS / f"{config}.yaml" if not Path(config).exists() else config)
    steps = getattr(cfg.model, "critic_steps", 0) + 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        d = simulate_preset("ds1-photons", seed=0, scale=0.05, progress=False)
        write_showers(tmp / "train.h5", d.incident_energy, d.showers)
        for nproc, threads in ((1, 1), (1, 2), (2, 1)):
            out = tmp / f"run-{nproc}x{threads}"
            cmd = [sys.executable, "-m", "caloforge", "train", "--config", config, "--data", str(tmp / "train.h5"),
                   "-o", str(out), "--no-progress", "--max-iterations", str(iterations), "--threads", str(threads),
                   "--nproc", str(nproc)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            wall = time.perf_counter() - t0
            with open(out / "log.csv") as f:
                log = list(csv.DictReader(f))
            # the loop's own clock: from the first to the last logged iteration (start-up excluded)
            if len(log) < 2:
                raise SystemExit(f"{config}: log_every is too coarse for {iterations} iterations; use more iterations")
            first, last = log[0], log[-1]
            its = int(last["iteration"]) - int(first["iteration"])
            secs = float(last["elapsed_s"]) - float(first["elapsed_s"])
            rows.append({"processes": nproc, "threads_per_process": threads, "global_batch": cfg.training.batch_size,
                         "iterations": iterations, "showers_per_s": round(its * cfg.training.batch_size * steps / secs),
                         "ms_per_iteration": round(secs / its * 1e3, 2), "wall_s_incl_startup": round(wall, 1),
                         "final_loss": {k: float(v) for k, v in last.items() if k not in ("iteration", "elapsed_s")}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", nargs="+", default=["caloshowergan-photons", "caloshowergan-pions", "demo"])
    ap.add_argument("--data-parallel", action="store_true", help="1 vs 2 processes with `caloforge train --nproc`")
    ap.add_argument("--config", default="demo", help="with --data-parallel")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}")
    if args.data_parallel:
        for row in data_parallel(args.config, max(args.iterations, 50)):
            print(json.dumps(row))
        return
    for name in args.configs:
        print(json.dumps(bench(name, args.iterations, args.device)))


if __name__ == "__main__":
    main()
