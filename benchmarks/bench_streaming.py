"""Peak memory of training from a file: in memory vs streamed (``training.stream``), by file size.

    # the docs' table (a few CPU-minutes: files of synthetic showers, a few iterations each)
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_streaming.py
    # one case, larger files
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_streaming.py --cases bibae-ild-angled-cpu:ild-angled \\
        --rows 4000 16000 --modes stream

Each (config, geometry, rows, mode) trains ``--iterations`` iterations in a fresh child process
and reports that process's peak resident memory (``resource.getrusage(RUSAGE_CHILDREN)``,
``ru_maxrss``), so the numbers are what ``caloforge train`` needs, imports and all.  The files
hold synthetic sparse showers (≈ 10 % of cells hit, exponential energies) written without
compression: memory does not depend on the values, and an uncompressed file costs no CPU
to decompress.  ``ds2`` uses the CaloShowerGAN MLP (the family the DS2 flow benchmarks compare with).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CASES = ("bibae-ild-angled-cpu:ild-angled", "gan3d-clic-cpu:clic-angled", "caloshowergan:ds2")


def make_file(path: Path, geometry: str, rows: int, seed: int = 0) -> Path:
    """``rows`` synthetic showers (10–100 GeV, θ 60°–120°) written chunk by chunk (bounded memory)."""
    from caloforge.geometry import load_geometry
    from caloforge.io import ShowerWriter

    if path.exists():
        return path
    n_vox = load_geometry(geometry).n_voxels
    rng = np.random.default_rng(seed)
    step = max(1, (32 << 20) // (4 * n_vox))
    with ShowerWriter(path, n_vox, conditions=("incident_theta",), compression=None) as w:
        for lo in range(0, rows, step):
            n = min(step, rows - lo)
            energy = rng.uniform(1e4, 1e5, n)
            showers = rng.exponential(1.0, (n, n_vox)).astype(np.float32)
            showers *= rng.random((n, n_vox), dtype=np.float32) < 0.1
            w.append(energy, showers, {"incident_theta": rng.uniform(np.pi / 3, 2 * np.pi / 3, n)})
    return path


def _config(name: str, geometry: str, mode: str, iterations: int, pool_mb: float) -> dict:
    from caloforge.train import load_config

    if name == "caloshowergan":
        model = {"name": "caloshowergan", "geometry": geometry, "conditions": {"incident_energy": "log",
                                                                              "incident_theta": "cos"}}
        training = {"batch_size": 128}
    else:
        cfg = load_config(name).to_dict()
        model, training = {**cfg["model"], "geometry": geometry}, {"batch_size": cfg["training"]["batch_size"]}
    training.update({"max_iterations": iterations, "checkpoint_every": iterations, "log_every": 1,
                     "tensorboard": False, "validation_fraction": 0.02, "score_max_showers": 16,
                     "stream": "true" if mode == "stream" else "false", "stream_pool_mb": pool_mb})
    return {"model": model, "training": training}


def child(args) -> None:
    """Train once (in this fresh process) and print a JSON line."""
    import torch

    from caloforge.train import train

    torch.set_num_threads(1)
    cfg = json.loads(args.config_json)
    t0, c0 = time.perf_counter(), time.process_time()
    res = train(cfg, args.file, args.run_dir, progress=False, threads=1)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"iterations": res.iterations, "peak_rss_mib": peak_mib, "wall_s": time.perf_counter() - t0,
                      "cpu_s": time.process_time() - c0}))


def run(args) -> list[dict]:
    from caloforge.geometry import load_geometry

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows_out = []
    for case in args.cases:
        name, geometry = case.split(":")
        n_vox = load_geometry(geometry).n_voxels
        for rows in args.rows_for.get(geometry, args.rows):
            path = make_file(out / f"{geometry}-{rows}.h5", geometry, rows)
            for mode in args.modes:
                if mode == "memory" and rows != max(args.rows_for.get(geometry, args.rows)):
                    continue  # in memory only the largest file: its RSS is the point of comparison
                cfg = _config(name, geometry, mode, args.iterations, args.pool_mb)
                run_dir = out / f"run-{name}-{geometry}-{rows}-{mode}"
                subprocess.run(["rm", "-rf", str(run_dir)], check=True)
                cmd = [sys.executable, __file__, "child", "--file", str(path), "--run-dir", str(run_dir),
                       "--config-json", json.dumps(cfg)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{case} {rows} {mode} failed")
                row = {"config": name, "geometry": geometry, "n_voxels": n_vox, "rows": rows, "mode": mode,
                       "showers_mib": rows * n_vox * 4 / 2**20, "pool_mb": args.pool_mb,
                       **json.loads(proc.stdout.strip().splitlines()[-1])}
                rows_out.append(row)
                print(f"{name:26s} {geometry:12s} {rows:6d} rows ({row['showers_mib']:7.0f} MiB of showers) "
                      f"{mode:6s}: peak RSS {row['peak_rss_mib']:7.0f} MiB  ({row['cpu_s']:.0f} CPU-s)", flush=True)
                subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    return rows_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what")
    c = sub.add_parser("child")
    c.add_argument("--file")
    c.add_argument("--run-dir")
    c.add_argument("--config-json")
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--ds2-rows", type=int, nargs="+", default=[10_000, 40_000])
    ap.add_argument("--modes", nargs="+", default=["stream", "memory"])
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--pool-mb", type=float, default=128.0)
    ap.add_argument("--output", default="runs/bench_streaming")
    args = ap.parse_args()
    if args.what == "child":
        child(args)
        return
    args.rows_for = {"ds2": args.ds2_rows}
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())  # start time
    result = run(args)
    (Path(args.output) / "streaming.json").write_text(json.dumps({"date": stamp, "result": result}, indent=1))
    print(f"written {Path(args.output) / 'streaming.json'} ({stamp})")


if __name__ == "__main__":
    main()
